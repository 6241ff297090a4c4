"""A token login that lands on a password line (no TLS, or the trust line below a
broader password line) reads "password authentication failed", as any password login
would; the server log says which line it matched and what to do.  Never for a role
that simply typed its password wrong, never for a client that hung up to prompt.

The client reads PostgreSQL's own message too, with pg_oauth's advice added as DETAIL
and HINT for a role a trust line names, as far as pg_oauth.client_detail allows: at
`none` its error is byte for byte what any failed password login reads."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator

import pgwire
import psycopg
import pytest
from conftest import CLUSTERS
from pgcluster import Cluster

# line numbers matter: the log names them
HBA = """\
local   all   {{admin}}                   scram-sha-256
host    all   {{admin}}     127.0.0.1/32  scram-sha-256
host    all   late          127.0.0.1/32  {method}
hostssl all   +oauth_users  127.0.0.1/32  trust
hostssl all   late          127.0.0.1/32  trust
host    all   all           127.0.0.1/32  {method}
"""
METHODS = ["scram-sha-256", "md5", "password"]


@pytest.fixture(scope="module")
def fcluster() -> Iterator[Cluster]:
    c = Cluster(settings={"pg_oauth.rate_limit_failures": 0},
                hba=HBA.format(method="scram-sha-256")).init().start()
    CLUSTERS.append(c)
    c.sql("""
        CREATE ROLE oauth_users NOLOGIN;
        CREATE ROLE alice LOGIN IN ROLE oauth_users;          -- a token role
        CREATE ROLE late LOGIN;                               -- its trust line comes too late
        CREATE ROLE keen LOGIN PASSWORD 'keen-secret' IN ROLE oauth_users;
        CREATE ROLE carol LOGIN PASSWORD 'carol-secret';      -- a password user
        CREATE ROLE dave LOGIN;                               -- on no trust line
    """)
    yield c
    c.stop()


def use_method(cluster: Cluster, method: str, client_detail: str = "reason") -> None:
    cluster.hba = HBA.format(method=method)
    cluster.settings["pg_oauth.client_detail"] = client_detail
    cluster.write_config()
    cluster.reload()


def login_fails(cluster: Cluster, user: str, password: str | None, sslmode: str) -> str:
    """The client's error; the server's log lines about this login are written by then."""
    with pytest.raises(psycopg.OperationalError) as excinfo:
        psycopg.connect(cluster.token_dsn(user, sslmode=sslmode), password=password,
                        connect_timeout=20).close()
    return str(excinfo.value)


def pg_oauth_lines(cluster: Cluster, user: str) -> list[str]:
    return [line.split("LOG:  ", 1)[1] for line in cluster.log_text().splitlines()
            if f'pg_oauth: login of "{user}"' in line]


def expected(user: str, line: int, method: str, why: str) -> str:
    return (f'pg_oauth: login of "{user}" matched pg_hba.conf line {line} (host, {method}), '
            f"not a pg_oauth trust line; {why}")


@pytest.mark.parametrize("method", METHODS)
def test_token_login_without_tls_is_pointed_at_tls(fcluster, issuer, method):
    use_method(fcluster, method)
    before = len(pg_oauth_lines(fcluster, "alice"))
    token = issuer.mint(sub="alice")
    error = login_fails(fcluster, "alice", token, "disable")
    assert 'password authentication failed for user "alice"' in error
    assert pg_oauth_lines(fcluster, "alice")[before:] == [expected(
        "alice", 6, method, '"alice" has no password: if this was a token login, '
        "connect with TLS (sslmode=verify-full): trust line 4 is hostssl")]
    assert token not in fcluster.log_text()


@pytest.mark.parametrize("method", METHODS)
def test_trust_line_below_a_password_line_is_pointed_at_the_order(fcluster, issuer, method):
    use_method(fcluster, method)
    before = len(pg_oauth_lines(fcluster, "late"))
    login_fails(fcluster, "late", issuer.mint(sub="late"), "require")
    login_fails(fcluster, "late", issuer.mint(sub="late"), "disable")
    no_password = '"late" has no password: if this was a token login, '
    assert pg_oauth_lines(fcluster, "late")[before:] == [
        expected("late", 3, method, no_password + "move trust line 5 above line 3"),
        expected("late", 3, method, no_password + "connect with TLS (sslmode=verify-full) "
                                                  "and move trust line 5 above line 3")]


def test_a_token_role_with_a_password_is_named_by_its_group(fcluster, issuer):
    use_method(fcluster, "scram-sha-256")
    before = len(pg_oauth_lines(fcluster, "keen"))
    login_fails(fcluster, "keen", issuer.mint(sub="keen"), "disable")
    assert pg_oauth_lines(fcluster, "keen")[before:] == [expected(
        "keen", 6, "scram-sha-256", '"keen" is a member of "oauth_users", which trust line '
        "4 names: if this was a token login, connect with TLS (sslmode=verify-full): "
        "trust line 4 is hostssl")]


def test_a_role_on_no_trust_line_without_a_password(fcluster, issuer):
    use_method(fcluster, "scram-sha-256")
    before = len(pg_oauth_lines(fcluster, "dave"))
    login_fails(fcluster, "dave", issuer.mint(sub="dave"), "require")
    assert pg_oauth_lines(fcluster, "dave")[before:] == [expected(
        "dave", 6, "scram-sha-256", '"dave" has no password: if this was a token login, '
        'no trust line admits "dave" (add it to the group the token lines name)')]


@pytest.mark.parametrize("method", METHODS)
def test_nothing_for_a_wrong_password_or_a_hang_up(fcluster, method):
    use_method(fcluster, method)
    before = fcluster.log_text()
    error = login_fails(fcluster, "carol", "not-her-password", "disable")
    assert 'password authentication failed for user "carol"' in error
    # psql's first try: no password at hand, it hangs up to prompt for one
    login_fails(fcluster, "alice", None, "disable")
    new = fcluster.log_text()[len(before):]
    assert 'password authentication failed for user "carol"' in new
    # pg_oauth says nothing (PostgreSQL 18 names the matched pg_hba.conf line, whose path,
    # a test directory, holds "pg_oauth-": only pg_oauth's own "pg_oauth:" lines count)
    assert "pg_oauth:" not in new
    assert "not-her-password" not in new
    with psycopg.connect(fcluster.token_dsn("carol", sslmode="disable"),
                         password="carol-secret", connect_timeout=20) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("carol",)


# -- what the client reads ------------------------------------------------------

ADVICE_TLS = "HINT:  For a token login, connect with TLS (sslmode=verify-full)."
ADVICE_ORDER = ("HINT:  For a token login, the DBA moves pg_oauth's trust line above the "
                "pg_hba.conf line this login matched (the server log names both).")


def psql_fails(cluster: Cluster, user: str, password: str, sslmode: str) -> str:
    """psql's stderr for a login that fails."""
    done = subprocess.run(
        ["psql", "-XAtq", cluster.token_dsn(user, sslmode=sslmode), "-c", "SELECT 1"],
        env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "20"},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0, done
    return done.stderr


def raw_password_failure(cluster: Cluster, user: str, password: str) -> dict[str, str]:
    """The fields of the ErrorResponse to a cleartext password (the "password" method),
    without TLS: everything a client can read, with the user's name made generic."""
    with pgwire.tcp(cluster.port) as sock:
        mtype, body = pgwire.start(sock, user)
        assert (mtype, body) == (b"R", struct.pack("!I", 3)), (mtype, body)
        sock.sendall(pgwire.password_message(password))
        mtype, body = pgwire.read_message(sock)
    assert mtype == b"E", (mtype, body)
    fields = pgwire.error_fields(body)
    return {code: text.replace(f'"{user}"', '"USER"') for code, text in fields.items()}


def test_the_client_reads_the_advice_at_the_default_level(fcluster, issuer):
    use_method(fcluster, "scram-sha-256")
    token = issuer.mint(sub="alice")
    error = login_fails(fcluster, "alice", token, "disable")
    assert 'FATAL:  password authentication failed for user "alice"' in error
    assert "DETAIL:  reason=ssl_required\n" in error, error
    assert ADVICE_TLS in error, error
    # the reason level names no line and never says whether the role has a password
    assert "line" not in error.split("DETAIL:", 1)[1].replace("trust line", "")
    assert "password" not in error.split("DETAIL:", 1)[1]
    assert token not in error
    late = login_fails(fcluster, "late", issuer.mint(sub="late"), "require")
    assert 'password authentication failed for user "late"' in late
    assert "DETAIL:  reason=hba_password_line\n" in late and ADVICE_ORDER in late, late
    # psql prints the same
    out = psql_fails(fcluster, "alice", issuer.mint(sub="alice"), "disable")
    assert 'FATAL:  password authentication failed for user "alice"' in out, out
    assert "DETAIL:  reason=ssl_required" in out and ADVICE_TLS in out, out


def test_the_reason_is_postgresqls_own_error_with_advice(fcluster, issuer):
    use_method(fcluster, "password")
    alice = raw_password_failure(fcluster, "alice", issuer.mint(sub="alice"))
    carol = raw_password_failure(fcluster, "carol", "not-her-password")
    # same severity, SQLSTATE 28P01, message and source position as PostgreSQL's own
    assert alice.pop("D") == "reason=ssl_required"
    assert alice.pop("H") == ADVICE_TLS.removeprefix("HINT:  ")
    assert alice == carol and carol["C"] == "28P01", (alice, carol)


def test_full_detail_names_the_lines(fcluster, issuer):
    use_method(fcluster, "scram-sha-256", client_detail="full")
    error = login_fails(fcluster, "keen", issuer.mint(sub="keen"), "disable")
    assert 'password authentication failed for user "keen"' in error
    assert ("DETAIL:  reason=ssl_required: the login matched pg_hba.conf line 6 (host, "
            'scram-sha-256), not a pg_oauth trust line; "keen" is a member of "oauth_users", '
            "which trust line 4 names: connect with TLS (sslmode=verify-full): trust line 4 "
            "is hostssl\n") in error, error
    assert ADVICE_TLS in error, error
    late = login_fails(fcluster, "late", issuer.mint(sub="late"), "disable")
    assert ("DETAIL:  reason=hba_password_line: the login matched pg_hba.conf line 3 (host, "
            'scram-sha-256), not a pg_oauth trust line; trust line 5 names "late": connect '
            "with TLS (sslmode=verify-full) and move trust line 5 above line 3\n") in late, late
    assert "has no password" not in late


@pytest.mark.parametrize("detail", ["none", "reason", "full"])
def test_other_roles_read_postgresqls_own_error(fcluster, issuer, detail):
    """Not a token role: carol (a password), dave (no password, but no trust line names
    him: pg_oauth cannot tell him from a role that is just missing its password), a role
    that does not exist.  Their errors are PostgreSQL's, and the same."""
    use_method(fcluster, "password", client_detail=detail)
    carol = raw_password_failure(fcluster, "carol", "not-her-password")
    assert set(carol) == {"S", "V", "C", "M", "F", "L", "R"}, carol
    assert raw_password_failure(fcluster, "dave", issuer.mint(sub="dave")) == carol
    assert raw_password_failure(fcluster, "nobody", "whatever") == carol
    error = login_fails(fcluster, "carol", "not-her-password", "disable")
    assert "DETAIL" not in error and "HINT" not in error, error


def test_none_is_exactly_postgresqls_own_error(fcluster, issuer):
    use_method(fcluster, "password", client_detail="none")
    carol = raw_password_failure(fcluster, "carol", "not-her-password")
    for user in ("alice", "late", "keen"):
        assert raw_password_failure(fcluster, user, issuer.mint(sub=user)) == carol, user
    # libpq's and psql's words too, the name aside
    use_method(fcluster, "scram-sha-256", client_detail="none")
    alice = login_fails(fcluster, "alice", issuer.mint(sub="alice"), "disable")
    assert alice.replace('"alice"', '"carol"') == login_fails(
        fcluster, "carol", "not-her-password", "disable")
    out = psql_fails(fcluster, "alice", issuer.mint(sub="alice"), "disable")
    assert out.replace('"alice"', '"carol"') == psql_fails(
        fcluster, "carol", "not-her-password", "disable")
    # the server log still says what to do
    assert pg_oauth_lines(fcluster, "alice")[-1].endswith(
        "connect with TLS (sslmode=verify-full): trust line 4 is hostssl")


def test_the_server_log_keeps_postgresqls_detail(fcluster, issuer):
    use_method(fcluster, "scram-sha-256")
    before = len(fcluster.log_text())
    login_fails(fcluster, "alice", issuer.mint(sub="alice"), "disable")
    new = fcluster.log_text()[before:]
    # PostgreSQL's own FATAL, with its DETAIL for the log: the method's words, the line
    assert 'FATAL:  password authentication failed for user "alice"' in new, new
    assert 'DETAIL:  User "alice" has no password assigned.' in new, new
    assert "Connection matched" in new and "line 6:" in new, new
    assert "DETAIL:  reason=" not in new, new
