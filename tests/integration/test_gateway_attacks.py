"""Attacks on oauth.authenticate() and gateway sessions (transaction_identity.c, gateway.c).

Each test is one attack, and asserts the defence's own outcome (SQLSTATE, message) or
what the design promises ("nothing runs as the gateway before authenticate", "COMMIT or
ROLLBACK takes away what a transaction could leave to the next one", "the token never
appears in any log").  The fast-path call, domain CHECKs, the plan-logging, prepared
statement, setseed and escaped-literal attacks broke the first version of the feature;
they pass since the fixes they led to.

One psycopg connection as the gateway stands for one pooled server connection: what an
attacker's client sends on it is followed by the next client's transaction (the victim)."""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterator

import psycopg
import pytest
from conftest import MINTED, RecordingIssuer, until
from pgcluster import Cluster
from psycopg import sql
from test_gateway import gateway, make_gateway_cluster, reason, token

POISON = "playground, public"


@pytest.fixture(scope="module")
def gw(issuer: RecordingIssuer) -> Iterator[Cluster]:
    c = make_gateway_cluster(issuer)
    # threat 3: a token user who can create objects (in a schema of its group role)
    c.sql("""
        CREATE SCHEMA playground AUTHORIZATION tenant;
        REVOKE TEMP ON DATABASE postgres FROM PUBLIC;
        GRANT TEMP ON DATABASE postgres TO app;
    """)
    yield c
    c.stop()


def default_search_path(cluster: Cluster) -> str:
    return cluster.sql("SELECT reset_val FROM pg_settings WHERE name = 'search_path'")[0][0]


def begin_as(conn: psycopg.Connection, issuer: RecordingIssuer, sub: str, role: str | None = None
             ) -> None:
    conn.execute("BEGIN")
    conn.execute("SELECT oauth.authenticate(%s, %s)", (token(issuer, sub), role))


def plant_trap(conn: psycopg.Connection, issuer: RecordingIssuer) -> None:
    """The attacker (subject user-evil, role app) prepares a playground.notes view that copies
    whatever its reader can see into playground.loot, and lets the gateway use its schema."""
    begin_as(conn, issuer, "user-evil")
    conn.execute("""
        CREATE TABLE IF NOT EXISTS playground.loot (who text, owner text, body text);
        CREATE OR REPLACE FUNCTION playground.steal(o text, b text) RETURNS boolean
            LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO playground.loot VALUES (oauth.claim('sub'), o, b);
                RETURN true;
            END $$;
        CREATE OR REPLACE VIEW playground.notes AS
            SELECT n.* FROM public.notes n WHERE playground.steal(n.owner, n.body);
        GRANT USAGE ON SCHEMA playground TO PUBLIC;
        DROP DOMAIN IF EXISTS playground.evil CASCADE;
        CREATE DOMAIN playground.evil AS text
            CHECK (set_config('search_path', 'playground, public', false) IS NOT NULL);
        DELETE FROM playground.loot;
    """)
    conn.execute("COMMIT")


def victim_reads_its_notes(conn: psycopg.Connection, issuer: RecordingIssuer) -> str:
    """The next client on the same server connection: its own transaction, its own token."""
    begin_as(conn, issuer, "user-victim")
    conn.execute("INSERT INTO public.notes (body) VALUES ('the victim''s secret')")
    path = conn.execute("SHOW search_path").fetchone()[0]
    conn.execute("SELECT body FROM notes").fetchall()
    conn.execute("COMMIT")
    return path


def loot(cluster: Cluster) -> list[tuple]:
    return cluster.sql("SELECT who, body FROM playground.loot WHERE who = 'user-victim'")


# ---------------------------------------------------------------------------------------
# libpq's fast-path function call (protocol message 'F'): no parser, planner, executor or
# ProcessUtility on its way, only pg_proc_aclcheck() and InvokeFunctionExecuteHook()
# ---------------------------------------------------------------------------------------

class _ArgU(ctypes.Union):
    _fields_ = [("ptr", ctypes.c_void_p), ("integer", ctypes.c_int)]


class _PQArgBlock(ctypes.Structure):
    _fields_ = [("len", ctypes.c_int), ("isint", ctypes.c_int), ("u", _ArgU)]


def _libpq() -> ctypes.CDLL:
    """The libpq psycopg itself loaded (its PGconn pointers are only valid there)."""
    with open("/proc/self/maps") as maps:
        path = next(line.split()[-1] for line in maps if re.search(r"/libpq[-.][^/]*\.so", line))
    lib = ctypes.CDLL(path)
    lib.PQfn.restype = ctypes.c_void_p
    lib.PQfn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                         ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                         ctypes.POINTER(_PQArgBlock), ctypes.c_int]
    lib.PQresultStatus.argtypes = [ctypes.c_void_p]
    lib.PQresultErrorField.restype = ctypes.c_char_p
    lib.PQresultErrorField.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.PQclear.argtypes = [ctypes.c_void_p]
    return lib


def fastpath(conn: psycopg.Connection, fn_oid: int, *args: bytes) -> tuple[str, bytes | str]:
    """PQfn(): ("ok", result bytes) or (SQLSTATE, message).  Arguments in binary format."""
    lib = _libpq()
    keep = [ctypes.create_string_buffer(a, len(a)) for a in args]
    blocks = (_PQArgBlock * max(1, len(args)))()
    for i, a in enumerate(args):
        blocks[i].len = len(a)
        blocks[i].isint = 0
        blocks[i].u.ptr = ctypes.cast(keep[i], ctypes.c_void_p)
    out = ctypes.create_string_buffer(1 << 16)
    outlen = ctypes.c_int(0)
    res = lib.PQfn(conn.pgconn.pgconn_ptr, fn_oid, out, ctypes.byref(outlen), 0, blocks, len(args))
    assert res, "PQfn returned no result"
    try:
        if lib.PQresultStatus(res) == 1:  # PGRES_COMMAND_OK
            return "ok", out.raw[:max(outlen.value, 0)]
        state = lib.PQresultErrorField(res, ord("C")) or b""
        msg = lib.PQresultErrorField(res, ord("M")) or b""
        return state.decode(), msg.decode()
    finally:
        lib.PQclear(res)


def fn_oid(cluster: Cluster, signature: str) -> int:
    return cluster.sql("SELECT %s::regprocedure::oid", (signature,))[0][0]


def test_fastpath_call_before_authenticate_is_refused(gw):
    """The gateway's password alone: a FunctionCall message runs set_config() as the gateway
    before any authenticate."""
    with gateway(gw, autocommit=True) as conn:
        result = fastpath(conn, fn_oid(gw, "set_config(text,text,boolean)"),
                          b"search_path", POISON.encode(), b"\x00")
        assert result[0] == "42501", f"fast-path set_config ran as the gateway: {result}"


def test_fastpath_cannot_poison_the_next_subjects_search_path(gw, issuer):
    """A pooler client sends one FunctionCall between transactions; the next client on that
    server connection runs its own statements through the attacker's schema, as itself."""
    with gateway(gw, autocommit=True) as conn:
        plant_trap(conn, issuer)
        fastpath(conn, fn_oid(gw, "set_config(text,text,boolean)"),
                 b"search_path", POISON.encode(), b"\x00")
        path = victim_reads_its_notes(conn, issuer)
    assert (path, loot(gw)) == (default_search_path(gw), []), \
        "the victim ran with the attacker's search_path, its rows copied by the attacker's view"


def test_fastpath_cannot_read_the_queries_of_other_pooled_connections(gw, issuer):
    """pg_stat_activity's query of a session is shown to its session user's role: every
    pooled connection belongs to the gateway, so the gateway reads what all clients send."""
    with gateway(gw, autocommit=True) as victim, gateway(gw, autocommit=True) as spy:
        begin_as(victim, issuer, "user-victim")
        victim.execute("SELECT 'card 4111-1111-1111-1111' AS secret")
        seen = []
        oid = fn_oid(gw, "pg_stat_get_backend_activity(integer)")
        for backend_id in range(1, 60):
            state, text = fastpath(spy, oid, backend_id.to_bytes(4, "big"))
            if state != "ok":
                seen.append(state)
                break
            seen.append(text.decode(errors="replace"))
        victim.execute("ROLLBACK")
    assert not any("4111" in s for s in seen), "the gateway read another client's statement"
    assert seen and seen[0] == "42501"


# ---------------------------------------------------------------------------------------
# Type input before the gate: parse analysis folds a literal of an array (or composite) of a
# domain into a Const, running the domain's CHECK; Bind converts parameters of the types
# the client names, running the CHECK of a domain parameter.  Neither is planned yet.
# ---------------------------------------------------------------------------------------

def test_a_domain_check_in_a_literal_does_not_run_as_the_gateway(gw, issuer):
    """After COMMIT (in a multi-statement query or the next one), "SELECT '{x}'::evil[]"
    passes the gate (a Const) after its CHECK ran as the gateway during parse analysis."""
    with gateway(gw, autocommit=True) as conn:
        plant_trap(conn, issuer)
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT '{x}'::playground.evil[]")
        path = victim_reads_its_notes(conn, issuer)
    assert (path, loot(gw)) == (default_search_path(gw), []), \
        "the victim ran with the attacker's search_path, its rows copied by the attacker's view"


def test_a_domain_check_in_a_composite_literal_does_not_run_as_the_gateway(gw, issuer):
    with gateway(gw, autocommit=True) as conn:
        plant_trap(conn, issuer)
        begin_as(conn, issuer, "user-evil")
        conn.execute("""
            DROP TYPE IF EXISTS playground.wrapper;
            CREATE TYPE playground.wrapper AS (v playground.evil);
        """)
        conn.execute("COMMIT")
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT '(x)'::playground.wrapper")
        path = victim_reads_its_notes(conn, issuer)
    assert (path, loot(gw)) == (default_search_path(gw), [])


def test_a_domain_check_of_a_bind_parameter_does_not_run_as_the_gateway(gw, issuer):
    """Parse "SELECT $1" naming the domain's OID as the parameter type (no USAGE on its
    schema needed), Bind a value: domain_in() runs the CHECK before the planner is called,
    and "SELECT $1" is what the gate lets through."""
    with gateway(gw, autocommit=True) as conn:
        plant_trap(conn, issuer)
        evil = gw.sql("SELECT 'playground.evil'::regtype::oid")[0][0]
        res = conn.pgconn.exec_params(b"SELECT $1", [b"x"], [evil])
        status = res.status
        path = victim_reads_its_notes(conn, issuer)
    assert status != psycopg.pq.ExecStatus.TUPLES_OK, "SELECT $1::evil ran as the gateway"
    assert (path, loot(gw)) == (default_search_path(gw), [])


def test_code_as_the_gateway_cannot_turn_on_plan_logging_for_the_next_token(gw, issuer):
    """debug_print_plan is a user setting; the gateway's pin is a session value any SET
    outranks.  Set between transactions (fast path here), it logs the next client's custom
    plan of SELECT oauth.authenticate($1): the bound token as a Const's bytes."""
    with gateway(gw, autocommit=True) as conn:
        fastpath(conn, fn_oid(gw, "set_config(text,text,boolean)"),
                 b"debug_print_plan", b"on", b"\x00")
        victim_token = token(issuer, "user-victim")
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (victim_token,))
        conn.execute("ROLLBACK")
    leaked = victim_token.split(".")[1] in plan_constants(gw.log_text())
    assert not leaked, "the victim's token is in the server log (a plan dump's Const)"


def plan_constants(log: str) -> str:
    """The bytes of every ":constvalue N [ b b b ... ]" of the node dumps in a log, as text
    (debug_pretty_print wraps the numbers anywhere, continuing at the same indentation)."""
    out = []
    for m in re.finditer(r"\n([ \t]*):constvalue \d+ \[([^\]]*)\]", log):
        numbers = m.group(2).replace("\n" + m.group(1), "")
        out.append(bytes(int(b) & 0xFF for b in numbers.split()).decode(errors="replace"))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# What an authenticated transaction leaves to the next subject on the same connection
# ---------------------------------------------------------------------------------------

def test_a_protocol_level_prepared_statement_does_not_outlive_the_transaction(gw, issuer):
    """SQL PREPARE is refused while authenticated; a Parse message with a name (any driver's
    server-side prepare) is not, and the next subject reads its text (and runs it)."""
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-a")
        conn.execute("SELECT count(*) FROM notes WHERE body <> 'user-a was here' AND id > %s",
                     (0,), prepare=True)
        conn.execute("COMMIT")
        begin_as(conn, issuer, "user-b")
        left = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        conn.execute("ROLLBACK")
    assert left == [], f"the next subject finds the previous one's prepared statements: {left}"


def test_setseed_does_not_outlive_the_transaction(gw, issuer):
    """setseed() (and SET seed) is not a RESET ALL setting: the next subject's random()
    sequence is the one the previous subject chose."""
    expected = gw.sql("SELECT setseed(0.25), random()")[0][1]
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-a")
        conn.execute("SELECT setseed(0.25)")
        conn.execute("COMMIT")
        begin_as(conn, issuer, "user-b")
        got = conn.execute("SELECT random()").fetchone()[0]
        conn.execute("ROLLBACK")
    assert got != expected, "the next subject's random() was seeded by the previous subject"


def test_a_temp_schema_left_by_one_role_does_not_serve_a_role_without_temp_privilege(gw, issuer):
    """ResetTempTableNamespace empties the backend's temporary schema but keeps it; TEMP is
    checked again on the schema itself (pg_namespace_aclmask), so app2 gets nothing."""
    with gateway(gw, autocommit=True) as fresh:
        begin_as(fresh, issuer, "two-fresh", "app2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="temporary tables"):
            fresh.execute("CREATE TEMP TABLE t (x int)")
        fresh.execute("ROLLBACK")
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-a")
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("COMMIT")
        begin_as(conn, issuer, "two-x", "app2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema pg_temp_"):
            conn.execute("CREATE TEMP TABLE t2 (x int)")
        conn.execute("ROLLBACK")


def test_a_token_written_with_escapes_is_refused_as_written_into_the_statement(gw, issuer):
    """token_in_statement() looks for the payload as written; E'\\x..' escapes (or U&'') put
    the token into the statement text, logs and pg_stat_activity all the same."""
    tok = token(issuer, "user-1")
    MINTED.remove(tok)  # written into a statement on purpose
    escaped = "E'" + "".join(f"\\x{ord(c):02x}" for c in tok) + "'"

    def audited() -> int:
        return gw.sql("SELECT count(*)::int FROM oauth.audit_log WHERE kind = 'transaction' "
                      "AND reason = 'token_in_statement'")[0][0]

    before = audited()
    with gateway(gw, autocommit=True) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            conn.execute(f"SELECT oauth.authenticate({escaped})")
        conn.execute("ROLLBACK")
    assert reason(excinfo.value) == "token_in_statement"
    # refused like any call: audited (found in the parse tree, before the call)
    until(lambda: audited() > before, what="the refusal's audit row")


# ---------------------------------------------------------------------------------------
# Attacks the feature resists (regression tests)
# ---------------------------------------------------------------------------------------

def test_commit_and_chain_starts_a_transaction_without_identity(gw, issuer):
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-1")
        conn.execute("COMMIT AND CHAIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="before oauth.authenticate"):
            conn.execute("SELECT current_user")
        conn.execute("ROLLBACK")


def test_statements_after_commit_in_one_simple_query_are_gated(gw, issuer):
    """SQL injected into an application's statement: "...; COMMIT; <as the gateway>"."""
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-1")
        res = conn.pgconn.exec_(b"SELECT 1; COMMIT; SELECT * FROM gateway_only")
        assert res.status == psycopg.pq.ExecStatus.FATAL_ERROR
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"42501"
        assert b"before oauth.authenticate" in res.error_message
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_pipeline_past_commit_is_gated(gw, issuer):
    with gateway(gw, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="before oauth.authenticate"), \
            conn.pipeline():
        conn.execute("BEGIN")
        conn.execute("SELECT oauth.authenticate(%s)", (token(issuer, "user-1"),))
        conn.execute("COMMIT")
        conn.execute("SELECT secret FROM gateway_only")


def test_a_procedure_cannot_commit_its_way_out_of_the_identity(gw, issuer):
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-evil")
        conn.execute("""
            CREATE OR REPLACE PROCEDURE playground.escape() LANGUAGE plpgsql AS $$
            BEGIN COMMIT; PERFORM * FROM public.gateway_only; END $$""")
        with pytest.raises(psycopg.errors.InvalidTransactionTermination):
            conn.execute("CALL playground.escape()")
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("how", ["session characteristics", "placeholder", "savepoint",
                                 "function SET clause", "rollback"])
def test_settings_do_not_reach_the_next_subject(gw, issuer, how):
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-evil")
        if how == "session characteristics":
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        elif how == "placeholder":
            conn.execute("SET myapp.tenant = 'user-evil'")
        elif how == "savepoint":
            conn.execute("SAVEPOINT s")
            conn.execute("SELECT set_config('search_path', 'playground, public', false)")
            conn.execute("RELEASE s")
        elif how == "function SET clause":
            conn.execute("""
                CREATE OR REPLACE FUNCTION playground.setter() RETURNS int LANGUAGE plpgsql
                    SET work_mem = '64kB' AS $$
                BEGIN PERFORM set_config('search_path', 'playground, public', false);
                      RETURN 1; END $$""")
            conn.execute("SELECT playground.setter()")
        conn.execute("ROLLBACK" if how == "rollback" else "COMMIT")
        begin_as(conn, issuer, "user-victim")
        got = conn.execute("SELECT current_setting('transaction_read_only'), "
                           "current_setting('myapp.tenant', true), "
                           "current_setting('search_path')").fetchone()
        conn.execute("ROLLBACK")
    assert got[0] == "off" and not got[1] and got[2] == default_search_path(gw)


def test_parallel_workers_do_not_lose_the_claims_for_rls(gw, issuer):
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-par")
        conn.execute("INSERT INTO notes (body) VALUES ('mine')")
        # 16 renamed force_parallel_mode
        knob = "debug_parallel_query" if conn.info.server_version >= 160000 else "force_parallel_mode"
        conn.execute(f"SET LOCAL {knob} = on")
        conn.execute("SET LOCAL parallel_setup_cost = 0")
        conn.execute("SET LOCAL parallel_tuple_cost = 0")
        owners = {r[0] for r in conn.execute("SELECT owner FROM notes").fetchall()}
        conn.execute("ROLLBACK")
    assert owners == {"user-par"}


def test_a_cursor_does_not_reach_the_next_subject(gw, issuer):
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-evil")
        conn.execute("DECLARE c CURSOR FOR SELECT current_user")
        conn.execute("COMMIT")
        begin_as(conn, issuer, "user-victim")
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("FETCH c")
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("statement", ["LISTEN ch", "PREPARE p AS SELECT 1",
                                       "DECLARE h CURSOR WITH HOLD FOR SELECT 1"])
def test_what_outlives_the_transaction_is_refused_from_plpgsql_too(gw, issuer, statement):
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-evil")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="not allowed in a gateway session"):
            conn.execute(sql.SQL("DO $$ BEGIN EXECUTE {}; END $$").format(sql.Literal(statement)))
        conn.execute("ROLLBACK")


def test_a_function_cannot_authenticate_a_second_token(gw, issuer):
    with gateway(gw, autocommit=True) as conn:
        begin_as(conn, issuer, "user-evil")
        conn.execute("""
            CREATE OR REPLACE FUNCTION playground.reauth(t text) RETURNS name
                LANGUAGE sql AS 'SELECT oauth.authenticate(t)'""")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="already authenticated"):
            conn.execute("SELECT playground.reauth(%s)", (token(issuer, "user-victim"),))
        conn.execute("ROLLBACK")


def test_a_gateway_with_memberships_still_runs_nothing_before_authenticate(gw):
    """Careless DBA: the gateway is a member of a role with table grants."""
    gw.sql("GRANT tenant TO gateway")
    try:
        with gateway(gw, autocommit=True) as conn:
            for statement in ("SELECT * FROM notes", "SET ROLE tenant",
                              "SELECT nextval('notes_id_seq')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege,
                                   match="before oauth.authenticate"):
                    conn.execute(statement)
    finally:
        gw.sql("REVOKE tenant FROM gateway")


def test_logging_of_every_kind_keeps_bound_tokens_out(issuer):
    cluster = make_gateway_cluster(
        issuer, log_statement="'all'", log_min_duration_statement=0,
        log_min_error_statement="'error'", log_parameter_max_length_on_error=-1,
        log_parameter_max_length=-1)
    try:
        cluster.sql("""
            ALTER ROLE gateway SET session_preload_libraries = 'auto_explain';
            ALTER ROLE gateway SET auto_explain.log_min_duration = 0;
            ALTER ROLE gateway SET auto_explain.log_analyze = on;
            ALTER ROLE gateway SET auto_explain.log_verbose = on;
        """)
        good = token(issuer, "user-logged")
        expired = token(issuer, "user-logged", exp=1)
        with gateway(cluster, autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute("SELECT oauth.authenticate(%s)", (good,))
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                conn.execute("SELECT oauth.authenticate(%s)", (expired,))
            conn.execute("ROLLBACK")
        log = cluster.log_text()
        # every logger ran: statement, duration, error statement, auto_explain
        assert "execute <unnamed>: SELECT oauth.authenticate($1)" in log
        assert "STATEMENT:  SELECT oauth.authenticate($1)" in log
        assert "Query Text: SELECT oauth.authenticate($1)" in log
        for tok in (good, expired):
            payload = tok.split(".")[1]
            leaked = payload in log or payload in plan_constants(log)
            assert not leaked
    finally:
        cluster.stop()
