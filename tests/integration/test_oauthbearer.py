"""OAUTHBEARER (PostgreSQL 18+): pg_oauth as the validator of the native "oauth" method.

One cluster serves both kinds of client from one policy: libpq 18's built-in device flow
(psql, against the dev issuer's device authorization endpoints) and a client handing its
token over through libpq's PQAUTHDATA_OAUTH_BEARER_TOKEN hook log in on an oauth line of
database postgres; token-as-password clients log in on a trust line of database pwdb.
Same issuers, role_map, revocations, role policy, audit, claims and session ending.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import AUDIENCE, CLUSTERS, setup_oauth
from pgcluster import PG_BIN, Cluster, pg_config, server_major

# psql and libpq with OAuth support: the server's own (18+), unless told otherwise
CLIENT_BIN = Path(os.environ.get("PG_OAUTH_CLIENT_BIN", PG_BIN))
SCOPE = "openid pg"


class ScopedIssuer:
    """The suite's issuer, whose tokens grant "pg", the scope the oauth lines ask for
    beside OpenID Connect's own (a test's own "scope" or "scp" claim wins)."""

    def __init__(self, inner) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._inner, name, value)

    def mint(self, claims: dict | None = None, **kw) -> str:
        claims = dict(claims or {})
        if "scope" not in claims and "scp" not in claims:
            claims["scope"] = "pg"
        return self._inner.mint(claims, **kw)


@pytest.fixture(scope="module")
def issuer(issuer):
    return ScopedIssuer(issuer)


pytestmark = pytest.mark.skipif(
    server_major() < 18,
    reason=f"the oauth pg_hba method and validator modules need PostgreSQL 18+; "
    f"the server under test ({PG_BIN}) is older (make PG=18 test)",
)

HBA = """\
local   all   {{admin}}                 scram-sha-256
host    all   {{admin}}  127.0.0.1/32   scram-sha-256
# token as password (pg_oauth's trust-line hook), database pwdb only
hostssl pwdb  all      127.0.0.1/32   trust
# OAUTHBEARER, validated by pg_oauth: role_map decides the role
host    all   all      127.0.0.1/32   oauth issuer="{issuer}" scope="{scope}" delegate_ident_mapping=1
"""

# the client that hands over its own token: libpq's bearer-token hook, then one query
# per line of stdin, each answered with its rows ("a|b") and a "." line
CLIENT_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "libpq-fe.h"

static int
bearer_hook(PGauthData type, PGconn *conn, void *data)
{
	PGoauthBearerRequest *request = data;

	if (type != PQAUTHDATA_OAUTH_BEARER_TOKEN)
		return PQdefaultAuthDataHook(type, conn, data);
	request->token = getenv("BEARER_TOKEN");
	return 1;
}

static void
print_flat(const char *prefix, const char *msg)
{
	fputs(prefix, stdout);
	for (; *msg; msg++)
		putchar(*msg == '\n' ? ' ' : *msg);
	putchar('\n');
}

int
main(int argc, char **argv)
{
	char		line[8192];
	PGconn	   *conn;

	PQsetAuthDataHook(bearer_hook);
	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fputs(PQerrorMessage(conn), stderr);
		return 1;
	}
	printf("pid=%d\n", PQbackendPID(conn));
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
	{
		PGresult   *res = PQexec(conn, line);

		if (PQresultStatus(res) == PGRES_TUPLES_OK)
			for (int r = 0; r < PQntuples(res); r++)
				for (int c = 0; c < PQnfields(res); c++)
					printf("%s%s", PQgetvalue(res, r, c), c + 1 < PQnfields(res) ? "|" : "\n");
		else if (PQresultStatus(res) != PGRES_COMMAND_OK)
			print_flat("error: ", PQerrorMessage(conn));
		printf(".\n");
		fflush(stdout);
		PQclear(res);
	}
	PQfinish(conn);
	return 0;
}
"""


@pytest.fixture(scope="module")
def bearer_client_bin() -> Iterator[Path]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the bearer-token client")
    workdir = Path(tempfile.mkdtemp(prefix="pg_oauth-bearer-client-"))
    (workdir / "bearer_client.c").write_text(CLIENT_C)
    include = pg_config("--includedir", CLIENT_BIN)
    libdir = pg_config("--libdir", CLIENT_BIN)
    subprocess.run(
        [
            "gcc",
            "-std=c99",
            "-Wall",
            "-o",
            str(workdir / "bearer_client"),
            str(workdir / "bearer_client.c"),
            f"-I{include}",
            f"-L{libdir}",
            f"-Wl,-rpath,{libdir}",
            "-lpq",
        ],
        check=True,
    )
    os.chmod(workdir, 0o755)
    yield workdir / "bearer_client"
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def bcluster(issuer) -> Iterator[Cluster]:
    issuer.device_audience = AUDIENCE
    issuer.device_interval = 1
    cluster = (
        Cluster(
            settings={
                "oauth_validator_libraries": "'pg_oauth'",
                "pg_oauth.rate_limit_failures": 0,
            },
            hba=HBA.format(issuer=issuer.issuer, scope=SCOPE),
        )
        .init()
        .start()
    )
    CLUSTERS.append(cluster)
    setup_oauth(cluster, issuer.issuer)
    cluster.sql("CREATE DATABASE pwdb")
    cluster.sql("CREATE EXTENSION pg_oauth CASCADE", dbname="pwdb")
    cluster.wait_for_workers()
    yield cluster
    cluster.stop()


class BearerSession:
    """A session of the bearer-token client: its backend pid, then queries on stdin."""

    def __init__(self, binary: Path, conninfo: str, token: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary), conninfo],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "BEARER_TOKEN": token, "PGOAUTHDEBUG": "UNSAFE"},
        )  # http issuer
        first = self.proc.stdout.readline()
        if not first.startswith("pid="):
            self.proc.wait(timeout=30)
            raise ConnectionError(self.proc.stderr.read())
        self.pid = int(first[4:])

    def query(self, sql: str) -> list[str]:
        self.proc.stdin.write(sql + "\n")
        self.proc.stdin.flush()
        lines = []
        while (line := self.proc.stdout.readline()) not in (".\n", ""):
            lines.append(line.rstrip("\n"))
        return lines

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def conninfo(
    cluster: Cluster,
    issuer,
    user: str,
    dbname: str = "postgres",
    sslmode: str = "require",
) -> str:
    return (
        f"host=127.0.0.1 port={cluster.port} dbname={dbname} user={user} "
        f"sslmode={sslmode} oauth_issuer={issuer.issuer} oauth_client_id=pg-oauth-tests "
        f"connect_timeout=30"
    )


def bearer_login(
    binary: Path, cluster: Cluster, issuer, user: str, token: str, sql: str, **kw
) -> list[str]:
    session = BearerSession(binary, conninfo(cluster, issuer, user, **kw), token)
    try:
        return session.query(sql)
    finally:
        session.close()


def refused_bearer(
    binary: Path, cluster: Cluster, issuer, user: str, token: str, **kw
) -> tuple[str, str]:
    """(the client's error, the reason= code the server log gives for it)."""
    offset = len(cluster.log_text())
    with pytest.raises(ConnectionError) as excinfo:
        bearer_login(binary, cluster, issuer, user, token, "SELECT 1", **kw)
    deadline = time.time() + 10
    while time.time() < deadline:
        found = re.findall(
            r'JWT authentication failed for user "([^"]*)"\n.*DETAIL:  reason=(\w+)',
            cluster.log_text()[offset:],
        )
        if found:
            assert found == [(user, found[0][1])], found
            return str(excinfo.value), found[0][1]
        time.sleep(0.1)
    raise AssertionError(f"no refusal logged; client said: {excinfo.value}")


def wait_audit(
    cluster: Cluster, role: str, since: str, timeout: float = 15.0
) -> list[tuple]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = cluster.sql(
            "SELECT outcome, reason, subject, database FROM oauth.audit_log "
            "WHERE role = %s AND at >= %s ORDER BY id",
            (role, since),
        )
        if rows:
            return rows
        time.sleep(0.1)
    raise TimeoutError(f"no audit row for {role}")


def now(cluster: Cluster) -> str:
    return str(cluster.sql("SELECT clock_timestamp()")[0][0])


def approve(issuer, user_code: str, sub: str) -> None:
    data = urllib.parse.urlencode({"user_code": user_code, "sub": sub}).encode()
    with urllib.request.urlopen(
        issuer.issuer + "/device/approve", data=data, timeout=5
    ) as r:
        assert r.status == 200


# -- libpq's built-in device flow --------------------------------------------------


def test_psql_logs_in_with_the_device_flow(bcluster, issuer):
    since = now(bcluster)
    proc = subprocess.Popen(
        [
            str(CLIENT_BIN / "psql"),
            "-XAt",
            conninfo(bcluster, issuer, "alice"),
            "-c",
            (
                "SELECT current_user, oauth.claim('sub'), oauth.claim('scope'), "
                "oauth.claim('client_id')"
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGOAUTHDEBUG": "UNSAFE"},
    )
    try:
        prompt = ""
        for line in proc.stderr:
            prompt += line
            match = re.search(r"Visit (\S+) and enter the code: (\S+)", line)
            if match:
                break
        else:
            pytest.fail(f"psql gave no device prompt: {prompt}")
        assert match.group(1) == issuer.issuer + "/device"
        approve(issuer, match.group(2), "alice")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, prompt + err
    assert out.strip() == f"alice|alice|{SCOPE}|pg-oauth-tests"
    assert wait_audit(bcluster, "alice", since) == [("ok", "ok", "alice", "postgres")]


# -- a client handing over its own token ---------------------------------------------


def test_client_token_logs_in_with_claims_and_identity(
    bcluster, issuer, bearer_client_bin
):
    token = issuer.mint({"email": "bob@example.com"}, sub="bob")
    rows = bearer_login(
        bearer_client_bin,
        bcluster,
        issuer,
        "bob",
        token,
        "SELECT current_user, oauth.claim('email'), system_user, "
        "(SELECT subject FROM oauth.session())",
    )
    assert rows == [f"bob|bob@example.com|oauth:{issuer.issuer} bob|bob"]


def test_one_policy_for_both_kinds_of_client(bcluster, issuer, bearer_client_bin):
    token = issuer.mint(sub="alice")
    # the same token as a password, on the trust line of pwdb
    with bcluster.token_connect("alice", token, dbname="pwdb") as conn:
        assert conn.execute("SELECT oauth.claim('sub')").fetchone() == ("alice",)
    assert bearer_login(
        bearer_client_bin, bcluster, issuer, "alice", token, "SELECT oauth.claim('sub')"
    ) == ["alice"]
    # a rule limited to pwdb gives carol nothing on the oauth line
    bcluster.sql(
        "INSERT INTO oauth.role_map (issuer, claim, pattern, role, databases) "
        "VALUES (%s, 'sub', 'carol', 'carol', '{pwdb}')",
        (issuer.issuer,),
    )
    try:
        carol = issuer.mint(sub="carol")
        with bcluster.token_connect("carol", carol, dbname="pwdb") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("carol",)
        _, reason = refused_bearer(bearer_client_bin, bcluster, issuer, "carol", carol)
        assert reason == "database_not_allowed"
    finally:
        bcluster.sql("DELETE FROM oauth.role_map WHERE role = 'carol'")


@pytest.mark.parametrize(
    ("user", "mint", "reason"),
    [
        ("alice", {"sub": "alice", "aud": "someone-else"}, "audience_mismatch"),
        ("carol", {"sub": "carol"}, "role_not_allowed"),
        ("su", {"sub": "su"}, "superuser_forbidden"),
        ("alice", {"sub": "alice", "lifetime": -120}, "expired"),
    ],
)
def test_refusals_log_and_audit_the_password_login_reason(
    bcluster, issuer, bearer_client_bin, user, mint, reason
):
    since = now(bcluster)
    token = issuer.mint(**mint)
    client_error, logged = refused_bearer(
        bearer_client_bin, bcluster, issuer, user, token
    )
    assert logged == reason
    assert "OAuth bearer authentication failed" in client_error, client_error
    assert token not in bcluster.log_text()
    assert wait_audit(bcluster, user, since)[-1][:2] == ("refused", reason)
    # the same token as a password is refused with the same code
    with pytest.raises(psycopg.OperationalError) as excinfo:
        bcluster.token_connect(user, token, dbname="pwdb").close()
    assert f"reason={reason}" in str(excinfo.value)


def test_startup_options_and_tls_checked_before_the_token(
    bcluster, issuer, bearer_client_bin
):
    token = issuer.mint(sub="alice")
    _, reason = refused_bearer(
        bearer_client_bin,
        bcluster,
        issuer,
        "alice",
        token,
        dbname="postgres options='-c role=bob'",
    )
    assert reason == "startup_option_forbidden"
    _, reason = refused_bearer(
        bearer_client_bin, bcluster, issuer, "alice", token, sslmode="disable"
    )
    assert reason == "ssl_required"


def test_revocation_ends_live_bearer_session_and_refuses_the_next(
    bcluster, issuer, bearer_client_bin
):
    session = BearerSession(
        bearer_client_bin, conninfo(bcluster, issuer, "bob"), issuer.mint(sub="bob")
    )
    password = bcluster.token_connect("bob", issuer.mint(sub="bob"), dbname="pwdb")
    try:
        assert session.query("SELECT current_user") == ["bob"]
        pids = {
            r[0]
            for r in bcluster.sql("SELECT pid FROM oauth.sessions WHERE role = 'bob'")
        }
        assert session.pid in pids and password.info.backend_pid in pids
        assert bcluster.sql("SELECT oauth.revoke(subject => 'bob')") == [(2,)]
        ended = session.query("SELECT 1")
        assert ended == [] or ended[0].startswith("error:"), ended
        with pytest.raises(psycopg.OperationalError):
            password.execute("SELECT 1")
        _, reason = refused_bearer(
            bearer_client_bin, bcluster, issuer, "bob", issuer.mint(sub="bob")
        )
        assert reason == "revoked"
    finally:
        session.close()
        password.close()
        bcluster.sql("DELETE FROM oauth.revocations WHERE subject = 'bob'")


def test_expired_bearer_session_is_ended(bcluster, issuer, bearer_client_bin):
    bcluster.sql("ALTER SYSTEM SET pg_oauth.session_expiry = 'always'")
    bcluster.reload()
    try:
        session = BearerSession(
            bearer_client_bin,
            conninfo(bcluster, issuer, "alice"),
            issuer.mint(sub="alice", lifetime=3),
        )
        try:
            out = session.query("SELECT pg_sleep(30)")
            assert out and "session ended: its token expired" in out[0], out
        finally:
            session.close()
    finally:
        bcluster.sql("ALTER SYSTEM RESET pg_oauth.session_expiry")
        bcluster.reload()
