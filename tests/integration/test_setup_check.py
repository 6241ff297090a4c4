"""The setup checker: oauth.check_setup() and `pg-oauth doctor` name every risk of a
careless setup with its fix, and pass the DBA guide's pg_hba template (trust scoped to a
group role), which keeps a missing library from opening the server to superusers
and replication.  Two clusters of their own: a careless one (tests/pgcluster.py's
DEFAULT_HBA, no guard) and a tidy one (the DBA guide's template and the guard)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import CLUSTERS, make_cluster, setup_oauth
from pgcluster import ADMIN_PASSWORD, Cluster, free_port

ROOT = Path(__file__).resolve().parents[2]

# the test runner's own way in (the template's admin lines are for a real network)
TEST_ACCESS = "host    all       postgres      127.0.0.1/32  scram-sha-256\n"


def guide_hba_template() -> str:
    """The pg_hba.conf lines of the DBA guide, exactly as documented (the here-document
    its pg_hba.conf step puts on top of Debian's file)."""
    guide = (ROOT / "docs" / "dba-guide.md").read_text()
    step = guide[guide.index("<!-- dba-guide: pg_hba.conf -->"):]
    block = re.search(r"<<'EOF'\n(.*?)\nEOF\n", step, re.DOTALL)
    assert block, "no pg_hba.conf lines in the DBA guide"
    return textwrap.dedent(block.group(1)) + "\n"


@pytest.fixture(scope="module")
def careless(issuer) -> Iterator[Cluster]:
    c = make_cluster(issuer)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def tidy(issuer) -> Iterator[Cluster]:
    c = Cluster(settings={"session_preload_libraries": "'pg_oauth'",
                          "pg_oauth.rate_limit_failures": 0},
                hba=guide_hba_template() + TEST_ACCESS).init().start()
    CLUSTERS.append(c)
    setup_oauth(c, issuer.issuer)
    c.sql("CREATE ROLE oauth_users NOLOGIN; GRANT oauth_users TO alice")
    c.wait_for_workers()
    yield c
    c.stop()


def findings(cluster: Cluster, dbname: str = "postgres") -> list[tuple[str, str, str, str]]:
    return cluster.sql("SELECT severity, check_name, finding, fix FROM oauth.check_setup()",
                       dbname=dbname)


def names(cluster: Cluster, severity: str = "risk", dbname: str = "postgres") -> set[str]:
    return {f[1] for f in findings(cluster, dbname) if f[0] == severity}


@contextlib.contextmanager
def hba_file(cluster: Cluster, text: str) -> Iterator[None]:
    """pg_hba.conf on disk says `text` (not reloaded: check_setup reads the file)."""
    path = cluster.data / "pg_hba.conf"
    before = path.read_text()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_text(before)


# -- a careless setup ---------------------------------------------------------------

def test_careless_setup_reports_each_risk(careless):
    rows = findings(careless)
    assert {r[1] for r in rows if r[0] == "risk"} == {
        "trust_for_all_users", "trust_without_tls", "replication_via_trust", "guard_missing"}
    assert {r[1] for r in rows if r[0] == "warning"} == {"trust_local"}
    # one row per line, naming it, each with its fix
    all_lines = [r for r in rows if r[1] == "trust_for_all_users"]
    assert len(all_lines) == 4
    assert any("host all all 127.0.0.1 255.255.255.255 trust" in r[2] for r in all_lines)
    assert all("+oauth_users" in r[3] for r in all_lines)
    repl = [r for r in rows if r[1] == "replication_via_trust"]
    assert all("postgres" in r[2] for r in repl), repl
    guard = next(r for r in rows if r[1] == "guard_missing")
    assert "alice" in guard[2] and "session_preload_libraries" in guard[3]


def test_check_setup_is_for_superusers(careless, issuer):
    with (careless.token_connect("alice", issuer.mint(sub="alice")) as conn,
          pytest.raises(psycopg.errors.InsufficientPrivilege)):
        conn.execute("SELECT * FROM oauth.check_setup()")


SETTINGS = [
    # check name, severity, statements that cause it, statements that undo it
    ("require_ssl_off", "risk",
     ["ALTER SYSTEM SET pg_oauth.require_ssl = off"], ["ALTER SYSTEM RESET pg_oauth.require_ssl"]),
    ("ssl_off", "risk", ["ALTER SYSTEM SET ssl = off"], ["ALTER SYSTEM SET ssl = on"]),
    ("ssl_files_missing", "risk", ["ALTER SYSTEM SET ssl_cert_file = 'nowhere.crt'"],
     ["ALTER SYSTEM SET ssl_cert_file = 'server.crt'"]),
    ("privileges_allowed", "warning", ["ALTER SYSTEM SET pg_oauth.allow_privileges = 'bypassrls'"],
     ["ALTER SYSTEM RESET pg_oauth.allow_privileges"]),
    ("privileges_allowed", "warning", ["ALTER SYSTEM SET pg_oauth.allow_superuser = on"],
     ["ALTER SYSTEM RESET pg_oauth.allow_superuser"]),
    ("config_database_owner", "risk", ["ALTER DATABASE postgres OWNER TO bob"],
     ["ALTER DATABASE postgres OWNER TO postgres"]),
    ("schema_owner", "risk", ["ALTER SCHEMA oauth OWNER TO bob"],
     ["ALTER SCHEMA oauth OWNER TO postgres"]),
    ("privileged_token_role", "risk",
     [("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
       "SELECT issuer, 'sub', 'root', 'su' FROM oauth.issuers")],
     ["DELETE FROM oauth.role_map WHERE pattern = 'root'"]),
]


@pytest.mark.parametrize(("check", "severity", "cause", "undo"), SETTINGS,
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SETTINGS)])
def test_each_setting_risk_is_named(careless, check, severity, cause, undo):
    assert check not in names(careless, severity)
    for statement in cause:
        careless.sql(statement)
    careless.reload()
    try:
        assert check in names(careless, severity)
    finally:
        for statement in undo:
            careless.sql(statement)
        careless.reload()
    assert check not in names(careless, severity)


def test_privileged_token_role_names_role_and_privilege(careless):
    careless.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                 "SELECT issuer, 'sub', 'root', 'su' FROM oauth.issuers")
    try:
        rows = [r for r in findings(careless) if r[1] == "privileged_token_role"]
        assert len(rows) == 1, rows
        assert all('token role "su" (oauth.role_map rule' in r[2] for r in rows)
        assert {r[3] for r in rows} >= {"ALTER ROLE su NOSUPERUSER, or keep it out of the token roles"}
    finally:
        careless.sql("DELETE FROM oauth.role_map WHERE pattern = 'root'")


HBA = [
    ("no_break_glass",
     "hostssl all alice 127.0.0.1/32 trust\nhost all postgres 127.0.0.1/32 scram-sha-256\n"),
    ("replication_via_trust",
     "local all postgres scram-sha-256\nhostssl replication alice 127.0.0.1/32 trust\n"),
    ("hba_file_error",
     "local all postgres scram-sha-256\nhostssl all alice 999.0.0.1/32 trust\n"),
]


@pytest.mark.parametrize(("check", "hba"), HBA, ids=[h[0] for h in HBA])
def test_each_pg_hba_risk_is_named(careless, check, hba):
    with hba_file(careless, hba):
        assert check in names(careless)
        assert "trust_for_all_users" not in names(careless)


def test_no_trust_line_is_a_warning(careless):
    with hba_file(careless, "local all postgres scram-sha-256\n"):
        assert names(careless, "warning") == {"no_token_lines"}
        assert names(careless) == set()


def test_checks_run_in_the_configuration_database(careless):
    careless.sql("CREATE DATABASE app")
    try:
        careless.sql("CREATE EXTENSION pg_oauth CASCADE", dbname="app")
        row = next(r for r in findings(careless, "app") if r[1] == "not_configuration_database")
        assert row[0] == "risk" and 'database "postgres"' in row[3]
    finally:
        careless.sql("DROP DATABASE app")


def test_settings_that_need_a_restart(careless):
    saved = dict(careless.settings)
    careless.settings.update({"pg_oauth.workers": 0, "pg_oauth.database": "'nowhere'",
                              "listen_addresses": "'*'"})
    careless.restart()
    try:
        # a line for any address; written, not loaded
        with hba_file(careless, "local all postgres scram-sha-256\n"
                                "hostssl all alice 0.0.0.0/0 trust\n"):
            assert {"no_workers", "config_database_missing"} <= names(careless)
            assert "trust_from_anywhere" in names(careless, "warning")
    finally:
        careless.settings = saved
        careless.restart()
        careless.wait_for_workers()


# -- the DBA guide's template ---------------------------------------------------------

def test_guide_template_passes(tidy):
    assert "+oauth_users" in guide_hba_template()
    assert findings(tidy) == []


def test_template_admits_token_group_members_only(tidy, issuer):
    with tidy.token_connect("alice", issuer.mint(sub="alice")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    # bob may log in by the role map, but is not a member of oauth_users
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        tidy.token_connect("bob", issuer.mint(sub="bob")).close()


def test_privileged_token_roles_are_reported_until_fixed(tidy):
    tidy.sql("""
        CREATE ROLE admins NOLOGIN SUPERUSER;  GRANT admins TO alice;
        CREATE ROLE relay LOGIN REPLICATION;   GRANT oauth_users TO relay;
        CREATE ROLE files LOGIN;               GRANT pg_read_server_files TO files;
    """)
    tidy.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
             "SELECT issuer, 'sub', 'files', 'files' FROM oauth.issuers")
    try:
        rows = findings(tidy)
        assert {r[0] for r in rows} == {"risk"}
        lines = ", ".join(str(n) for n, text in enumerate(guide_hba_template().splitlines(), 1)
                          if "+oauth_users" in text)
        token_roles = {r[2].split(")")[0] + ")" for r in rows if r[1] == "privileged_token_role"}
        rule = tidy.sql("SELECT id FROM oauth.role_map WHERE role = 'files'")[0][0]
        assert token_roles == {
            f'token role "alice" (member of +oauth_users on pg_hba.conf lines {lines})',
            f'token role "relay" (member of +oauth_users on pg_hba.conf lines {lines})',
            f'token role "files" (oauth.role_map rule {rule})',
        }
        alice = next(r for r in rows if '"alice"' in r[2])
        assert 'reaches superuser through "admins"' in alice[2]
        assert "REVOKE the membership that leads to admins from alice" in alice[3]
        assert any('"files"' in r[2] and "pg_read_server_files" in r[2] for r in rows)
        # relay can open logical replication connections through both token lines
        repl = [r for r in rows if r[1] == "replication_via_trust"]
        assert len(repl) == 2 and all("relay" in r[2] for r in repl)
    finally:
        tidy.sql("""
            DELETE FROM oauth.role_map WHERE role = 'files';
            REVOKE admins FROM alice; DROP ROLE admins;
            DROP ROLE relay; DROP ROLE files;
        """)
    assert findings(tidy) == []


def test_role_map_rules_the_validator_cannot_run_are_named(tidy):
    """Rules stored before 1.1 (or with the trigger off) may hold what RE2 refuses: the
    workers skip them with a warning, and check_setup names each one with its fix."""
    bad = {"(alice)\\1?": "backreferences", "(?=alice)alice": "lookaround",
           "alic[a-z]++": "a possessive quantifier"}
    with tidy.admin() as conn, conn.transaction():
        # without the check, as before 1.1 (the trigger is ENABLE ALWAYS: replica mode
        # does not skip it)
        conn.execute("ALTER TABLE oauth.role_map DISABLE TRIGGER role_map_check")
        ids = {pattern: conn.execute(
            "INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
            "SELECT issuer, 'sub', %s, 'alice' FROM oauth.issuers RETURNING id",
            (pattern,)).fetchone()[0] for pattern in bad}
        conn.execute("ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_check")
    (issuer,) = tidy.sql("SELECT issuer FROM oauth.issuers")[0]
    try:
        rows = [r for r in findings(tidy) if r[1] == "role_map_rule_skipped"]
        assert len(rows) == len(bad), rows
        for (severity, _, finding, fix), pattern in zip(rows, bad, strict=True):
            assert severity == "warning"
            assert finding.startswith(
                f'oauth.role_map rule {ids[pattern]} (issuer "{issuer}", claim "sub", '
                f'pattern "{pattern}", role "alice") cannot be used by the validator and is '
                "skipped: pattern is not supported by RE2 ("), finding
            assert finding.endswith("the logins it should admit are refused role_not_allowed")
            assert f"WHERE id = {ids[pattern]}" in fix and "RE2 syntax" in fix, fix
        # what the trigger says of the same rule when it is written
        with pytest.raises(psycopg.Error, match="not supported by RE2"):
            tidy.sql("UPDATE oauth.role_map SET role = role WHERE id = %s",
                     (ids["(?=alice)alice"],))
    finally:
        tidy.sql("DELETE FROM oauth.role_map WHERE id = ANY(%s)", (list(ids.values()),))
    assert findings(tidy) == []


def test_role_map_unchecked_when_the_validator_does_not_load(tidy):
    """pyhook missing: check_setup still gives its other findings, and says so."""
    saved = dict(tidy.settings)
    tidy.restart({"pg_oauth.python_path": "'/nonexistent'"})
    try:
        rows = findings(tidy)
        assert [(r[0], r[1]) for r in rows] == [("warning", "role_map_unchecked")], rows
        assert "could not be checked: the validator's Python package did not load (" in rows[0][2]
        assert "pg_oauth.python_path" in rows[0][3]
    finally:
        tidy.settings = saved
        tidy.restart()
        tidy.wait_for_workers()
    assert findings(tidy) == []


def test_guard_is_per_login_role_not_per_group(tidy):
    tidy.sql("ALTER SYSTEM RESET session_preload_libraries")
    tidy.reload()
    try:
        assert [r[2] for r in findings(tidy) if r[1] == "guard_missing"] == [
            ("session_preload_libraries does not include pg_oauth, cluster-wide or for these "
             "roles that trust lines admit: alice; if pg_oauth is ever missing from "
             "shared_preload_libraries, their trust-line sessions are not ended")]
        # a group's role settings do not apply to its members
        tidy.sql("ALTER ROLE oauth_users SET session_preload_libraries = 'pg_oauth'")
        assert "guard_missing" in names(tidy)
        tidy.sql("ALTER ROLE alice SET session_preload_libraries = '$libdir/pg_oauth'")
        assert findings(tidy) == []
    finally:
        tidy.sql("ALTER ROLE oauth_users RESET ALL; ALTER ROLE alice RESET ALL")
        tidy.sql("ALTER SYSTEM SET session_preload_libraries = 'pg_oauth'")
        tidy.reload()


def test_template_without_the_library_keeps_superusers_and_replication_out(tidy, issuer):
    tidy.preload = False
    tidy.restart()
    try:
        assert names(tidy) == {"library_not_preloaded"}
        # the member comes in through plain trust; the guard ends the session
        with pytest.raises(psycopg.OperationalError, match="reason=validator_unavailable"):
            tidy.token_connect("alice", issuer.mint(sub="alice")).close()
        # a superuser and a replication connection find no line to come in by
        for extra in ({}, {"replication": "database"}):
            with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
                psycopg.connect(tidy.token_dsn("su", **extra), password="none",
                                connect_timeout=10).close()
    finally:
        tidy.preload = True
        tidy.restart()
        tidy.wait_for_workers()


# -- pg-oauth doctor -------------------------------------------------------------------

def doctor(dsn: str, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pg_oauth_command", "doctor", "--dsn", dsn, *args],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert ADMIN_PASSWORD not in out.stdout + out.stderr
    return out


def test_doctor_exits_1_on_risks(careless):
    out = doctor(careless.admin_dsn())
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("risk: trust_for_all_users: pg_hba.conf line ") and
               ". Fix: Scope token lines to a group role" in line for line in lines)
    assert any(line.startswith("warning: trust_local: ") for line in lines)
    assert lines[-1].startswith('database "postgres": ') and " risks, 1 warning" in lines[-1]
    listed = json.loads(doctor(careless.admin_dsn(), "--json").stdout)
    assert {f["check_name"] for f in listed} == {r[1] for r in findings(careless)}


def test_doctor_exits_0_on_the_template(tidy):
    out = doctor(tidy.admin_dsn())
    assert (out.returncode, out.stdout) == (0, 'database "postgres": no risk found\n'), out.stderr


def test_doctor_says_where_the_extension_belongs(tidy):
    tidy.sql("CREATE DATABASE plain")
    try:
        out = doctor(tidy.admin_dsn("plain"))
    finally:
        tidy.sql("DROP DATABASE plain")
    assert out.returncode == 1
    assert out.stdout.startswith(
        'risk: extension_missing: the pg_oauth extension is not installed in database "plain"')
    assert 'Fix: run CREATE EXTENSION pg_oauth CASCADE in database "postgres"' in out.stdout


def test_doctor_exits_2_when_it_cannot_check(tidy, issuer):
    out = doctor(f"host=127.0.0.1 port={free_port()} dbname=postgres user=postgres "
                 f"password={ADMIN_PASSWORD} sslmode=disable")
    assert out.returncode == 2 and "pg-oauth doctor: cannot connect:" in out.stderr
    assert out.stdout == ""
    out = doctor(tidy.admin_dsn().replace(ADMIN_PASSWORD, "wrong"))
    assert out.returncode == 2 and "password authentication failed" in out.stderr
    # not a superuser (a token login, the token from the environment): the checks cannot run
    token = issuer.mint(sub="alice")
    out = doctor(tidy.token_dsn("alice"), env={"PGPASSWORD": token})
    assert out.returncode == 2 and "permission denied for function check_setup" in out.stderr
    assert token not in out.stdout + out.stderr


@contextlib.contextmanager
def empty_jwks_server() -> Iterator[str]:
    """An HTTP server on loopback whose JWKS has no key; its jwks_uri."""
    import http.server
    import threading

    class Empty(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"keys": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks"
    finally:
        server.shutdown()
        server.server_close()


def test_doctor_reports_an_issuer_without_usable_keys(tidy, issuer, tmp_path):
    """Issue 19: an issuer whose JWKS is unreachable or empty refuses every token of it;
    pg-oauth doctor names it with the fix, and not an issuer whose keys the server holds."""
    from pg_oauth_dev.dev_issuer import DevIssuer

    down = DevIssuer(str(tmp_path)).start()
    down.set_broken()
    pinned = "https://pinned.example.com"
    try:
        with empty_jwks_server() as empty_uri:
            empty = "https://empty.example.com"
            tidy.sql("INSERT INTO oauth.issuers (issuer, audiences, allow_loopback_http) "
                     "VALUES (%s, '{db}', true)", (down.issuer,))
            tidy.sql("INSERT INTO oauth.issuers (issuer, audiences, jwks_uri, "
                     "allow_loopback_http) VALUES (%s, '{db}', %s, true)", (empty, empty_uri))
            tidy.sql("INSERT INTO oauth.issuers (issuer, audiences, jwks) "
                     "VALUES (%s, '{db}', '{\"keys\": []}')", (pinned,))
            tidy.sql("SELECT oauth.refresh_keys()")
            tidy.token_connect("alice", issuer.mint(sub="alice")).close()
            out = doctor(tidy.admin_dsn())
        assert out.returncode == 1, out.stdout + out.stderr
        lines = [ln for ln in out.stdout.splitlines()
                 if ln.startswith("risk: issuer_without_keys: ")]
        for name in (down.issuer, empty, pinned):
            assert any(repr(name) in ln and ". Fix: " in ln for ln in lines), (name, lines)
        assert not any(repr(issuer.issuer) in ln for ln in lines), lines
        assert any(f"SELECT oauth.refresh_keys('{down.issuer}')" in ln for ln in lines)
    finally:
        tidy.sql("DELETE FROM oauth.issuers WHERE issuer IN (%s, %s, %s)",
                 (down.issuer, "https://empty.example.com", pinned))
        down.stop()
    assert doctor(tidy.admin_dsn()).returncode == 0
