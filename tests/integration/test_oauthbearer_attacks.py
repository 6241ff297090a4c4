# ruff: noqa: F811  (bearer_client_bin: a fixture imported from test_oauthbearer)
"""Attacks on pg_oauth as PostgreSQL 18's OAuth validator (SASL OAUTHBEARER).

One cluster, logging everything a superuser can turn on (log_min_messages=debug5,
log_connections=all, auto_explain with bind parameters), and oauth lines for:

- database postgres: the dev issuer, scope "openid pg", delegate_ident_mapping=1
- database tenantdb: another issuer identifier ("<dev issuer>/tenant2"), which the dev
  issuer's tokens do not carry
- database wkdb: the dev issuer given as its discovery document's .well-known URI
- database mapdb: no delegation; pg_ident.conf map "wide" sends any identity to bob
"""

from __future__ import annotations

import re
import time

import pytest
from conftest import AUDIENCE, CLUSTERS, setup_oauth
from pgcluster import ADMIN_USER, Cluster, server_major
from test_oauthbearer import (  # noqa: F401
    BearerSession,
    bearer_client_bin,
    issuer,
    now,
    server_major,
    wait_audit,
)

pytestmark = pytest.mark.skipif(
    server_major() < 18, reason="the oauth pg_hba method needs PostgreSQL 18+"
)

SCOPE = "openid pg"

HBA = """\
local   all      {{admin}}                 scram-sha-256
host    all      {{admin}}  127.0.0.1/32   scram-sha-256
host    postgres all      127.0.0.1/32   oauth issuer="{issuer}" scope="{scope}" delegate_ident_mapping=1
host    tenantdb all      127.0.0.1/32   oauth issuer="{issuer}/tenant2" scope="{scope}" delegate_ident_mapping=1
host    wkdb     all      127.0.0.1/32   oauth issuer="{issuer}/.well-known/openid-configuration" scope="{scope}" delegate_ident_mapping=1
host    mapdb    all      127.0.0.1/32   oauth issuer="{issuer}" scope="{scope}" map=wide
"""

# everything that can write a statement, its parameters or its plan to the log
LOUD = {
    "oauth_validator_libraries": "'pg_oauth'",
    "shared_preload_libraries": "'pg_oauth,auto_explain'",
    "pg_oauth.rate_limit_failures": 0,
    "log_min_messages": "debug5",
    "log_connections": "'all'",
    "log_statement": "all",
    "log_min_duration_statement": 0,
    "log_parameter_max_length": -1,
    "log_parameter_max_length_on_error": -1,
    "auto_explain.log_min_duration": 0,
    "auto_explain.log_parameter_max_length": -1,
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_verbose": "on",
    "debug_print_plan": "on",
}


@pytest.fixture(scope="module")
def acluster(issuer):
    cluster = (
        Cluster(settings=LOUD, hba=HBA.format(issuer=issuer.issuer, scope=SCOPE))
        .init()
        .start()
    )
    CLUSTERS.append(cluster)
    (cluster.data / "pg_ident.conf").write_text("wide  /^.*$  bob\n")
    cluster.reload()
    setup_oauth(cluster, issuer.issuer)
    for db in ("tenantdb", "wkdb", "mapdb"):
        cluster.sql(f"CREATE DATABASE {db}")
    cluster.wait_for_workers()
    yield cluster
    cluster.stop()


def ci(
    cluster: Cluster, user: str, dbname: str, oauth_issuer: str, extra: str = ""
) -> str:
    return (
        f"host=127.0.0.1 port={cluster.port} dbname={dbname} user={user} "
        f"sslmode=require oauth_issuer={oauth_issuer} oauth_client_id=pg-oauth-tests "
        f"connect_timeout=30 {extra}"
    )


def bearer_query(binary, conninfo: str, token: str, sql: str = "SELECT current_user"):
    """The query's rows, or the ConnectionError of a refused login."""
    try:
        session = BearerSession(binary, conninfo, token)
    except ConnectionError as exc:
        return exc
    try:
        return session.query(sql)
    finally:
        session.close()


def reason_logged(cluster: Cluster, offset: int, user: str) -> str | None:
    deadline = time.time() + 10
    while time.time() < deadline:
        found = re.findall(
            rf'JWT authentication failed for user "{user}"\n(?:.*\n)*?.*DETAIL:  reason=(\w+)',
            cluster.log_text()[offset:],
        )
        if found:
            return found[0]
        time.sleep(0.1)
    return None


def secrets(token: str) -> list[str]:
    return [part for part in token.split(".")[1:] if len(part) >= 16]


# -- findings ----------------------------------------------------------------------


def test_token_of_another_issuer_is_refused_on_an_oauth_line(
    acluster, issuer, bearer_client_bin
):
    """An oauth line names one issuer (libpq's flow gets its token there; a pg_ident
    map is written for it).  pg_oauth accepted any issuer of oauth.issuers on any oauth
    line: the tenantdb line names "<issuer>/tenant2", and a token of <issuer> logged
    in there."""
    offset = len(acluster.log_text())
    token = issuer.mint(sub="alice")
    got = bearer_query(
        bearer_client_bin,
        ci(acluster, "alice", "tenantdb", issuer.issuer + "/tenant2"),
        token,
    )
    assert isinstance(got, ConnectionError), (
        f"logged in on another issuer's line: {got}"
    )
    assert reason_logged(acluster, offset, "alice") == "untrusted_issuer"


def test_well_known_issuer_line_still_admits_its_issuer(
    acluster, issuer, bearer_client_bin
):
    """The issuer option may be the discovery document's .well-known URI."""
    token = issuer.mint(sub="alice")
    got = bearer_query(
        bearer_client_bin, ci(acluster, "alice", "wkdb", issuer.issuer), token
    )
    assert got == ["alice"], got


def test_token_without_the_lines_scope_is_refused(acluster, issuer, bearer_client_bin):
    """PostgreSQL's validator guide: the validator must check that the token's scopes
    cover the line's (scope="openid pg" here), so that a token the user granted to
    another application of the same audience opens no session.  Found in review: a
    token for the right audience with scope "email" logged in.  Now every scope of the
    line but OpenID Connect's own must be in the token's "scope" (a space-separated
    string) or "scp" (a string or an array, as Entra ID and Okta write it)."""
    offset = len(acluster.log_text())
    for claims in ({"scope": "email"}, {"scope": "openid profile"}, {"scp": ["email"]},
                   {"scope": "pgx"}, {"scope": ""}):  # fmt: skip
        token = issuer.mint(claims, sub="alice")
        got = bearer_query(bearer_client_bin, ci(acluster, "alice", "postgres", issuer.issuer), token)
        assert isinstance(got, ConnectionError), f"{claims}: logged in without scope pg: {got}"
    assert reason_logged(acluster, offset, "alice") == "scope_missing"
    reasons = re.findall(r"DETAIL:  reason=(\w+)", acluster.log_text()[offset:])
    assert reasons == ["scope_missing"] * 5, reasons
    assert 'does not grant scope "pg" of the pg_hba.conf oauth line' in acluster.log_text()[offset:]
    for claims in ({"scope": "openid pg"}, {"scope": "pg"}, {"scp": ["x", "pg"]},
                   {"scp": "email pg"}):  # fmt: skip
        token = issuer.mint(claims, sub="alice")
        got = bearer_query(bearer_client_bin, ci(acluster, "alice", "postgres", issuer.issuer), token)
        assert got == ["alice"], f"{claims}: {got}"


# -- checked and sound -------------------------------------------------------------


def test_permissive_ident_map_cannot_widen_role_map(
    acluster, issuer, bearer_client_bin
):
    """delegate_ident_mapping=0 with a map sending every identity to bob: a token
    that role_map gives only alice is still refused as bob, by pg_oauth, and as alice
    by the map (audited role_not_allowed)."""
    since = now(acluster)
    offset = len(acluster.log_text())
    token = issuer.mint(sub="alice")
    got = bearer_query(bearer_client_bin, ci(acluster, "bob", "mapdb", issuer.issuer), token)
    assert isinstance(got, ConnectionError), got
    assert reason_logged(acluster, offset, "bob") == "role_not_allowed"
    got = bearer_query(
        bearer_client_bin, ci(acluster, "alice", "mapdb", issuer.issuer), token
    )
    assert isinstance(got, ConnectionError), got
    rows = wait_audit(acluster, "alice", since)
    assert rows[-1][:2] == ("refused", "role_not_allowed"), rows
    # the accepted-then-refused login left no live session behind
    assert acluster.sql("SELECT count(*) FROM oauth.sessions WHERE role = 'alice'") == [
        (0,)
    ]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("replication=database", "replication_forbidden"),
        ("options='-c session_authorization=su'", "startup_option_forbidden"),
        ("options='-Ecrole=su'", "startup_option_forbidden"),
    ],
)
def test_connection_checks_apply_to_bearer_logins(
    acluster, issuer, bearer_client_bin, extra, reason
):
    offset = len(acluster.log_text())
    token = issuer.mint(sub="alice")
    got = bearer_query(
        bearer_client_bin,
        ci(acluster, "alice", "postgres", issuer.issuer, extra),
        token,
    )
    assert isinstance(got, ConnectionError), got
    assert reason_logged(acluster, offset, "alice") == reason


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("abc.def.ghi~", "malformed"),  # PostgreSQL's b64token set, not base64url
        ("abc.def.ghi==", "malformed"),
        ("a" * 20000 + ".b.c", "too_large"),
        ("abc.def", "malformed"),
    ],
)
def test_odd_bearer_tokens_are_refused_and_audited(
    acluster, bearer_client_bin, issuer, token, reason
):
    since = now(acluster)
    offset = len(acluster.log_text())
    got = bearer_query(
        bearer_client_bin, ci(acluster, "carol", "postgres", issuer.issuer), token
    )
    assert isinstance(got, ConnectionError), got
    assert reason_logged(acluster, offset, "carol") == reason
    assert wait_audit(acluster, "carol", since)[-1][:2] == ("refused", reason)


def test_no_bearer_token_reaches_the_loud_log(acluster, issuer, bearer_client_bin):
    """log_min_messages=debug5, log_connections=all, auto_explain printing parameters:
    neither an accepted nor a refused bearer token shows in the server log."""
    good = issuer.mint(sub="alice")
    bad = issuer.mint(sub="alice", aud="someone-else")
    assert bearer_query(
        bearer_client_bin, ci(acluster, "alice", "postgres", issuer.issuer), good
    ) == ["alice"]
    assert isinstance(
        bearer_query(
            bearer_client_bin, ci(acluster, "alice", "postgres", issuer.issuer), bad
        ),
        ConnectionError,
    )
    log = acluster.log_text()
    assert "Query Parameters" in log or "DEBUG" in log  # the loud settings took
    assert not [s[:12] for t in (good, bad) for s in secrets(t) if s in log]
    assert AUDIENCE


def test_check_setup_sees_oauth_lines(acluster):
    """A careless DBA's oauth line without hostssl: the client sends its token before
    pg_oauth can refuse the connection (ssl_required), so a passive listener has it.
    oauth.check_setup() (and pg-oauth doctor) reported trust lines without TLS but
    nothing for oauth lines, and warned no_token_lines on a cluster whose token logins
    all go through oauth lines."""
    rows = acluster.sql("SELECT severity, check_name, finding FROM oauth.check_setup()")
    names = [r[1] for r in rows]
    assert "no_token_lines" not in names, rows
    flagged = [r for r in rows if r[1] == "oauth_without_tls"]
    assert len(flagged) == 4 and all(r[0] == "risk" for r in flagged), rows


# -- oauth lines that bypass or break pg_oauth (oauth.check_setup) ---------------------


ADMIN_LINES = "local all {admin} scram-sha-256\nhost all {admin} 127.0.0.1/32 scram-sha-256\n"


def oauth_line(issuer_url: str, dbname: str, options: str) -> str:
    return (f'hostssl {dbname} all 127.0.0.1/32 oauth issuer="{issuer_url}" '
            f'scope="{SCOPE}" {options}\n')


def set_validator_libraries(cluster: Cluster, *libraries: str) -> None:
    """oauth_validator_libraries (PGC_SIGHUP) as postgresql.conf would say it ("" for
    none: ALTER SYSTEM would write an empty list element), reloaded."""
    value = ", ".join(f'"{lib}"' if "$" in lib else lib for lib in libraries)
    cluster.settings["oauth_validator_libraries"] = f"'{value}'"
    cluster.write_config()
    cluster.reload()
    deadline = time.time() + 10
    while cluster.sql("SHOW oauth_validator_libraries")[0][0] != value:
        assert time.time() < deadline, "oauth_validator_libraries not reloaded"
        time.sleep(0.1)


def setup_rows(cluster: Cluster, hba: str) -> list[tuple[str, str, str]]:
    """check_setup's rows with `hba` as pg_hba.conf on disk (restored afterwards)."""
    path = cluster.data / "pg_hba.conf"
    before = path.read_text()
    path.write_text(ADMIN_LINES.format(admin=ADMIN_USER) + hba)
    try:
        return cluster.sql("SELECT severity, check_name, finding FROM oauth.check_setup()")
    finally:
        path.write_text(before)


def test_check_setup_names_oauth_lines_another_validator_decides(acluster, issuer):
    """With a second validator in oauth_validator_libraries, an oauth line can name it
    (or get it as the one library listed): its logins never reach pg_oauth, so no
    superuser refusal, role_map, revocation or audit row applies, and check_setup said
    nothing about it.  Lines PostgreSQL refuses (a validator not listed, none named
    while several are, an empty list) are its own hba_file_error."""
    iss = issuer.issuer
    try:
        set_validator_libraries(acluster, "pg_oauth", "other_validator", "$libdir/pg_oauth")
        rows = setup_rows(acluster, (
            oauth_line(iss, "postgres", "validator=pg_oauth delegate_ident_mapping=1")
            + oauth_line(iss, "otherdb", "validator=other_validator delegate_ident_mapping=1")
            + oauth_line(iss, "mapdb", 'validator="$libdir/pg_oauth" map=wide')))
        assert "hba_file_error" not in [r[1] for r in rows], rows
        flagged = [r for r in rows if r[1] == "oauth_line_other_validator"]
        assert [(r[0], r[2].split(":")[0]) for r in flagged] == [("risk", "pg_hba.conf line 4")]
        assert '"other_validator", not pg_oauth' in flagged[0][2]

        # no validator= on the line: the one library listed is its validator
        set_validator_libraries(acluster, "other_validator")
        rows = setup_rows(acluster, oauth_line(iss, "postgres", "delegate_ident_mapping=1"))
        assert [r[2].split(":")[0] for r in rows if r[1] == "oauth_line_other_validator"] == [
            "pg_hba.conf line 3"], rows

        # what PostgreSQL refuses to load is a line error, not another validator
        set_validator_libraries(acluster, "pg_oauth", "other_validator")
        rows = setup_rows(acluster, oauth_line(iss, "postgres", "delegate_ident_mapping=1"))
        assert [r[1] for r in rows if r[1].startswith("oauth_line")] == [], rows
        # PostgreSQL's own words for it: 18 and 19 put them differently
        words = ('requires argument "validator"' if server_major() < 19 else
                 'requires option "validator" to be set when "oauth_validator_libraries" '
                 "contains multiple options")
        assert any(r[1] == "hba_file_error" and words in r[2] for r in rows), rows
        set_validator_libraries(acluster)
        rows = setup_rows(acluster, oauth_line(iss, "postgres", "delegate_ident_mapping=1"))
        words = ("oauth_validator_libraries must be set" if server_major() < 19 else
                 'parameter "oauth_validator_libraries" must be set for authentication '
                 'method "oauth"')
        assert any(r[1] == "hba_file_error" and words in r[2] for r in rows), rows
    finally:
        set_validator_libraries(acluster, "pg_oauth")
    assert acluster.sql("SHOW oauth_validator_libraries") == [("pg_oauth",)]
    assert "oauth_line_other_validator" not in [
        r[1] for r in acluster.sql("SELECT severity, check_name FROM oauth.check_setup()")]


def test_check_setup_warns_of_an_oauth_line_without_map_or_delegation(
    acluster, issuer, bearer_client_bin
):
    """Without delegate_ident_mapping=1 and without map=, PostgreSQL admits a login only
    when the validator's identity ("<issuer> <subject>") equals the role name: the line
    refuses every token pg_oauth accepts, and check_setup did not say why."""
    rows = setup_rows(acluster, (
        oauth_line(issuer.issuer, "postgres", "delegate_ident_mapping=1")
        + oauth_line(issuer.issuer, "mapdb", "map=wide")
        + oauth_line(issuer.issuer, "nomapdb", "")))
    flagged = [r for r in rows if r[1] == "oauth_line_without_map"]
    assert [(r[0], r[2].split(":")[0]) for r in flagged] == [("warning", "pg_hba.conf line 5")]
    assert "delegate_ident_mapping=1" in flagged[0][2]
    # the live cluster's lines all delegate or map: nothing to warn of
    assert "oauth_line_without_map" not in [
        r[1] for r in acluster.sql("SELECT severity, check_name FROM oauth.check_setup()")]
    # and such a line does refuse a token pg_oauth accepts
    path = acluster.data / "pg_hba.conf"
    before = path.read_text()
    path.write_text(ADMIN_LINES.format(admin=ADMIN_USER)
                    + oauth_line(issuer.issuer, "postgres", ""))
    acluster.reload()
    try:
        offset = len(acluster.log_text())
        got = bearer_query(bearer_client_bin, ci(acluster, "alice", "postgres", issuer.issuer),
                      issuer.mint(sub="alice"))
        assert isinstance(got, ConnectionError), got
        assert ('provided user name (alice) and authenticated user name '
                f'({issuer.issuer} alice) do not match') in acluster.log_text()[offset:]
    finally:
        path.write_text(before)
        acluster.reload()


def test_check_setup_names_a_validator_that_is_not_preloaded(acluster, issuer, bearer_client_bin):
    """oauth_validator_libraries = 'pg_oauth' without pg_oauth in shared_preload_libraries:
    the validator loads in each backend without its workers and refuses every login
    (validator_unavailable).  check_setup only said trust lines were plain trust."""
    preload = acluster.settings["shared_preload_libraries"]
    acluster.restart({"shared_preload_libraries": "'auto_explain'"})
    try:
        rows = acluster.sql("SELECT severity, check_name, finding FROM oauth.check_setup()")
        assert [r[:2] for r in rows if r[1] == "validator_not_preloaded"] == [
            ("risk", "validator_not_preloaded")], rows
        offset = len(acluster.log_text())
        got = bearer_query(bearer_client_bin, ci(acluster, "alice", "postgres", issuer.issuer),
                      issuer.mint(sub="alice"))
        assert isinstance(got, ConnectionError), got
        assert reason_logged(acluster, offset, "alice") == "validator_unavailable"
    finally:
        acluster.restart({"shared_preload_libraries": preload})
        acluster.wait_for_workers()
    assert "validator_not_preloaded" not in [
        r[1] for r in acluster.sql("SELECT severity, check_name FROM oauth.check_setup()")]
