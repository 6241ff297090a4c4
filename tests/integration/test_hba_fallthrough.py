"""A token login that lands on a password line (no TLS, or the trust line below a
broader password line) reads "password authentication failed", as any password login
would; the server log says which line it matched and what to do.  Never for a role
that simply typed its password wrong, never for a client that hung up to prompt."""

from __future__ import annotations

from collections.abc import Iterator

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


def use_method(cluster: Cluster, method: str) -> None:
    cluster.hba = HBA.format(method=method)
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
