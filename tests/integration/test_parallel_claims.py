"""The claims reach parallel workers: oauth.claim() and its kin are PARALLEL SAFE, so a
row-level security policy written the natural way, USING (tenant = oauth.claim(...)),
keeps its parallel scans, for a token login and for a gateway transaction
(oauth.authenticate), with each session's own rows only; and nothing a session can run
changes the claims its workers see (parallel_identity.c)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import CLUSTERS, RecordingIssuer
from pgcluster import Cluster, server_major
from test_gateway import gateway, make_gateway_cluster, token

ROWS_PER_TENANT = {"acme": 30000, "globex": 20000, "initech": 10000}
SETTINGS = ("pg_oauth.parallel_session_identity", "pg_oauth.parallel_transaction_identity")
# workers only: a worker that saw no claims (or other ones) returns other rows
PARALLEL = {
    "parallel_setup_cost": 0, "parallel_tuple_cost": 0, "min_parallel_table_scan_size": 0,
    "max_parallel_workers_per_gather": 2, "parallel_leader_participation": "off",
}
FORCE = "debug_parallel_query" if server_major() >= 16 else "force_parallel_mode"
NATURAL = "SELECT count(*) FROM tenant_rows"
ALL_FUNCTIONS = ("SELECT oauth.claim('tenant_id'), oauth.claims() ->> 'tenant_id', "
                 "(oauth.session()).subject, (oauth.session()).login_role, "
                 "oauth.claim_array('groups'), oauth.claim_contains('groups', 'red')")


@pytest.fixture(scope="module")
def pcluster(issuer: RecordingIssuer) -> Iterator[Cluster]:
    c = make_gateway_cluster(issuer, max_worker_processes=16, max_parallel_workers=8)
    c.sql("""
        CREATE TABLE tenant_rows (tenant text NOT NULL, n int NOT NULL);
        ALTER TABLE tenant_rows ENABLE ROW LEVEL SECURITY;
        CREATE POLICY by_tenant ON tenant_rows USING (tenant = oauth.claim('tenant_id'));
        GRANT SELECT ON tenant_rows TO alice, bob, tenant;
    """)
    for tenant, rows in ROWS_PER_TENANT.items():
        c.sql("INSERT INTO tenant_rows SELECT %s, g FROM generate_series(1, %s) g",
              (tenant, rows))
    c.sql("VACUUM ANALYZE tenant_rows")
    yield c
    c.stop()


def set_parallel(conn: psycopg.Connection, force: bool = False) -> None:
    for name, value in {**PARALLEL, FORCE: "on" if force else "off"}.items():
        conn.execute(f"SET {name} = {value}")


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def explain(conn: psycopg.Connection, query: str) -> list[dict[str, Any]]:
    doc = conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF, FORMAT JSON) {query}").fetchone()[0]
    return list(plan_nodes(doc[0]["Plan"]))


def assert_parallel_scan_filters_on_the_claim(conn: psycopg.Connection) -> None:
    nodes = explain(conn, NATURAL)
    gathers = [n for n in nodes if n["Node Type"] in ("Gather", "Gather Merge")]
    assert gathers and gathers[0]["Workers Planned"] >= 1, nodes
    assert gathers[0]["Workers Launched"] >= 1, "no parallel worker could start"
    scans = [n for n in nodes if n["Node Type"] == "Seq Scan"]
    assert scans and scans[0]["Parallel Aware"], nodes
    assert "oauth.claim('tenant_id'::text)" in scans[0]["Filter"], scans[0]


def login(cluster: Cluster, issuer: RecordingIssuer, user: str, tenant: str
          ) -> psycopg.Connection:
    return cluster.token_connect(user, issuer.mint(
        {"tenant_id": tenant, "groups": ["red", tenant]}, sub=user))


def test_functions_are_parallel_safe(pcluster):
    rows = pcluster.sql("SELECT p.proname, p.proparallel FROM pg_proc p "
                        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'oauth' "
                        "AND p.proname IN ('claim', 'claims', 'session', 'claim_array', "
                        "'claim_contains') ORDER BY 1")
    assert rows == [(name, "s") for name in
                    ("claim", "claim_array", "claim_contains", "claims", "session")]


@pytest.mark.parametrize(("user", "tenant"), [("alice", "acme"), ("bob", "globex")])
def test_a_token_login_keeps_its_parallel_scan_and_its_own_rows(pcluster, issuer, user, tenant):
    with login(pcluster, issuer, user, tenant) as conn:
        set_parallel(conn)
        assert_parallel_scan_filters_on_the_claim(conn)
        assert conn.execute(NATURAL).fetchone()[0] == ROWS_PER_TENANT[tenant]
        assert conn.execute("SELECT DISTINCT tenant FROM tenant_rows").fetchall() == [(tenant,)]


def test_every_claim_function_answers_the_same_in_a_worker(pcluster, issuer):
    with login(pcluster, issuer, "alice", "initech") as conn:
        expected = ("initech", "initech", "alice", "alice", ["red", "initech"], True)
        assert conn.execute(ALL_FUNCTIONS).fetchone() == expected
        set_parallel(conn, force=True)
        gather = explain(conn, ALL_FUNCTIONS)[0]
        assert gather["Node Type"] == "Gather" and gather["Workers Launched"] == 1
        assert conn.execute(ALL_FUNCTIONS).fetchone() == expected
        # filters evaluated by the workers of a real parallel scan
        set_parallel(conn)
        assert conn.execute(
            "SELECT count(*) FROM tenant_rows WHERE oauth.claims() ->> 'tenant_id' = tenant "
            "AND (oauth.session()).subject = 'alice' AND oauth.claim_contains('groups', tenant)"
        ).fetchone()[0] == ROWS_PER_TENANT["initech"]


def test_a_session_without_a_token_has_no_claims_in_its_workers(pcluster):
    with pcluster.admin() as conn:
        set_parallel(conn, force=True)
        assert conn.execute(ALL_FUNCTIONS).fetchone() == (None, None, None, None, None, False)


def gateway_count(conn: psycopg.Connection, issuer: RecordingIssuer, sub: str,
                  tenant: str) -> int:
    with conn.transaction():
        conn.execute("SELECT oauth.authenticate(%s)",
                     (token(issuer, sub, tenant_id=tenant, groups=["red"]),))
        set_parallel(conn)
        assert_parallel_scan_filters_on_the_claim(conn)
        return conn.execute(NATURAL).fetchone()[0]


def test_a_gateway_transaction_keeps_its_parallel_scan_and_its_own_rows(pcluster, issuer):
    with gateway(pcluster) as conn:
        # one pooled connection, three clients in turn: each sees its own tenant
        for sub, tenant in (("user-1", "acme"), ("user-2", "globex"), ("user-1", "initech")):
            assert gateway_count(conn, issuer, sub, tenant) == ROWS_PER_TENANT[tenant]
        with conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)",
                         (token(issuer, "user-3", tenant_id="globex", groups=["red"]),))
            set_parallel(conn, force=True)
            assert conn.execute(ALL_FUNCTIONS).fetchone() == (
                "globex", "globex", "user-3", "app", ["red"], True)


def test_a_rolled_back_gateway_transaction_leaves_nothing_to_the_next(pcluster, issuer):
    with gateway(pcluster, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1", tenant_id="acme"),))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        conn.execute("ROLLBACK")
        assert gateway_count(conn, issuer, "user-2", "initech") == ROWS_PER_TENANT["initech"]


# -- forging the claims the workers see -------------------------------------------------



def identity_value(pid: int, lxid: int, role: str, claims: str) -> str:
    """A value in the settings' own format (parallel_identity.c's encode_identity):
    pid, local transaction id, then issuer, subject, token id, role, claims, expiry."""
    return f"{pid} {lxid} ---{len(role)}:{role}{len(claims)}:{claims}-"


FORGED = identity_value(1, 0, "alice", '{"tenant_id": "globex"}')


@pytest.mark.parametrize("statement", [
    "SET pg_oauth.parallel_session_identity = '{forged}'",
    "SET pg_oauth.parallel_transaction_identity = '{forged}'",
    "SET LOCAL pg_oauth.parallel_session_identity = '{forged}'",
    "SELECT set_config('pg_oauth.parallel_session_identity', '{forged}', false)",
    "SELECT set_config('pg_oauth.parallel_transaction_identity', '{forged}', true)",
    "RESET pg_oauth.parallel_session_identity",
    "SHOW pg_oauth.parallel_session_identity",
])
def test_a_token_user_cannot_set_or_read_the_settings(pcluster, issuer, statement):
    with login(pcluster, issuer, "alice", "acme") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement.format(forged=FORGED))
        conn.rollback()
        set_parallel(conn)
        assert conn.execute(NATURAL).fetchone()[0] == ROWS_PER_TENANT["acme"]


@pytest.mark.parametrize(("statement", "refusal"), [
    ("SET pg_oauth.parallel_session_identity = '{forged}'", "pg_oauth alone"),
    ("SET pg_oauth.parallel_transaction_identity = '{forged}'", "pg_oauth alone"),
    ("SELECT set_config('pg_oauth.parallel_session_identity', '{forged}', false)",
     "pg_oauth alone"),
    ("SELECT set_config('pg_oauth.parallel_session_identity', '', false)", "pg_oauth alone"),
    ("ALTER ROLE alice SET pg_oauth.parallel_session_identity = '{forged}'", "pg_oauth alone"),
    ("ALTER DATABASE postgres SET pg_oauth.parallel_session_identity = '{forged}'",
     "pg_oauth alone"),
    (("ALTER ROLE alice IN DATABASE postgres "
     "SET pg_oauth.parallel_transaction_identity = '{forged}'"), "pg_oauth alone"),
    ("ALTER SYSTEM SET pg_oauth.parallel_session_identity = '{forged}'", "cannot be changed"),
    (("CREATE FUNCTION forge() RETURNS int LANGUAGE sql SECURITY DEFINER "
     "SET pg_oauth.parallel_session_identity = '{forged}' AS 'SELECT 1'"), "pg_oauth alone"),
    (("CREATE FUNCTION forge() RETURNS int LANGUAGE sql SECURITY DEFINER "
     "SET pg_oauth.parallel_session_identity FROM CURRENT AS 'SELECT 1'"), "pg_oauth alone"),
])
def test_not_even_a_superuser_can_set_them(pcluster, statement, refusal):
    with pcluster.admin() as conn, pytest.raises(psycopg.Error, match=refusal):
        conn.execute(statement.format(forged=FORGED))


def test_a_granted_set_privilege_changes_nothing(pcluster, issuer):
    pcluster.sql(f"GRANT SET ON PARAMETER {SETTINGS[0]}, {SETTINGS[1]} TO alice")
    try:
        with login(pcluster, issuer, "alice", "acme") as conn:
            for name in SETTINGS:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_oauth alone"):
                    conn.execute(f"SET {name} = '{FORGED}'")
                conn.rollback()
            set_parallel(conn)
            assert conn.execute(NATURAL).fetchone()[0] == ROWS_PER_TENANT["acme"]
    finally:
        pcluster.sql(f"REVOKE SET ON PARAMETER {SETTINGS[0]}, {SETTINGS[1]} FROM alice")


def test_startup_options_cannot_set_them(pcluster):
    escaped = FORGED.replace("\\", "\\\\").replace(" ", "\\ ")
    for name in SETTINGS:
        with pytest.raises(psycopg.OperationalError, match="pg_oauth alone"):
            psycopg.connect(pcluster.admin_dsn(), options=f"-c {name}={escaped}").close()


def test_a_placeholder_made_before_the_library_loads_carries_nothing():
    """Without shared_preload_libraries (a careless DBA) the settings are placeholders
    anyone may set; nothing reads them: the claims stay NULL, in the leader and in its
    workers, whatever value names the leader."""
    bare = Cluster(preload=False).init().start()
    CLUSTERS.append(bare)
    try:
        bare.sql("CREATE EXTENSION pg_oauth CASCADE")
        with psycopg.connect(bare.admin_dsn()) as conn:
            forged = identity_value(conn.info.backend_pid, 0, "alice", '{"tenant_id": "acme"}')
            for name in SETTINGS:
                conn.execute(f"SET {name} = '{forged}'")
            set_parallel(conn, force=True)
            gather = explain(conn, ALL_FUNCTIONS)[0]
            assert gather["Node Type"] == "Gather" and gather["Workers Launched"] == 1
            assert conn.execute(ALL_FUNCTIONS).fetchone() == (
                None, None, None, None, None, False)
    finally:
        bare.stop()


@pytest.fixture
def superuser_functions(pcluster: Cluster) -> Iterator[None]:
    """SECURITY DEFINER functions of a superuser that a token user may call: one resets
    the settings by name (RESET, set_config(..., NULL)), one sets whatever it is given."""
    pcluster.sql("""
        CREATE FUNCTION public.reset_setting(name text) RETURNS void
            LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN
            EXECUTE format('RESET %s', name);
            PERFORM set_config(name, NULL, false);
        END $$;
        CREATE FUNCTION public.set_setting(name text, value text) RETURNS text
            LANGUAGE sql SECURITY DEFINER AS $$ SELECT set_config(name, value, false) $$;
        GRANT EXECUTE ON FUNCTION public.reset_setting(text), public.set_setting(text, text)
            TO PUBLIC;
    """)
    yield
    pcluster.sql("DROP FUNCTION public.reset_setting(text), public.set_setting(text, text)")


def test_a_superusers_security_definer_function_cannot_change_them(
        pcluster, issuer, superuser_functions):
    with login(pcluster, issuer, "alice", "acme") as conn:
        set_parallel(conn)
        for name in SETTINGS:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_oauth alone"):
                conn.execute("SELECT public.set_setting(%s, %s)", (name, FORGED))
            conn.rollback()
            # a reset goes back to the value pg_oauth set: the same
            conn.execute("SELECT public.reset_setting(%s)", (name,))
            assert_parallel_scan_filters_on_the_claim(conn)
            assert conn.execute(NATURAL).fetchone()[0] == ROWS_PER_TENANT["acme"]


def test_a_reset_in_a_gateway_transaction_changes_nothing_now_or_later(
        pcluster, issuer, superuser_functions):
    with gateway(pcluster, autocommit=True) as conn:
        for end in ("COMMIT", "ROLLBACK"):
            conn.execute("BEGIN")
            conn.execute("SELECT oauth.authenticate(%s)",
                         (token(issuer, "user-1", tenant_id="acme"),))
            set_parallel(conn)
            for name in SETTINGS:
                conn.execute("SELECT public.reset_setting(%s)", (name,))
            assert conn.execute(NATURAL).fetchone()[0] == ROWS_PER_TENANT["acme"]
            conn.execute(end)
            # the next client of the pooled connection: its own tenant, not the last one's
            assert gateway_count(conn, issuer, "user-2", "globex") == ROWS_PER_TENANT["globex"]
