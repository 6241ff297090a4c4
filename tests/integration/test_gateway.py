"""oauth.authenticate() in a gateway session: one token per transaction, enforced by the
server.  Connections here go straight to PostgreSQL as the gateway role (what a pooler
does); test_poolers.py puts a real PgBouncer in between."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import CLUSTERS, MINTED, RecordingIssuer, setup_oauth, until
from pgcluster import DEFAULT_HBA, Cluster
from psycopg import sql

GATEWAY_PASSWORD = "gateway-secret"

# the gateway logs in with a password, like the pooler's own role; tokens come per transaction
GATEWAY_HBA = DEFAULT_HBA.replace(
    "# token logins",
    "local   all   gateway                 scram-sha-256\n"
    "host    all   gateway  127.0.0.1/32   scram-sha-256\n"
    "local   all   plain_user              scram-sha-256\n"
    "# token logins",
)


def make_gateway_cluster(issuer: RecordingIssuer, **settings) -> Cluster:
    """A cluster with a gateway role, tenant roles and an RLS table keyed on the subject."""
    settings = {"pg_oauth.rate_limit_failures": 0, **settings}
    cluster = Cluster(settings=settings, hba=GATEWAY_HBA).init().start()
    CLUSTERS.append(cluster)
    setup_oauth(cluster, issuer.issuer)
    cluster.sql(f"""
        CREATE ROLE gateway LOGIN PASSWORD '{GATEWAY_PASSWORD}';
        ALTER ROLE gateway SET pg_oauth.gateway = on;
        CREATE ROLE plain_user LOGIN PASSWORD '{GATEWAY_PASSWORD}';
        CREATE ROLE tenant NOLOGIN;
        CREATE ROLE app LOGIN IN ROLE tenant;
        CREATE ROLE app2 LOGIN IN ROLE tenant;
        CREATE ROLE admin_app LOGIN CREATEROLE BYPASSRLS;
        CREATE TABLE notes (id serial PRIMARY KEY, owner text NOT NULL
                            DEFAULT oauth.claim('sub'), body text);
        ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own ON notes USING (owner = oauth.claim('sub'))
                                    WITH CHECK (owner = oauth.claim('sub'));
        GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO tenant;
        GRANT USAGE ON SEQUENCE notes_id_seq TO tenant;
        CREATE TABLE gateway_only (secret text);
        INSERT INTO gateway_only VALUES ('the gateway''s own table');
    """)
    cluster.sql(
        "INSERT INTO oauth.role_map (issuer, claim, pattern, role) VALUES "
        "(%s, 'sub', 'user-.*', 'app'), (%s, 'sub', 'two-.*', 'app'), "
        "(%s, 'sub', 'two-.*', 'app2'), (%s, 'sub', 'boss', 'admin_app')",
        (issuer.issuer,) * 4,
    )
    cluster.wait_for_workers()
    return cluster


@pytest.fixture(scope="module")
def gw_cluster(issuer: RecordingIssuer) -> Iterator[Cluster]:
    c = make_gateway_cluster(issuer)
    yield c
    c.stop()


def gateway(cluster: Cluster, **kw) -> psycopg.Connection:
    """A connection as the gateway role over the Unix socket, as a local pooler makes it."""
    return psycopg.connect(host=str(cluster.sockdir), port=cluster.port, dbname="postgres",
                           user="gateway", password=GATEWAY_PASSWORD, **kw)


def token(issuer: RecordingIssuer, sub: str, **kw) -> str:
    return issuer.mint({"sub": sub, **kw})


def reason(exc: BaseException) -> str:
    msg = str(exc)
    diag = getattr(exc, "diag", None)
    detail = (diag.message_detail if diag else None) or msg
    assert "reason=" in detail, msg
    return detail.split("reason=", 1)[1].split(":", 1)[0].strip()


def test_a_transaction_runs_as_the_tokens_role_with_its_claims(gw_cluster, issuer):
    with gateway(gw_cluster) as conn:
        with conn.transaction():
            role = conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),)
                                ).fetchone()[0]
            assert role == "app"
            assert conn.execute(
                "SELECT current_user, session_user, oauth.claim('sub'), "
                "(oauth.session()).login_role").fetchone() == ("app", "gateway", "user-1", "app")
        # the next transaction: no trace of the identity
        with conn.transaction(), pytest.raises(psycopg.errors.InsufficientPrivilege,
                                               match="before oauth.authenticate"):
            conn.execute("SELECT current_user, oauth.claim('sub')")


def test_rls_on_the_subject_sees_only_that_subjects_rows(gw_cluster, issuer):
    with gateway(gw_cluster) as conn:
        for sub in ("user-a", "user-b"):
            with conn.transaction():
                conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, sub),))
                conn.execute("INSERT INTO notes (body) VALUES (%s)", (f"note of {sub}",))
        with conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-a"),))
            rows = conn.execute("SELECT owner, body FROM notes").fetchall()
            assert rows and all(owner == "user-a" for owner, _ in rows)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO notes (owner, body) VALUES ('user-b', 'forged')")


def test_rollback_ends_the_identity_too(gw_cluster, issuer):
    with gateway(gw_cluster, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT current_user")
        conn.execute("ROLLBACK")
        # what a pooler sends on its own still works
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_role_can_be_named_when_the_token_allows_several(gw_cluster, issuer):
    tok = token(issuer, "two-x")
    with gateway(gw_cluster) as conn:
        with conn.transaction():
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
                conn.execute("SELECT oauth.authenticate(%s)", (tok,))
            assert reason(excinfo.value) == "role_not_allowed"
        with conn.transaction():
            assert conn.execute("SELECT oauth.authenticate(%s, 'app2')", (tok,)).fetchone() == ("app2",)
            assert conn.execute("SELECT current_user").fetchone() == ("app2",)


@pytest.mark.parametrize("statement", [
    "SELECT * FROM gateway_only",
    "SELECT current_user",
    "SELECT pg_sleep(0)",
    "SELECT lower('A')",
    "SELECT 1 FROM notes",
    "SET ROLE app",
    "SET search_path = public",
    "CREATE TEMP TABLE t (x int)",
    "DO $$ BEGIN PERFORM 1; END $$",
    "COPY (SELECT 1) TO STDOUT",
    "EXPLAIN SELECT 1",
    "LISTEN anything",
    "PREPARE p AS SELECT 1",
    "SELECT (SELECT 1)",
    "WITH x AS (SELECT 1) SELECT 1",
    "SELECT oauth.claim('sub')",
])
def test_nothing_runs_as_the_gateway_before_authenticate(gw_cluster, statement):
    with gateway(gw_cluster, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="before oauth.authenticate"):
            conn.execute(statement)
        # the session is still usable
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("statement", [
    "SELECT 1",
    "select 1",
    "DISCARD ALL",
    "RESET ALL",
    "DEALLOCATE ALL",
    "CLOSE ALL",
    "UNLISTEN *",
    "SET client_encoding = 'UTF8'",
    "SET application_name = 'pooled'",
    "SET DateStyle = 'ISO, MDY'",
    "SET TimeZone = 'UTC'",
    "BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION READ ONLY",
])
def test_what_poolers_send_on_their_own_runs(gw_cluster, statement):
    with gateway(gw_cluster, autocommit=True) as conn:
        conn.execute(statement)
        conn.execute("ROLLBACK")


def test_a_prepared_statement_made_while_authenticated_does_not_run_after(gw_cluster, issuer):
    with gateway(gw_cluster, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
        # psycopg prepares a named statement server-side (Parse) with prepare=True
        conn.execute("SELECT count(*) FROM notes WHERE body <> %s", ("x",), prepare=True)
        conn.execute("COMMIT")
        # the transaction's end dropped it: the next client cannot run it or read its text
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("SELECT count(*) FROM notes WHERE body <> %s", ("x",), prepare=True)


@pytest.mark.parametrize("escape", [
    "SET ROLE tenant",
    "SET ROLE gateway",
    "RESET ROLE",
    "SET ROLE NONE",
    "SET LOCAL ROLE app2",
    "SET SESSION AUTHORIZATION gateway",
    "RESET SESSION AUTHORIZATION",
    "SELECT set_config('role', 'gateway', true)",
    "SELECT set_config('role', 'app2', false)",
    "SELECT set_config('session_authorization', 'gateway', false)",
    "SELECT public.become_gateway()",
])
def test_an_authenticated_transaction_cannot_leave_the_tokens_role(gw_cluster, issuer, escape):
    gw_cluster.sql("""
        CREATE OR REPLACE FUNCTION public.become_gateway() RETURNS text
            LANGUAGE sql SET role = gateway AS 'SELECT current_user::text';
    """)
    with gateway(gw_cluster) as conn:
        with conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(escape)
        with conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
            assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_a_second_token_in_the_same_transaction_is_refused(gw_cluster, issuer):
    first, second = token(issuer, "user-1"), token(issuer, "user-2")
    with gateway(gw_cluster) as conn, conn.transaction():
        conn.execute("SELECT oauth.authenticate(%s)", (first,))
        # the same token again answers the same
        assert conn.execute("SELECT oauth.authenticate(%s)", (first,)).fetchone() == ("app",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="already authenticated"):
            conn.execute("SELECT oauth.authenticate(%s)", (second,))


def test_authenticate_refuses_outside_a_gateway_transaction(gw_cluster, issuer):
    tok = token(issuer, "user-1")
    # a role that is not a gateway
    with psycopg.connect(host=str(gw_cluster.sockdir), port=gw_cluster.port, dbname="postgres",
                         user="plain_user", password=GATEWAY_PASSWORD) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="only in a gateway session"):
        conn.execute("SELECT oauth.authenticate(%s)", (tok,))
    with gateway(gw_cluster, autocommit=True) as conn:
        # outside a transaction block it would end at once
        with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
            conn.execute("SELECT oauth.authenticate(%s)", (tok,))
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT s")
        with pytest.raises(psycopg.errors.ActiveSqlTransaction, match="savepoint"):
            conn.execute("SELECT oauth.authenticate(%s)", (tok,))
        conn.execute("ROLLBACK")


def test_a_gateway_cannot_turn_itself_off(gw_cluster, issuer):
    with gateway(gw_cluster, autocommit=True) as conn:
        for statement in ("SET pg_oauth.gateway = off", "RESET pg_oauth.gateway",
                          "SELECT set_config('pg_oauth.gateway', 'off', false)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET pg_oauth.gateway = off")
        conn.execute("ROLLBACK")
    # nor with a startup option
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(host=str(gw_cluster.sockdir), port=gw_cluster.port, dbname="postgres",
                        user="gateway", password=GATEWAY_PASSWORD,
                        options="-c pg_oauth.gateway=off").close()


@pytest.mark.parametrize("kind", ["expired", "privileged", "unknown_issuer", "revoked", "literal"])
def test_refusals_are_clear_errors_and_the_connection_lives_on(gw_cluster, issuer, kind):
    if kind == "expired":
        tok, role, want = token(issuer, "user-1", exp=int(time.time()) - 60), None, "expired"
    elif kind == "privileged":
        tok, role, want = token(issuer, "boss"), None, "privilege_forbidden"
    elif kind == "unknown_issuer":
        tok, role, want = issuer.mint({"sub": "user-1"}, iss="https://elsewhere.example"), None, \
            "untrusted_issuer"
    elif kind == "revoked":
        tok, role, want = token(issuer, "user-revoked"), None, "revoked"
        gw_cluster.sql("SELECT oauth.revoke(subject => 'user-revoked', reason => 'test')")
    else:
        tok, role, want = token(issuer, "user-1"), None, "token_in_statement"
        # written into the statement on purpose: the error's STATEMENT line has it
        MINTED.remove(tok)
    with gateway(gw_cluster, autocommit=True) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            if kind == "literal":
                conn.execute(sql.SQL("SELECT oauth.authenticate({})").format(sql.Literal(tok)))
            else:
                conn.execute("SELECT oauth.authenticate(%s, %s)", (tok, role))
        assert reason(excinfo.value) == want
        assert tok.split(".")[1] not in str(excinfo.value)
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_revoked_subject_is_refused_at_its_next_transaction(gw_cluster, issuer):
    tok = token(issuer, "user-later")
    with gateway(gw_cluster) as conn:
        with conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)", (tok,))
        gw_cluster.sql("SELECT oauth.revoke(subject => 'user-later')")
        with conn.transaction():
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
                conn.execute("SELECT oauth.authenticate(%s)", (tok,))
            assert reason(excinfo.value) == "revoked"


def test_the_next_transaction_finds_no_trace(gw_cluster, issuer):
    with gateway(gw_cluster, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
        conn.execute("CREATE TEMP TABLE notes (owner text, body text)")
        conn.execute("INSERT INTO notes VALUES ('user-2', 'planted')")
        conn.execute("SET search_path = pg_temp, public")
        conn.execute("SELECT set_config('work_mem', '77MB', false)")
        conn.execute("SELECT pg_advisory_lock(4242)")
        conn.execute("SELECT nextval('notes_id_seq')")
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-2"),))
        assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'
        assert conn.execute("SHOW work_mem").fetchone()[0] != "77MB"
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND pid = pg_backend_pid()").fetchone() == (0,)
        assert ("planted",) not in conn.execute("SELECT body FROM notes").fetchall()
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("SELECT currval('notes_id_seq')")
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("statement", [
    "PREPARE kept AS SELECT 1",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "LISTEN channel",
    "LOAD 'auto_explain'",
])
def test_what_would_outlive_the_transaction_is_refused(gw_cluster, issuer, statement):
    with gateway(gw_cluster) as conn, conn.transaction():
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
        with pytest.raises(psycopg.Error, match="not allowed in a gateway session"):
            conn.execute(statement)


def test_audit_rows_of_their_own_kind(gw_cluster, issuer):
    """A token is audited when it is decided, not at every transaction the decision cache
    admits it again; refusals always; the counters count every call."""
    sub = f"user-audit-{time.time_ns()}"
    tok, expired = token(issuer, sub), token(issuer, sub, exp=int(time.time()) - 60)

    def successes() -> int:
        return gw_cluster.sql("SELECT coalesce(sum(successes), 0)::int FROM oauth.stats")[0][0]

    # a role name of this test's own: the refusal's row is found by it, whatever other
    # tests' rows the housekeeper writes meanwhile (expired comes before any role check)
    marker = f"audit_{time.time_ns()}"

    before = successes()
    with gateway(gw_cluster, autocommit=True) as conn:
        for _ in range(3):
            conn.execute("BEGIN")
            conn.execute("SELECT oauth.authenticate(%s)", (tok,))
            conn.execute("COMMIT")
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            conn.execute("SELECT oauth.authenticate(%s, %s)", (expired, marker))
        conn.execute("ROLLBACK")
    assert successes() - before == 3

    def rows() -> list[tuple]:
        return gw_cluster.sql(
            "SELECT kind, outcome, reason, role FROM oauth.audit_log "
            "WHERE subject = %s OR role = %s ORDER BY id", (sub, marker))

    until(lambda: len(rows()) >= 2, what="the audit rows")
    # one row for three transactions of the same token, and one for the refusal
    assert rows() == [("transaction", "ok", "ok", "app"),
                      ("transaction", "refused", "expired", marker)]


def test_the_token_is_kept_out_of_statement_logs(issuer):
    cluster = make_gateway_cluster(issuer, log_statement="'all'",
                                   log_min_duration_statement=0)
    try:
        tok = token(issuer, "user-logged")
        with gateway(cluster) as conn, conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)", (tok,))
        log = cluster.log_text()
        assert "oauth.authenticate($1)" in log  # the statement itself is logged
        for part in tok.split("."):
            assert part not in log
    finally:
        cluster.stop()


def test_a_gateway_needs_no_membership_and_its_password_alone_gives_nothing(gw_cluster):
    assert gw_cluster.sql(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
        "WHERE r.rolname = 'gateway'") == [(0,)]
    with gateway(gw_cluster, autocommit=True) as conn:
        for statement in ("SELECT * FROM notes", "SELECT * FROM gateway_only",
                          "SELECT oauth.claim('sub')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_check_setup_names_a_gateway_that_has_rights_of_its_own(gw_cluster):
    def findings() -> set[str]:
        return {row[0] for row in gw_cluster.sql(
            "SELECT check_name FROM oauth.check_setup() WHERE check_name LIKE 'gateway%'")}

    assert findings() == set()
    gw_cluster.sql("GRANT tenant TO gateway; GRANT SELECT ON gateway_only TO gateway; "
                   "ALTER ROLE gateway CREATEROLE")
    try:
        assert findings() == {"gateway_is_member", "gateway_has_rights", "gateway_privileged"}
    finally:
        gw_cluster.sql("REVOKE tenant FROM gateway; REVOKE SELECT ON gateway_only FROM gateway; "
                       "ALTER ROLE gateway NOCREATEROLE")
    gw_cluster.sql("CREATE DATABASE everyone_gated")
    gw_cluster.sql("ALTER DATABASE everyone_gated SET pg_oauth.gateway = on")
    try:
        assert findings() == {"gateway_database_wide"}
    finally:
        gw_cluster.sql("DROP DATABASE everyone_gated")
