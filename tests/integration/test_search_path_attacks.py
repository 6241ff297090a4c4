"""Name resolution: no search_path, operator or function a user or a database owner
defines can steer oauth.claim() (RLS), the extension's functions, or the superuser-run
validator workers and housekeeper."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import AUDIENCE, CLUSTERS, RecordingIssuer, attempt, until
from pgcluster import DEFAULT_HBA, Cluster

ROOT = Path(__file__).resolve().parents[2]

# the configuration database may be restarting under these polls: its errors mean "not yet"
RESTARTING = (psycopg.OperationalError,)

# -- a) a token user shadows what the PL/pgSQL claim() resolved through its path ----

CLAIMS = {
    "tenant_id": "globex",
    "email": "alice@globex.example",
    "org": {"id": 42, "name": "Globex", "a.b": {"c": "dotted inner"}, "tags": []},
    "groups": ["admins", "dev.ops", {"k": "v"}],
    "https://example.com/groups": ["x", "y"],
    "a.b": "top-level dotted",
    "a": {"b": "nested a.b"},
    "nothing": None,
    "flag": True,
    "ratio": 1.50,
    "big": 12345678901234567890,
    "": "empty name",
    '"q"': "quoted name",
    "obj": {},
    "unicode": "żółw",
}

PATHS = [
    "tenant_id", "email", "org", "org.id", "org.name", 'org."a.b"', 'org."a.b".c',
    "org.a.b", "org.tags", "org.tags.0", "groups", "groups.0", "groups.1", "groups.-1",
    "groups.-3", "groups.-4", "groups.3", "groups.01", "groups. 1", "groups.1 ",
    "groups.x", "groups.2.k", "groups.2", "https://example.com/groups", "a.b", "a",
    '"a"."b"', '"a".b', "a.b.c", "nothing", "nothing.x", "flag", "ratio", "big", "",
    ".", "..", '"', '""', '"q"', "q", '"tenant_id"', '"tenant_id', 'tenant_id"',
    '"ten"ant_id', 'te"nant_id', ".tenant_id.", "org..id", '"org".id', '"org"."id"',
    '"or"g.id', 'o"rg.id', '"org.id', 'org."id', "obj", "obj.x", "unicode", "missing",
    "missing.deeper", "tenant_id.0", "ratio.0", "email.x", '"groups".1', "groups.1.x",
]  # fmt: skip

# The body of the PL/pgSQL oauth.claim() of pg_oauth 1.0, every name qualified: the
# definition of what claim() returns, evaluated by PostgreSQL itself.
REFERENCE = """
SELECT p, oauth.claim(p),
       CASE WHEN c OPERATOR(pg_catalog.?) p THEN c OPERATOR(pg_catalog.->>) p
            ELSE c OPERATOR(pg_catalog.#>>) (
                SELECT pg_catalog.array_agg(COALESCE(m[1], m[2]) ORDER BY ord)
                  FROM pg_catalog.regexp_matches(p, '"([^"]*)"|([^.]+)', 'g')
                       WITH ORDINALITY AS t(m, ord))
       END
  FROM pg_catalog.unnest(%s::pg_catalog.text[]) WITH ORDINALITY AS u(p, n),
       oauth.claims() AS c
 ORDER BY n
"""

# Everything the old claim() resolved through the caller's search_path, made to lie.
SHADOWS = """
CREATE FUNCTION alice_s.no(jsonb, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR alice_s.? (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = alice_s.no);
CREATE FUNCTION alice_s.acme(jsonb, text) RETURNS text
    LANGUAGE sql AS $$SELECT 'acme'::pg_catalog.text$$;
CREATE OPERATOR alice_s.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = alice_s.acme);
CREATE FUNCTION alice_s.acme(jsonb, text[]) RETURNS text
    LANGUAGE sql AS $$SELECT 'acme'::pg_catalog.text$$;
CREATE OPERATOR alice_s.#>> (LEFTARG = jsonb, RIGHTARG = text[], FUNCTION = alice_s.acme);
CREATE FUNCTION alice_s.regexp_matches(text, text, text) RETURNS SETOF text[]
    LANGUAGE sql AS $$SELECT ARRAY[NULL, 'tenant_id']::pg_catalog.text[]$$;
CREATE FUNCTION alice_s.keep_tenant(text[], text) RETURNS text[]
    LANGUAGE sql AS $$SELECT ARRAY['tenant_id']::pg_catalog.text[]$$;
CREATE AGGREGATE alice_s.array_agg(text) (SFUNC = alice_s.keep_tenant, STYPE = text[]);
CREATE FUNCTION alice_s.yes(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR alice_s.= (LEFTARG = text, RIGHTARG = text, FUNCTION = alice_s.yes);
"""


def claim_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(REFERENCE, (PATHS,)).fetchall()


def test_claim_and_rls_ignore_a_token_users_search_path(cluster, issuer):
    cluster.sql("""
        CREATE SCHEMA alice_s AUTHORIZATION alice;
        CREATE TABLE sp_notes (tenant_id text NOT NULL, note text NOT NULL);
        INSERT INTO sp_notes VALUES ('acme', 'acme plan'), ('globex', 'globex plan');
        ALTER TABLE sp_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY sp_tenant ON sp_notes USING (tenant_id = oauth.claim('tenant_id'));
        GRANT SELECT ON sp_notes TO alice;
    """)
    try:
        token = issuer.mint(CLAIMS, sub="alice")
        with cluster.token_connect("alice", token) as conn:
            rows = claim_rows(conn)
            # claim() is the old definition, path by path
            assert [(p, got) for p, got, _ in rows] == [(p, want) for p, _, want in rows]
            expected = {p: want for p, _, want in rows}
            assert expected["tenant_id"] == "globex" and expected["org.id"] == "42"
            assert expected['org."a.b".c'] == "dotted inner"
            assert expected["a.b"] == "top-level dotted" and expected['"a"."b"'] == "nested a.b"
            assert expected["groups"] == '["admins", "dev.ops", {"k": "v"}]'
            assert expected["groups.-1"] == '{"k": "v"}' and expected["nothing"] is None
            assert conn.execute("SELECT oauth.claim(NULL)").fetchone()[0] is None
            assert conn.execute("SELECT oauth.claims()").fetchone()[0]["org"]["id"] == 42

            conn.execute(SHADOWS)
            conn.execute("SET search_path = alice_s, pg_catalog, public")
            # the shadows do win for a query that leaves its names unqualified
            assert conn.execute("SELECT '{}'::jsonb ->> 'x'").fetchone()[0] == "acme"
            assert [r[0] for r in conn.execute("SELECT note FROM sp_notes")] == \
                ["globex plan"]
            got = conn.execute(
                "SELECT p, oauth.claim(p) FROM pg_catalog.unnest(%s::pg_catalog.text[]) "
                "WITH ORDINALITY AS u(p, n) ORDER BY n", (PATHS,)).fetchall()
            assert dict(got) == expected
            assert conn.execute("SELECT oauth.claims()").fetchone()[0] == \
                conn.execute("SELECT oauth.claims()").fetchone()[0]
        # a session without a token: NULL, whatever its path holds
        with cluster.admin() as conn:
            conn.execute("SET search_path = alice_s, pg_catalog, public")
            assert conn.execute("SELECT oauth.claim('tenant_id'), oauth.claims()"
                                ).fetchone() == (None, None)
    finally:
        cluster.sql("DROP TABLE sp_notes; DROP SCHEMA alice_s CASCADE")


# -- b) the owner of pg_oauth.database steers the superuser-run workers --------------

CFGDB = "cfgdb"
OWNER_PASSWORD = "evil-owner-pw"

EVIL_SETUP = """
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE TABLE evil.calls (fn text NOT NULL, by_user name NOT NULL);
GRANT SELECT, INSERT ON evil.calls TO PUBLIC;

-- what every shadow does first: note the call, and use the caller's privileges
CREATE FUNCTION evil.seen(what text) RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO evil.calls VALUES (what, current_user);
    BEGIN
        ALTER ROLE evil_owner SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN true;
END
$$;
"""

# name, parameters, result, the real thing: built-ins the workers, the adapter's
# queries, the extension's functions and its CHECK constraints call
EVIL_FUNCTIONS = [
    ("now", "", "timestamptz", "pg_catalog.now()"),
    ("make_interval",
     ("years int DEFAULT 0, months int DEFAULT 0, weeks int DEFAULT 0, days int DEFAULT 0, "
      "hours int DEFAULT 0, mins int DEFAULT 0, secs float8 DEFAULT 0.0"), "interval",
     "pg_catalog.make_interval(years, months, weeks, days, hours, mins, secs)"),
    ("to_timestamp", "float8", "timestamptz", "pg_catalog.to_timestamp($1)"),
    ("current_setting", "text", "text", "pg_catalog.current_setting($1)"),
    ("current_setting", "text, boolean", "text", "pg_catalog.current_setting($1, $2)"),
    ("set_config", "text, text, boolean", "text", "pg_catalog.set_config($1, $2, $3)"),
    ("hashtext", "text", "int", "pg_catalog.hashtext($1)"),
    ("pg_try_advisory_xact_lock", "int, int", "boolean",
     "pg_catalog.pg_try_advisory_xact_lock($1, $2)"),
    ("pg_try_advisory_xact_lock", "bigint", "boolean",
     "pg_catalog.pg_try_advisory_xact_lock($1)"),
    ("pg_is_in_recovery", "", "boolean", "pg_catalog.pg_is_in_recovery()"),
    ("current_database", "", "name", "pg_catalog.current_database()"),
    ("extract", "text, interval", "numeric", "pg_catalog.extract($1, $2)"),
    ("extract", "text, timestamptz", "numeric", "pg_catalog.extract($1, $2)"),
    ("date_part", "text, interval", "float8", "pg_catalog.date_part($1, $2)"),
    ("date_part", "text, timestamptz", "float8", "pg_catalog.date_part($1, $2)"),
    ("jsonb_typeof", "jsonb", "text", "pg_catalog.jsonb_typeof($1)"),
    ("cardinality", "anyarray", "int", "pg_catalog.cardinality($1)"),
    ("array_position", "anycompatiblearray, anycompatible", "int",
     "pg_catalog.array_position($1, $2)"),
    ("length", "text", "int", "pg_catalog.length($1)"),
    ("lower", "text", "text", "pg_catalog.lower($1)"),
    ("split_part", "text, text, int", "text", "pg_catalog.split_part($1, $2, $3)"),
]

# operator, left, right, result
EVIL_OPERATORS = [
    ("=", "text", "text", "boolean"),
    ("=", "name", "name", "boolean"),
    ("=", "name", "text", "boolean"),
    ("=", "bigint", "bigint", "boolean"),
    ("=", "oid", "oid", "boolean"),
    ("<", "timestamptz", "timestamptz", "boolean"),
    (">", "timestamptz", "timestamptz", "boolean"),
    ("-", "timestamptz", "interval", "timestamptz"),
    ("+", "bigint", "integer", "bigint"),
    ("||", "text", "text", "text"),
    ("~", "text", "text", "boolean"),
    ("&&", "anyarray", "anyarray", "boolean"),
]


def evil_schema_sql() -> str:
    parts = [EVIL_SETUP]
    for name, params, result, real in EVIL_FUNCTIONS:
        label = f"{name}({params})" if len(params) < 30 else f"{name}(...)"
        parts.append(
            f"CREATE FUNCTION evil.{name}({params}) RETURNS {result}\n"
            f"    LANGUAGE plpgsql SET search_path = pg_catalog AS $$\n"
            f"BEGIN PERFORM evil.seen('{label}'); RETURN {real}; END $$;\n")
    for i, (op, left, right, result) in enumerate(EVIL_OPERATORS):
        parts.append(
            f"CREATE FUNCTION evil.op{i}({left}, {right}) RETURNS {result}\n"
            f"    LANGUAGE plpgsql SET search_path = pg_catalog AS $$\n"
            f"BEGIN PERFORM evil.seen('{left} {op} {right}');\n"
            f"      RETURN $1 OPERATOR(pg_catalog.{op}) $2; END $$;\n"
            f"CREATE OPERATOR evil.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
            f"FUNCTION = evil.op{i});\n")
    parts.append("""
CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.seen('unnest'); RETURN QUERY SELECT * FROM pg_catalog.unnest($1); END $$;
CREATE FUNCTION evil.and_step(boolean, boolean) RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.seen('bool_and'); RETURN $1 AND $2; END $$;
CREATE AGGREGATE evil.bool_and(boolean) (SFUNC = evil.and_step, STYPE = boolean, INITCOND = 'true');
CREATE FUNCTION evil.agg_step(anycompatiblearray, anycompatible) RETURNS anycompatiblearray
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.seen('array_agg'); RETURN pg_catalog.array_append($1, $2); END $$;
CREATE AGGREGATE evil.array_agg(text) (SFUNC = evil.agg_step, STYPE = text[], INITCOND = '{}');
-- type names in casts and in PL/Python's prepared parameter types
CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.seen('type text'));
CREATE DOMAIN evil.float8 AS pg_catalog.float8 CHECK (evil.seen('type float8'));
CREATE DOMAIN evil.jsonb AS pg_catalog.jsonb CHECK (evil.seen('type jsonb'));
""")
    return "".join(parts)


def owner_hba() -> str:
    """The test hba, with a password line for the database owner above the token lines."""
    marker = "host    all   scram_user"
    return DEFAULT_HBA.replace(
        marker, "host    all   evil_owner 127.0.0.1/32 scram-sha-256\n" + marker, 1)


@pytest.fixture(scope="module")
def owned(issuer: RecordingIssuer) -> Iterator[Cluster]:
    """pg_oauth.database is a database owned by a role that is no superuser."""
    c = Cluster(settings={"pg_oauth.database": f"'{CFGDB}'",
                          "pg_oauth.rate_limit_failures": 0},
                hba=owner_hba()).init().start()
    CLUSTERS.append(c)
    c.sql(f"CREATE ROLE evil_owner LOGIN PASSWORD '{OWNER_PASSWORD}'; "
          "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN")
    c.sql(f"CREATE DATABASE {CFGDB} OWNER evil_owner")
    c.sql("CREATE EXTENSION pg_oauth CASCADE", dbname=CFGDB)
    c.sql("INSERT INTO oauth.issuers (issuer, audiences, jwks_cooldown, allow_loopback_http) "
          "VALUES (%s, %s, '1 second', true)", (issuer.issuer, [AUDIENCE]), dbname=CFGDB)
    c.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
          "VALUES (%s, 'sub', '(alice|bob)', '\\1')", (issuer.issuer,), dbname=CFGDB)
    wait_ready(c)
    yield c
    c.stop()


def admin_cfg(cluster: Cluster, search_path: str = "pg_catalog, pg_temp"
              ) -> psycopg.Connection:
    """A superuser session in the configuration database; database settings apply
    to it too, so it states the ones the checks below rely on."""
    conn = cluster.admin(CFGDB)
    conn.execute(f"SET search_path = {search_path}")
    for setting in ("default_transaction_read_only = off", "lock_timeout = 0",
                    "DateStyle = ISO", "IntervalStyle = postgres", "TimeZone = UTC"):
        conn.execute(f"SET {setting}")
    return conn


def cfg_sql(cluster: Cluster, query: str, params: object = None) -> list[tuple]:
    with admin_cfg(cluster) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def wait_ready(cluster: Cluster, timeout: float = 30.0) -> None:
    until(lambda: (rows := cfg_sql(cluster, "SELECT state FROM oauth.workers()"))
          and all(r[0] in ("idle", "busy") for r in rows), timeout, "workers ready",
          ignore=RESTARTING)


def as_owner(cluster: Cluster, query: str) -> None:
    dsn = (f"host=127.0.0.1 port={cluster.port} dbname={CFGDB} user=evil_owner "
           f"password={OWNER_PASSWORD} sslmode=disable")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query)


def evil_calls(cluster: Cluster) -> list[tuple]:
    return cfg_sql(cluster, "SELECT by_user, fn FROM evil.calls")


def owner_is_superuser(cluster: Cluster) -> bool:
    return cluster.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'evil_owner'")[0][0]


def printed_constants(log: str) -> list[str]:
    """The bytes of every by-reference constant in the printed plans (debug_print_plan),
    whitespace removed: the printer wraps long lines anywhere, even inside a number."""
    return [re.sub(r"\s+", "", block)
            for block in re.findall(r":constvalue \d+ \[([^\]]*)\]", log)]


def in_printed_plans(token: str, constants: list[str]) -> bool:
    """Whether a constant holds the token's payload (its jti makes it unique)."""
    needle = "".join(str(b) for b in token.split(".")[1].encode())
    return any(needle in c for c in constants)


def test_database_owner_cannot_steer_the_workers(owned, issuer, tmp_path):
    assert attempt(owned, "alice", issuer.mint(sub="alice")) == "ok"
    as_owner(owned, evil_schema_sql())
    as_owner(owned, f"ALTER DATABASE {CFGDB} SET search_path = evil, pg_catalog")
    as_owner(owned, f"ALTER DATABASE {CFGDB} SET plan_cache_mode = force_custom_plan")
    # with custom plans, the token (a bind parameter) would be printed as a constant
    as_owner(owned, f"ALTER DATABASE {CFGDB} SET debug_print_plan = on")
    assert evil_calls(owned) == []
    with owned.admin(CFGDB) as conn:  # the shadows are live in a plain session
        assert conn.execute("SHOW search_path").fetchone()[0] == "evil, pg_catalog"
    owned.restart()
    wait_ready(owned)

    logins = [issuer.mint(sub="alice", jti=f"owned-ok-{i}") for i in range(3)]
    for token in logins:
        with owned.token_connect("alice", token) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "alice"
    assert attempt(owned, "bob", issuer.mint(sub="carol", jti="owned-role")) == \
        "role_not_allowed"
    assert attempt(owned, "alice", issuer.mint(sub="alice", lifetime=-120)) == "expired"
    # an unknown kid makes a worker fetch the keys again and store them
    fetched = cfg_sql(owned, "SELECT fetched_at FROM oauth.jwks_cache")[0][0]
    assert attempt(owned, "alice", issuer.mint(sub="alice", kid="owned-unknown")) == \
        "unknown_key"
    until(lambda: cfg_sql(owned, "SELECT fetched_at FROM oauth.jwks_cache")[0][0] > fetched,
          15, "keys stored again", ignore=RESTARTING)
    time.sleep(6)  # one idle key refresh of every worker

    # the DBA changes the configuration in a session with the database's settings
    explain_token = issuer.mint(sub="alice", jti="owned-explain")
    with admin_cfg(owned, "evil, pg_catalog") as conn:
        conn.execute("INSERT INTO oauth.revocations (token_id) VALUES ('owned-revoked')")
        conn.execute("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                     "VALUES (%s, 'sub', 'carol', 'carol')", (issuer.issuer,))
        conn.execute("UPDATE oauth.issuers SET required_claims = '{sub,jti}'")
        assert conn.execute("SELECT oauth.revoke(subject => 'mallory')").fetchone() == (0,)
        rows = conn.execute("SELECT name, outcome FROM oauth.explain(%s, 'alice')",
                            (explain_token,)).fetchall()
        assert rows[-1] == ("decision", "pass")
    assert attempt(owned, "alice", issuer.mint(sub="alice", jti="owned-revoked")) == \
        "revoked"
    assert attempt(owned, "carol", issuer.mint(sub="carol", jti="owned-carol")) == "ok"

    # the housekeeper writes the audit rows (and trims the table at start)
    until(lambda: len(cfg_sql(owned, "SELECT 1 FROM oauth.audit_log WHERE token_id "
                                     "IN ('owned-ok-2', 'owned-role', 'owned-carol')")) == 3,
          15, "audit rows", ignore=RESTARTING)

    # the pg-oauth command line reads the same database, as a superuser
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint(sub="alice", jti="owned-cli"))
    out = subprocess.run(
        [sys.executable, "-m", "pg_oauth_command", "check", "--dsn", owned.admin_dsn(CFGDB),
         "--token-file", str(token_file), "--no-fetch", "--role", "alice"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (out.returncode, out.stdout.strip()) == (0, "ok: role 'alice' allowed"), \
        out.stderr

    assert evil_calls(owned) == []
    assert not owner_is_superuser(owned)
    log = owned.log_text()
    assert "pg_oauth: the background workers ignore" in log
    constants = printed_constants(log)
    assert constants, "debug_print_plan printed plans"
    assert in_printed_plans(explain_token, constants), "the check itself finds a token"
    leaked = sum(in_printed_plans(t, constants) for t in logins)
    assert leaked == 0, "a login token is a constant in a printed plan"


def test_database_settings_cannot_stop_the_workers_writing(owned, issuer):
    """default_transaction_read_only and friends, set by the owner, do not apply."""
    for setting in ("lock_timeout = '1ms'", "default_transaction_isolation = 'serializable'",
                    "transform_null_equals = on", "DateStyle = 'SQL, DMY'",
                    "IntervalStyle = 'iso_8601'", "TimeZone = 'Pacific/Chatham'",
                    "default_transaction_read_only = on"):
        as_owner(owned, f"ALTER DATABASE {CFGDB} SET {setting}")
    owned.restart()
    wait_ready(owned)
    fetched = cfg_sql(owned, "SELECT fetched_at FROM oauth.jwks_cache")[0][0]
    assert attempt(owned, "alice", issuer.mint(sub="alice", kid="owned-unknown-2")) == \
        "unknown_key"
    assert attempt(owned, "alice", issuer.mint(sub="alice", jti="owned-rw")) == "ok"
    # the workers and the housekeeper still write
    until(lambda: cfg_sql(owned, "SELECT fetched_at FROM oauth.jwks_cache")[0][0] > fetched,
          15, "keys stored again", ignore=RESTARTING)
    until(lambda: cfg_sql(owned, "SELECT 1 FROM oauth.audit_log "
                                 "WHERE token_id = 'owned-rw'"), 15, "audit row",
          ignore=RESTARTING)
    assert evil_calls(owned) == []
    assert not owner_is_superuser(owned)
    line = [x for x in owned.log_text().splitlines()
            if "pg_oauth: the background workers ignore" in x][-1]
    for name in ("search_path", "plan_cache_mode", "default_transaction_read_only",
                 "DateStyle", "TimeZone"):
        assert name in line, line
    assert "debug_print_plan" not in line
