"""A token admits exactly the role the DBA mapped it to, and nothing else: no
privileged role (itself or through membership), no other role through startup
options or role settings, no replication unless allowed; the audit tells the truth.

Each test reproduces an attack that worked before (issue 9).
"""

from __future__ import annotations

import os
import subprocess
import time

import pgwire
import psycopg
import pytest
from conftest import make_cluster, refusal
from pgcluster import ADMIN_PASSWORD, ADMIN_USER, PG_BIN, _as_server_user, server_major


@pytest.fixture(scope="module", autouse=True)
def privileged_roles(cluster):
    """Roles p_* map from sub p_*; each reaches one privilege in its own way."""
    cluster.sql("""
        CREATE ROLE p_admins NOLOGIN SUPERUSER;
        CREATE ROLE p_middle NOLOGIN;
        GRANT p_admins TO p_middle;
        CREATE ROLE p_member LOGIN;  GRANT p_admins TO p_member;
        CREATE ROLE p_nested LOGIN;  GRANT p_middle TO p_nested;
        CREATE ROLE p_createrole LOGIN CREATEROLE;
        CREATE ROLE p_program LOGIN; GRANT pg_execute_server_program TO p_program;
        CREATE ROLE p_reader LOGIN;  GRANT pg_read_server_files TO p_reader;
        CREATE ROLE p_writer LOGIN;  GRANT pg_write_server_files TO p_writer;
        CREATE ROLE p_repl LOGIN REPLICATION;
        CREATE ROLE p_bypass LOGIN BYPASSRLS;
        CREATE ROLE p_rlsgroup NOLOGIN BYPASSRLS;
        CREATE ROLE p_bygroup LOGIN; GRANT p_rlsgroup TO p_bygroup;
        CREATE ROLE p_plain LOGIN;
        CREATE ROLE p_nologin NOLOGIN;
        CREATE ROLE p_target NOLOGIN;
        GRANT p_target TO alice;
    """)
    cluster.sql(
        "INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
        "SELECT issuer, 'sub', '(p_[a-z]+)', '\\1' FROM oauth.issuers")
    yield
    cluster.sql("DELETE FROM oauth.role_map WHERE pattern = '(p_[a-z]+)'")
    cluster.sql("ALTER ROLE alice RESET ALL")


PRIVILEGED = [
    # role, reason, words the detail must name
    ("su", "superuser_forbidden", ['role "su" has superuser']),
    ("p_member", "superuser_forbidden", ['member of "p_admins"', "superuser"]),
    ("p_nested", "superuser_forbidden", ['member of "p_admins"', "superuser"]),
    ("p_program", "privilege_forbidden", ["pg_execute_server_program"]),
    ("p_reader", "privilege_forbidden", ["pg_read_server_files"]),
    ("p_writer", "privilege_forbidden", ["pg_write_server_files"]),
    ("p_repl", "privilege_forbidden", ["replication"]),
    ("p_bypass", "privilege_forbidden", ["bypassrls"]),
    ("p_bygroup", "privilege_forbidden", ['member of "p_rlsgroup"', "bypassrls"]),
]
# Before 16, CREATEROLE could grant any role, pg_execute_server_program included; since 16
# it reaches only what its holder has ADMIN OPTION on (test_createrole_since_16).
if server_major() < 16:
    PRIVILEGED.append(("p_createrole", "privilege_forbidden", ["createrole"]))


def full_refusal(cluster, role, token, **kw) -> str:
    with pytest.raises(psycopg.OperationalError) as excinfo:
        cluster.token_connect(role, token, **kw).close()
    assert refusal(excinfo)
    return str(excinfo.value)


@pytest.mark.parametrize(("role", "reason", "words"), PRIVILEGED)
def test_privileged_roles_are_refused(cluster, issuer, role, reason, words):
    token = issuer.mint(sub=role)
    with pytest.raises(psycopg.OperationalError) as excinfo:
        cluster.token_connect(role, token).close()
    assert refusal(excinfo) == reason
    # the server log names the privilege and the role that carries it
    deadline = time.time() + 5
    while time.time() < deadline:
        lines = [ln for ln in cluster.log_text().splitlines()
                 if f"reason={reason}" in ln and f'role "{role}"' in ln]
        if lines:
            break
        time.sleep(0.1)
    assert lines and all(w in lines[-1] for w in words), lines[-3:]


@pytest.mark.parametrize(("role", "reason", "words"), PRIVILEGED)
def test_explain_agrees_with_the_login(cluster, issuer, role, reason, words):
    rows = cluster.sql("SELECT name, outcome, detail FROM oauth.explain(%s, %s)",
                       (issuer.mint(sub=role), role))
    assert rows[-1][1] == "fail" and rows[-1][2].startswith(reason + ":"), rows[-2:]
    assert all(w in rows[-1][2] for w in words)


def test_plain_role_is_admitted_and_reaches_nothing(cluster, issuer):
    assert cluster.sql("SELECT * FROM oauth.role_privileges('p_plain')") == []
    with cluster.token_connect("p_plain", issuer.mint(sub="p_plain")) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == \
            ("p_plain", "p_plain")


@pytest.mark.skipif(server_major() < 16, reason="CREATEROLE is privileged before 16")
def test_createrole_since_16(cluster, issuer):
    """Since 16, CREATEROLE grants only roles its holder has ADMIN OPTION on: a token
    session of a CREATEROLE role cannot reach a privileged role or make one."""
    assert cluster.sql("SELECT * FROM oauth.role_privileges('p_createrole')") == []
    with cluster.token_connect("p_createrole", issuer.mint(sub="p_createrole")) as conn:
        for attempt in ("GRANT pg_execute_server_program TO p_createrole",
                        "GRANT p_admins TO p_createrole",
                        "CREATE ROLE p_made SUPERUSER",
                        "CREATE ROLE p_made BYPASSRLS"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attempt)


def test_role_privileges_lists_what_a_role_reaches(cluster):
    assert cluster.sql("SELECT privilege, via, allowed FROM oauth.role_privileges('p_nested')") == \
        [("superuser", "p_admins", False)]
    got = {r[0] for r in cluster.sql("SELECT privilege FROM oauth.role_privileges('postgres')")}
    assert {"superuser", "replication", "bypassrls"} <= got


def test_allow_privileges_names_what_may_log_in(cluster, issuer):
    cluster.sql("ALTER SYSTEM SET pg_oauth.allow_privileges = 'pg_read_server_files, bypassrls'")
    cluster.reload()
    try:
        cluster.token_connect("p_reader", issuer.mint(sub="p_reader")).close()
        cluster.token_connect("p_bypass", issuer.mint(sub="p_bypass")).close()
        with pytest.raises(psycopg.OperationalError) as excinfo:
            cluster.token_connect("p_writer", issuer.mint(sub="p_writer")).close()
        assert refusal(excinfo) == "privilege_forbidden"
        assert cluster.sql("SELECT allowed FROM oauth.role_privileges('p_reader')") == [(True,)]
    finally:
        cluster.sql("ALTER SYSTEM RESET pg_oauth.allow_privileges")
        cluster.reload()
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        cluster.sql("ALTER SYSTEM SET pg_oauth.allow_privileges = 'everything'")


def test_nologin_role_refused_by_the_hook(cluster, issuer, refused):
    assert refused("p_nologin", issuer.mint(sub="p_nologin")) == "role_cannot_login"


# -- startup options: a token for alice never runs as p_target ------------------

SWITCHES = [
    "-c role=p_target",
    "-crole=p_target",
    "-Ecrole=p_target",
    "-Ec role=p_target",
    "-eEc role=p_target",
    "-E -c role=p_target",
    "-P -c Role=p_target",
    "--role=p_target",
    "--ROLE=p_target",
    "-c ROLE=p_target",
    "--session-authorization=p_target",
    "--session_authorization=p_target",
    "-c session_authorization=p_target",
    "-Fcsession-authorization=p_target",
    "-c application_name=a\\ b -c role=p_target",
    "stray -c role=p_target",
    "-c work_mem=1MB -crole=p_target",
]


@pytest.mark.parametrize("options", SWITCHES)
def test_every_switch_form_is_refused(cluster, issuer, refused, options):
    assert refused("alice", issuer.mint(sub="alice"), options=options) == \
        "startup_option_forbidden"


@pytest.mark.parametrize("options", ["-c work_mem=1MB", "-E", "-c search_path=public",
                                     "--application-name=roles"])
def test_harmless_switches_are_admitted(cluster, issuer, options):
    with cluster.token_connect("alice", issuer.mint(sub="alice"), options=options) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == \
            ("alice", "alice")


@pytest.mark.parametrize("setting", ["ALTER ROLE alice SET role = 'p_target'",
                                     "ALTER ROLE alice IN DATABASE roledb SET role = 'p_target'",
                                     "ALTER DATABASE roledb SET role = 'p_target'"])
def test_role_settings_that_change_the_role_end_the_session(cluster, issuer, setting):
    """No parser sees these: the admission check does, once every option is applied."""
    if not cluster.sql("SELECT 1 FROM pg_database WHERE datname = 'roledb'"):
        cluster.sql("CREATE DATABASE roledb")
    cluster.sql(setting)
    try:
        text = full_refusal(cluster, "alice", issuer.mint(sub="alice"), dbname="roledb")
        assert "reason=startup_option_forbidden" in text
    finally:
        cluster.sql("ALTER ROLE alice RESET ALL")
        cluster.sql("ALTER ROLE alice IN DATABASE roledb RESET ALL")
        cluster.sql("ALTER DATABASE roledb RESET ALL")
    # the same token shape logs in once the setting is gone
    cluster.token_connect("alice", issuer.mint(sub="alice"), dbname="roledb").close()


# -- replication -----------------------------------------------------------------

def test_replication_refused_before_the_token(cluster, issuer, refused):
    assert refused("p_repl", issuer.mint(sub="p_repl"), replication="database") == \
        "replication_forbidden"
    assert refused("alice", issuer.mint(sub="alice"), replication="database") == \
        "replication_forbidden"


def test_replication_when_allowed_is_ended_by_revoke(cluster, issuer):
    cluster.sql("ALTER SYSTEM SET pg_oauth.allow_privileges = 'replication'")
    cluster.reload()
    try:
        conn = psycopg.connect(cluster.token_dsn("p_repl", replication="database"),
                               password=issuer.mint(sub="p_repl", jti="repl-1"),
                               autocommit=True, connect_timeout=20)
        result = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK
        assert cluster.sql("SELECT count(*) FROM oauth.sessions WHERE role = 'p_repl'") == [(1,)]
        assert cluster.sql("SELECT oauth.revoke(token_id => 'repl-1')") == [(1,)]
        deadline = time.time() + 10
        while time.time() < deadline:
            if conn.pgconn.exec_(b"IDENTIFY_SYSTEM").status != psycopg.pq.ExecStatus.TUPLES_OK:
                break
            time.sleep(0.1)
        else:
            pytest.fail("walsender survived oauth.revoke")
        conn.close()
    finally:
        cluster.sql("ALTER SYSTEM RESET pg_oauth.allow_privileges")
        cluster.reload()


# -- the audit tells the truth -----------------------------------------------------

def wait_audit(cluster, where, params=(), timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = cluster.sql(f"SELECT outcome, reason, role, database FROM oauth.audit_log "
                           f"WHERE {where} ORDER BY id", params)
        if rows:
            return rows
        time.sleep(0.1)
    raise TimeoutError(where)


def test_names_from_the_startup_packet_stay_valid_text(cluster):
    sock = pgwire.tcp(cluster.port)
    mtype, payload = pgwire.start(sock, b"ev\xffil\\x", b"d\xc3\x28b\x01")
    sock.close()
    assert mtype == b"E" and b"ssl_required" in payload
    rows = wait_audit(cluster, "reason = 'ssl_required' AND role LIKE 'ev%%'")
    assert rows[-1][2:] == ("ev\\xffil\\\\x", "d\\xc3(b\\x01")
    assert cluster.sql("SELECT upper(role) FROM oauth.audit_log WHERE role LIKE 'ev%%'")[-1] == \
        ("EV\\XFFIL\\\\X",)
    # pg_dump / pg_restore of the audit table keeps every row
    count = cluster.sql("SELECT count(*) FROM oauth.audit_log")[0][0]
    dump = cluster.base / "audit.dump"
    env = {**os.environ, "PGPASSWORD": ADMIN_PASSWORD}
    conn = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", ADMIN_USER]
    subprocess.run(_as_server_user([str(PG_BIN / "pg_dump"), *conn, "-Fc", "-f", str(dump),
                                    "postgres"]), check=True, env=env, capture_output=True)
    cluster.sql("DROP DATABASE IF EXISTS restored")
    cluster.sql("CREATE DATABASE restored")
    cluster.sql("CREATE EXTENSION pg_oauth CASCADE", dbname="restored")
    out = subprocess.run(_as_server_user([str(PG_BIN / "pg_restore"), *conn, "-d", "restored",
                                          "--data-only", "-t", "audit_log", str(dump)]),
                         check=False, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    restored = cluster.sql("SELECT count(*) FROM oauth.audit_log", dbname="restored")[0][0]
    assert restored >= count
    cluster.sql("DROP DATABASE restored")


def test_audit_says_ok_only_when_postgresql_admits(cluster, issuer):
    # the database does not exist: PostgreSQL refuses after the hook
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        cluster.token_connect("alice", issuer.mint(sub="alice", jti="audit-nodb"),
                              dbname="no_such_db").close()
    rows = wait_audit(cluster, "database = 'no_such_db'")
    assert rows == [("refused", "unknown_database", "alice", "no_such_db")]
    # the role's connection limit: refused by PostgreSQL, audited as such
    cluster.sql("ALTER ROLE p_plain CONNECTION LIMIT 0")
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            cluster.token_connect("p_plain", issuer.mint(sub="p_plain"), dbname="template1").close()
        rows = wait_audit(cluster, "role = 'p_plain' AND database = 'template1'")
        assert rows == [("refused", "server_refused", "p_plain", "template1")]
    finally:
        cluster.sql("ALTER ROLE p_plain CONNECTION LIMIT -1")
    # and a real login is "ok"
    cluster.token_connect("p_plain", issuer.mint(sub="p_plain"), dbname="template1").close()
    rows = wait_audit(cluster, "role = 'p_plain' AND database = 'template1' AND outcome = 'ok'")
    assert rows == [("ok", "ok", "p_plain", "template1")]


def test_streaming_walsender_is_ended_when_its_token_expires(issuer):
    """A walsender that streams never waits for a command: "idle" expiry must still end it."""
    c = make_cluster(issuer, wal_level="logical", **{
        "pg_oauth.allow_privileges": "'replication'",
        "pg_oauth.session_expiry": "idle",
    })
    try:
        c.sql("CREATE ROLE p_stream LOGIN REPLICATION")
        c.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
              "SELECT issuer, 'sub', 'p_stream', 'p_stream' FROM oauth.issuers")
        c.sql("SELECT pg_create_logical_replication_slot('expiry_slot', 'test_decoding')")
        conn = psycopg.connect(c.token_dsn("p_stream", replication="database"),
                               password=issuer.mint(sub="p_stream", lifetime=4),
                               autocommit=True, connect_timeout=20)
        conn.pgconn.send_query(b"START_REPLICATION SLOT expiry_slot LOGICAL 0/0")
        deadline = time.time() + 10
        while time.time() < deadline and not c.sql(
                "SELECT 1 FROM pg_stat_replication WHERE usename = 'p_stream'"):
            time.sleep(0.1)
        assert c.sql("SELECT count(*) FROM oauth.sessions WHERE role = 'p_stream'") == [(1,)]
        deadline = time.time() + 20
        while time.time() < deadline and c.sql(
                "SELECT 1 FROM pg_stat_replication WHERE usename = 'p_stream'"):
            time.sleep(0.2)
        assert not c.sql("SELECT 1 FROM pg_stat_replication WHERE usename = 'p_stream'"), \
            "the streaming walsender outlived its token"
        conn.close()
    finally:
        c.stop()
