"""No token appears in a server log under every logging setting a superuser can turn
on, and oauth.explain says nothing into the caller's log.  That no token minted during
the whole session appears in any server log is checked at its end
(conftest._remove_clusters_at_end)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from conftest import MINTED, make_cluster, token_leaks, until
from pgcluster import Cluster

from pyhook.server_explain import quiet_transaction
from pyhook.sql_rows import statement_refusal_rows

ROOT = Path(__file__).resolve().parents[2]

# everything that can write a statement, its parameters or its plan to the log
LOUD = {
    "shared_preload_libraries": "'pg_oauth,auto_explain'",
    "log_statement": "all",
    "log_duration": "on",
    "log_min_duration_statement": 0,
    "log_min_error_statement": "debug5",
    "auto_explain.log_min_duration": 0,
    "auto_explain.log_verbose": "on",
    "auto_explain.log_nested_statements": "on",
    "debug_print_plan": "on",
    "debug_print_parse": "on",
    "log_min_messages": "debug1",
    "log_parameter_max_length": -1,
    "log_parameter_max_length_on_error": -1,
}


def secrets(token: str) -> list[str]:
    """The payload and signature segments (headers repeat, and are not secret)."""
    return [part for part in token.split(".")[1:] if len(part) >= 16]


def leaked(log: str, tokens: list[str]) -> list[str]:
    return [s[:12] + "..." for t in tokens for s in secrets(t) if s in log]


def lines_of(cluster: Cluster, pid: int) -> list[str]:
    return [line for line in cluster.log_text().splitlines() if f"[{pid}]" in line]


def test_explain_says_nothing_into_the_callers_log(cluster, issuer):
    """Every message raised in the caller's session goes to the log with its
    statement (log_min_error_statement); explain raises none."""
    token = issuer.mint(sub="alice")
    with cluster.admin() as conn:
        rows = conn.execute("SELECT name, outcome FROM oauth.explain(%s, 'alice')",
                            (token,)).fetchall()  # fmt: skip
        pid = conn.info.backend_pid
    assert rows[-1] == ("decision", "pass")
    assert not [line for line in lines_of(cluster, pid) if "pg_oauth: " in line]


def test_explain_refuses_a_token_written_into_the_statement(cluster, issuer):
    token = issuer.mint(sub="alice")
    with cluster.admin() as conn:
        rows = conn.execute("SELECT step, name, outcome, input, detail FROM oauth.explain("
                            f"'{token}', 'alice')").fetchall()  # fmt: skip
        pid = conn.info.backend_pid
    assert [r[1:3] for r in rows] == [("statement", "fail"), ("decision", "fail")]
    assert rows == [tuple(r.values()) for r in statement_refusal_rows()]
    assert "bind parameter" in rows[-1][4]
    # under the default settings nothing of that session reached the log
    assert not leaked("\n".join(lines_of(cluster, pid)), [token])

    # psql 15 cannot bind: docs/security.md has the server read it from a file
    path = cluster.base / "explain-token.jwt"
    path.write_text(token + "\n")
    path.chmod(0o644)
    try:
        rows = cluster.sql(
            "SELECT name, outcome FROM oauth.explain(pg_catalog.btrim("
            f"pg_catalog.pg_read_file('{path}'), E' \\n'), 'alice')"
        )
    finally:
        path.unlink()
    assert rows[-1] == ("decision", "pass")


def test_no_token_in_the_log_whatever_a_superuser_logs(issuer, tmp_path):
    loud = make_cluster(issuer, **LOUD)
    try:
        tokens: list[str] = []

        def mint(**kw) -> str:
            tokens.append(issuer.mint(**kw))
            return tokens[-1]

        def attempt(user: str, token: str) -> str:
            try:
                loud.token_connect(user, token).close()
            except psycopg.OperationalError as exc:
                line = next(x for x in str(exc).splitlines() if "reason=" in x)
                return line.split("reason=", 1)[1].split(":", 1)[0].strip()
            return "ok"

        # logins: admitted, admitted again from the decision cache, refused
        again = mint(sub="alice")
        assert [attempt("alice", again) for _ in range(3)] == ["ok"] * 3
        assert attempt("bob", mint(sub="bob")) == "ok"
        assert attempt("bob", mint(sub="alice")) == "role_not_allowed"
        assert attempt("alice", mint(sub="alice", lifetime=-120)) == "expired"
        assert attempt("alice", mint(sub="alice", sign_with_unpublished=True)) == \
            "bad_signature"
        assert attempt("alice", mint(sub="alice", kid="no-such-kid")) == "unknown_key"

        # oauth.explain as docs/security.md says: a parameter, logging off for the
        # transaction
        with loud.admin() as conn, conn.transaction():
            quiet_transaction(conn)
            for token, verdict in ((mint(sub="alice"), "pass"),
                                   (mint(sub="mallory"), "fail")):  # fmt: skip
                rows = conn.execute(
                    "SELECT name, outcome FROM oauth.explain(%s, 'alice')", (token,)
                ).fetchall()
                assert rows[-1] == ("decision", verdict)

        # pg-oauth explain/check --dsn: the same, on the server
        token_file = tmp_path / "token"
        token_file.write_text(mint(sub="alice"))
        # (explain decides on the server: the backend's role check is there)
        for command, expected in (("explain", "role exists and may log in"),
                                  ("check", "ok: role 'alice' allowed")):  # fmt: skip
            out = subprocess.run(
                [sys.executable, "-m", "pg_oauth_command", command, "--dsn", loud.admin_dsn(),
                 "--token-file", str(token_file), "--role", "alice"],
                check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert expected in out.stdout, out.stdout

        # an incident: keys dropped and refetched, the next logins decided afresh
        loud.sql("SELECT oauth.refresh_keys()")
        assert attempt("alice", again) == "ok"
        assert attempt("alice", mint(sub="alice")) == "ok"

        log = loud.log_text()
        # the settings were live: statements, parameters and plans were printed
        assert "statement: " in log and "parameters: $1 = " in log
        assert ":constvalue" in log and "Query Text:" in log
        assert "oauth.validate($1, $2, $3, $4, $5, $6)" in log
        assert not leaked(log, tokens), "token text in the loud cluster's log"
    finally:
        loud.stop()


def test_the_session_end_check_finds_a_token_in_a_log(cluster, issuer):
    """conftest's _remove_clusters_at_end fails the run with token_leaks(); here it is
    shown to find a token's payload in a real server log."""
    token = issuer.mint(sub="alice")
    payload = token.split(".")[1]
    try:
        with cluster.admin() as conn:  # a superuser can write anything into the log
            conn.execute(f"DO $$ BEGIN RAISE LOG 'planted {payload}'; END $$")
        log = until(lambda: payload in cluster.log_text() and cluster.log_text(), 10,
                    "the planted line in the log")
        assert token_leaks([token], {"log": log}) == [f"log: {payload[:12]}..."]
        assert token_leaks([issuer.mint(sub="bob")], {"log": log}) == []
    finally:
        MINTED.remove(token)  # planted on purpose: not the server's leak
