"""Pools under pg_oauth.session_expiry = always (a session ends when its token expires),
with an oidc-provider whose tokens live 20 s; and the advice pg-oauth gives when a token
login lands on a password line of pg_hba.conf, or the token is opaque. The cluster here
has token lines for +oauth_users over TLS only, a password line for everything else,
and pg_oauth.client_detail = full."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from client_support import (
    CLEAN_ENV,
    CLIENT_DIR,
    NODE_DIR,
    OTHER_RESOURCE,
    RESOURCE,
    ROOT,
    SECRETS,
    IdP,
    _clients,
    _generate_private_key,
    _setup_database,
)
from pgcluster import PG_BIN, Cluster

TTL = 20  # seconds: the short IdP's access tokens
RUN_FOR = 3.5 * TTL  # every pool serves queries over more than three token lifetimes

HBA = """\
local   all   {admin}                 scram-sha-256
host    all   {admin}  127.0.0.1/32   scram-sha-256
hostssl all   +oauth_users 127.0.0.1/32 trust
host    all   all      127.0.0.1/32   scram-sha-256
"""


@pytest.fixture(scope="module")
def short_idp(workdir: Path) -> Iterator[IdP]:
    key_file = workdir / "short-idp.pem"
    config = {"resources": [RESOURCE, OTHER_RESOURCE], "access_token_ttl": TTL,
              "device_interval": 1, "clients": _clients(_generate_private_key(key_file))}
    config_file = workdir / "short-idp.json"
    config_file.write_text(json.dumps(config))
    log = workdir / "short-idp.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([shutil.which("node") or "node", str(NODE_DIR / "oidc_idp.mjs"),
                                 str(config_file)], stdout=subprocess.PIPE, stderr=logf,
                                cwd=NODE_DIR)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, log.read_text()
    yield IdP(issuer=json.loads(line)["issuer"], private_key_file=key_file, process=proc,
              log=log)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def expiry_cluster(short_idp: IdP) -> Iterator[Cluster]:
    c = Cluster(hba=HBA, settings={"pg_oauth.rate_limit_failures": 0,
                                   "pg_oauth.session_expiry": "always",
                                   "pg_oauth.client_detail": "full"}).init().start()
    try:
        _setup_database(c, short_idp.issuer)
        c.sql("CREATE ROLE outsider LOGIN")  # a login role the token lines do not admit
        c.wait_for_workers()
        yield c
    finally:
        log = c.log_text()
        c.destroy()
        assert not [t for t in USED_TOKENS if t in log], "a token appeared in the server log"


USED_TOKENS: list[str] = []


def _config(idp: IdP, main_issuer: str, tmp: Path) -> str:
    cert = tmp / "server.crt"
    return f"""
[profile.short]
flow = "client_credentials"
issuer = "{idp.issuer}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{RESOURCE}"
host = "localhost"
user = "svc"
dbname = "postgres"
sslrootcert = "{cert}"

[profile.wrong-host]
flow = "client_credentials"
issuer = "{idp.issuer}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{RESOURCE}"
host = "db.invalid"
user = "svc"
dbname = "postgres"
sslrootcert = "{cert}"

[profile.other-db]
flow = "client_credentials"
issuer = "{idp.issuer}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{OTHER_RESOURCE}"
host = "localhost"
user = "svc"
dbname = "postgres"
sslrootcert = "{cert}"

[profile.elsewhere]
flow = "client_credentials"
issuer = "{main_issuer}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{RESOURCE}"
host = "localhost"
user = "svc"
dbname = "postgres"
sslrootcert = "{cert}"

[profile.opaque]
flow = "command"
command = ["{sys.executable}", "-c", "print('opaque-access-token-4f2a9c')"]
host = "localhost"
user = "svc"
dbname = "postgres"
sslrootcert = "{cert}"
"""


@pytest.fixture
def env(tmp_path: Path, short_idp: IdP, idp: IdP, expiry_cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A machine with only the profiles: no PG* variables at all (so no PGSSLMODE)."""
    shutil.copy(expiry_cluster.base / "server.crt", tmp_path / "server.crt")
    config = tmp_path / "config.toml"
    config.write_text(_config(short_idp, idp.issuer, tmp_path))
    values = {k: v for k, v in os.environ.items()
              if k not in CLEAN_ENV and not k.startswith(("PG_OAUTH_", "PG"))}
    values.update({
        "PG_OAUTH_CONFIG": str(config),
        "PG_OAUTH_CACHE_DIR": str(tmp_path / "cache"),
        "SVC_BASIC_SECRET": SECRETS["svc-basic"],
        "PGPORT": str(expiry_cluster.port),  # the one thing the profiles leave out
        "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)]),
        "PATH": f"{PG_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
    })
    for key in list(os.environ):
        if key not in values:
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def pg_oauth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pg_oauth_client", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def advice_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pg-oauth: ")]


# -- pools over several token lifetimes ------------------------------------------

QUERY = "SELECT current_user, (oauth.session()).token_id"


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[str] = []
        self.token_ids: set[str] = set()

    def record(self, row: Any, password: str | None) -> None:
        assert row[0] == "svc"
        self.ok += 1
        self.token_ids.add(row[1])
        if password and password not in USED_TOKENS:
            USED_TOKENS.append(password)


def _until_done(body: Any, tally: Tally) -> None:
    end = time.monotonic() + RUN_FOR
    while time.monotonic() < end:
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - what would reach the application
            tally.errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        time.sleep(0.25)


def run_psycopg_pool(tally: Tally) -> None:
    from pg_oauth_client import psycopg_pool_options
    from psycopg_pool import ConnectionPool

    with ConnectionPool(**psycopg_pool_options("short"), min_size=2, max_size=2) as pool:
        def body() -> None:
            with pool.connection() as conn:
                tally.record(conn.execute(QUERY).fetchone(), conn.info.password)
        _until_done(body, tally)


def run_sqlalchemy(tally: Tally) -> None:
    from pg_oauth_client import pool_lifetime, sqlalchemy_token
    from sqlalchemy import create_engine, text

    engine = sqlalchemy_token(create_engine("postgresql+psycopg://", pool_size=2,
                                            pool_recycle=pool_lifetime("short")), "short")

    def body() -> None:
        with engine.connect() as conn:
            row = conn.execute(text(QUERY)).one()
            tally.record(row, conn.connection.dbapi_connection.info.password)
    try:
        _until_done(body, tally)
    finally:
        engine.dispose()


def run_asyncpg_via_sqlalchemy(tally: Tally) -> None:
    from pg_oauth_client import pool_lifetime, sqlalchemy_token
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        engine = sqlalchemy_token(create_async_engine(
            "postgresql+asyncpg://", pool_size=2, pool_recycle=pool_lifetime("short")), "short")
        end = time.monotonic() + RUN_FOR
        try:
            while time.monotonic() < end:
                try:
                    async with engine.connect() as conn:
                        tally.record((await conn.execute(text(QUERY))).one(), None)
                except Exception as exc:  # noqa: BLE001
                    tally.errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
                await asyncio.sleep(0.25)
        finally:
            await engine.dispose()

    asyncio.run(main())


def run_as_documented_before(tally: Tally) -> None:
    """The control: max_lifetime=3600 and no check, the tokens' own freshness rule."""
    from pg_oauth_client import psycopg_pool_kwargs
    from psycopg_pool import ConnectionPool

    with ConnectionPool("", kwargs=psycopg_pool_kwargs("short"), min_size=2, max_size=2,
                        max_lifetime=3600) as pool:
        def body() -> None:
            with pool.connection() as conn:
                tally.record(conn.execute(QUERY).fetchone(), conn.info.password)
        _until_done(body, tally)


def test_pools_never_hand_out_a_session_its_token_ended(env: dict[str, str]) -> None:
    runs = {"psycopg_pool": run_psycopg_pool, "sqlalchemy": run_sqlalchemy,
            "sqlalchemy+asyncpg": run_asyncpg_via_sqlalchemy,
            "control": run_as_documented_before}
    tallies = {name: Tally() for name in runs}
    threads = [threading.Thread(target=run, args=(tallies[name],))
               for name, run in runs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("psycopg_pool", "sqlalchemy", "sqlalchemy+asyncpg"):
        tally = tallies[name]
        assert tally.errors == [], (name, tally.errors[:3])
        assert tally.ok > 50, name
        # sessions of several tokens: the pool went through the tokens' expiry
        assert len(tally.token_ids) >= 3, (name, tally.token_ids)
    control = tallies["control"]
    assert any("session ended: its token expired" in e or "closed" in e
               for e in control.errors), control.errors[:3]


def test_a_pool_lifetime_longer_than_the_tokens_is_one_clear_error(
        env: dict[str, str]) -> None:
    from pg_oauth_client import ClientError, get_token

    with pytest.raises(ClientError, match=r"lower that below the tokens' lifetime"):
        get_token("short", min_valid=3600, strict=True)


# -- the profile as the one source of where to connect, verify-full by default ------

def _sslmode(conn: psycopg.Connection) -> str:
    return next(o.val.decode() for o in conn.pgconn.info if o.keyword == b"sslmode")


def test_helper_connections_take_the_profile_and_verify_full(env: dict[str, str]) -> None:
    from pg_oauth_client import psycopg_connect, psycopg_pool_kwargs, sqlalchemy_token
    from sqlalchemy import create_engine, text

    assert "PGSSLMODE" not in os.environ and "PGHOST" not in os.environ
    with psycopg_connect("short") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("svc",)
        assert _sslmode(conn) == "verify-full" and conn.pgconn.ssl_in_use
        assert conn.info.host == "localhost"
    with psycopg.connect(**psycopg_pool_kwargs("short")()) as conn:
        assert _sslmode(conn) == "verify-full" and conn.info.user == "svc"
    engine = sqlalchemy_token(create_engine("postgresql+psycopg://"), "short")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == "svc"
        assert _sslmode(conn.connection.dbapi_connection) == "verify-full"
    engine.dispose()
    # what the caller passes wins over the profile
    with psycopg_connect("short", "host=127.0.0.1") as conn:
        assert conn.info.host == "127.0.0.1"


def test_helper_connection_refuses_a_certificate_for_another_host(env: dict[str, str]) -> None:
    from pg_oauth_client import psycopg_connect, psycopg_pool_kwargs

    # the server is there (hostaddr), but its certificate is not for db.invalid
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg_connect("wrong-host", hostaddr="127.0.0.1")
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(**psycopg_pool_kwargs("wrong-host", hostaddr="127.0.0.1")())


# -- advice for a login that reached a password line ------------------------------

def test_psql_without_tls_is_told_to_use_verify_full(env: dict[str, str]) -> None:
    done = pg_oauth({**env, "PGSSLMODE": "disable"}, "psql", "-p", "short", "--",
                    "-XtAw", "-c", "SELECT 1")
    assert done.returncode == 2
    assert "password authentication failed" in done.stderr
    advice = advice_lines(done.stderr)
    assert "asked for a password, not a token, for user 'svc'" in advice[0], done.stderr
    assert any("sslmode=disable" in line and "use sslmode=verify-full" in line
               for line in advice), advice


def test_role_outside_the_token_lines_group_is_named(env: dict[str, str]) -> None:
    done = pg_oauth(env, "psql", "-p", "short", "--", "-XtAw", "-U", "outsider", "-c",
                    "SELECT 1")
    assert done.returncode == 2 and "password authentication failed" in done.stderr
    advice = advice_lines(done.stderr)
    assert "'outsider'" in advice[0]
    assert any("not in the group they name" in line for line in advice), advice
    assert not any("sslmode" in line for line in advice), advice


def test_driver_helper_error_carries_the_advice(env: dict[str, str]) -> None:
    from pg_oauth_client import psycopg_connect

    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg_connect("short", sslmode="disable")
    assert "password authentication failed" in str(refused.value)  # the server's, intact
    notes = getattr(refused.value, "__notes__", [])
    assert any("sslmode=disable" in n and "verify-full" in n for n in notes), notes


# -- opaque tokens, client_detail = full, another issuer ---------------------------

def test_opaque_token_warns_and_the_refusal_names_resource(env: dict[str, str]) -> None:
    done = pg_oauth(env, "token", "-p", "opaque")
    assert done.returncode == 0 and done.stdout.strip() == "opaque-access-token-4f2a9c"
    assert "warning" in done.stderr and "not a JWT" in done.stderr
    assert "set resource = " in done.stderr and "opaque-access-token" not in done.stderr
    done = pg_oauth(env, "psql", "-p", "opaque", "--", "-XtAw", "-c", "SELECT 1")
    assert "reason=malformed" in done.stderr
    advice = advice_lines(done.stderr)
    assert any("set resource = " in line and "profile 'opaque'" in line for line in advice)


def test_advice_does_not_suggest_client_detail_full_when_it_is(env: dict[str, str]) -> None:
    done = pg_oauth(env, "psql", "-p", "other-db", "--", "-XtAw", "-c", "SELECT 1")
    assert "reason=audience_mismatch" in done.stderr
    advice = advice_lines(done.stderr)
    assert "set resource (or audience) in profile 'other-db'" in advice[2]
    assert "client_detail" not in "\n".join(advice)


def test_untrusted_issuer_names_the_tokens_issuer_and_the_setting(
        env: dict[str, str], idp: IdP) -> None:
    done = pg_oauth(env, "psql", "-p", "elsewhere", "--", "-XtAw", "-c", "SELECT 1")
    assert "reason=untrusted_issuer" in done.stderr
    advice = advice_lines(done.stderr)
    assert f"does not trust issuer {idp.issuer}" in advice[2]
    assert "issuer = " in advice[2] and "profile 'elsewhere'" in advice[2]
