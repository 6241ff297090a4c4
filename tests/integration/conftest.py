"""Fixtures for end-to-end tests: a real PostgreSQL (15, or PG_BIN's) with pg_oauth preloaded,
a real OIDC dev issuer serving discovery and JWKS on 127.0.0.1, real clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pg_oauth_dev.dev_issuer import DevIssuer
from pgcluster import Cluster

AUDIENCE = "pg-test"

# Every token minted in this run: the log-hygiene test greps the server logs for them.
MINTED: list[str] = []
CLUSTERS: list[Cluster] = []

if os.geteuid() == 0 and shutil.which("runuser") is None:  # pragma: no cover
    raise RuntimeError("runuser is needed to start PostgreSQL as an unprivileged user")


class RecordingIssuer:
    """The dev issuer, remembering every token it mints."""

    def __init__(self, issuer: DevIssuer) -> None:
        self._issuer = issuer

    def __getattr__(self, name: str):
        return getattr(self._issuer, name)

    def __setattr__(self, name: str, value) -> None:
        if name == "_issuer":
            object.__setattr__(self, name, value)
        else:  # settings such as device_audience belong to the issuer
            setattr(self._issuer, name, value)

    def mint(self, claims: dict | None = None, **kw) -> str:
        kw.setdefault("aud", AUDIENCE)
        token = self._issuer.mint(claims, **kw)
        MINTED.append(token)
        return token


@contextlib.contextmanager
def issuer_of_its_own(name: str) -> Iterator[RecordingIssuer]:
    """A dev issuer on 127.0.0.1 with keys of its own (in a temporary directory): for
    a test that withdraws keys or takes its issuer down without touching the others."""
    keydir = tempfile.mkdtemp(prefix=f"pg_oauth-issuer-{name}-")
    dev = DevIssuer(keydir).start()
    try:
        yield RecordingIssuer(dev)
    finally:
        dev.stop()
        shutil.rmtree(keydir, ignore_errors=True)


@pytest.fixture(scope="session")
def issuer() -> Iterator[RecordingIssuer]:
    with issuer_of_its_own("session") as shared:
        yield shared


def setup_oauth(cluster: Cluster, issuer_url: str, **issuer_cols: str) -> None:
    """Roles, the extension, one issuer (discovery over HTTP) and the base mapping."""
    cluster.sql("""
        CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
        CREATE ROLE su LOGIN SUPERUSER;
        CREATE EXTENSION pg_oauth CASCADE;
    """)
    # the dev issuer serves plain http on 127.0.0.1: an explicit choice per issuer
    cols = {"jwks_cooldown": "1 second", "allow_loopback_http": "true", **issuer_cols}
    names = ", ".join(cols)
    values = ", ".join(f"'{v}'" for v in cols.values())
    cluster.sql(
        f"INSERT INTO oauth.issuers (issuer, audiences, {names}) VALUES (%s, %s, {values})",
        (issuer_url, [AUDIENCE]),
    )
    cluster.sql(
        "INSERT INTO oauth.role_map (issuer, claim, pattern, role) VALUES "
        "(%s, 'sub', '(alice|bob|su|ghost)', '\\1')",
        (issuer_url,),
    )


def make_cluster(issuer: RecordingIssuer, **settings) -> Cluster:
    # the suite refuses hundreds of tokens from 127.0.0.1: brute-force braking
    # is off here and tested on its own (test_rate_limit.py)
    settings = {"pg_oauth.rate_limit_failures": 0, **settings}
    cluster = Cluster(settings=settings).init().start()
    CLUSTERS.append(cluster)
    setup_oauth(cluster, issuer.issuer)
    cluster.wait_for_workers()
    return cluster


def make_standby(primary: Cluster) -> Cluster:
    """A hot standby of primary, started, its workers ready."""
    primary.sql("CHECKPOINT")  # pg_basebackup's own checkpoint is spread: leave it nothing to do
    standby = Cluster.standby_of(primary)
    CLUSTERS.append(standby)
    standby.start()
    standby.wait_for_workers()
    return standby


@pytest.fixture(scope="session")
def cluster(issuer: RecordingIssuer) -> Iterator[Cluster]:
    c = make_cluster(issuer)
    yield c
    c.stop()


def reason_of(error: BaseException) -> str:
    """The reason code from a refused login's error."""
    msg = str(error)
    assert "JWT authentication failed for user" in msg, msg
    for line in msg.splitlines():
        if "reason=" in line:
            return line.split("reason=", 1)[1].split(":", 1)[0].strip()
    raise AssertionError(f"no reason in: {msg}")


def refusal(excinfo: pytest.ExceptionInfo) -> str:
    """The reason code from a refused login's message."""
    return reason_of(excinfo.value)


def attempt(cluster: Cluster, user: str, token: str, **kw) -> str:
    """'ok' or the refusal reason of one token login."""
    try:
        cluster.token_connect(user, token, **kw).close()
    except psycopg.OperationalError as exc:
        return reason_of(exc)
    return "ok"


def until(check: Callable[[], object], timeout: float = 30.0, what: str = "",
          ignore: tuple[type[BaseException], ...] = ()) -> object:
    """check()'s first truthy value; an AssertionError after timeout seconds.  Errors
    of the types in ignore count as a falsy value (a server restarting, say)."""
    deadline = time.time() + timeout
    while True:
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.2)


@pytest.fixture
def refused(cluster: Cluster) -> Callable[..., str]:
    """refused(user, token, **conn) -> reason code; fails if the login succeeds."""

    def refused_reason(user: str, token: str, target: Cluster | None = None, **kw) -> str:
        with pytest.raises(psycopg.OperationalError) as excinfo:
            (target or cluster).token_connect(user, token, **kw).close()
        return refusal(excinfo)

    return refused_reason


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here starts PostgreSQL servers: `-m "not server"` leaves them out."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.resolve().parents:
            item.add_marker(pytest.mark.server)
            item.add_marker(pytest.mark.slow)


def token_leaks(tokens: list[str], logs: dict[str, str]) -> list[str]:
    """'<log>: <first characters>...' for every token, or its payload or signature
    segment (headers repeat, and are not secret), found in one of the logs."""
    fragments = set()
    for token in tokens:
        fragments.add(token)
        fragments.update(p for p in token.split(".")[1:] if len(p) >= 16)
    return [f"{name}: {f[:12]}..." for name, log in logs.items() for f in fragments
            if f in log]


def _server_logs() -> dict[str, str]:
    logs = {}
    for c in CLUSTERS:
        log = c.log_text()
        assert log, f"empty log for {c.base}: the token check would see nothing"
        logs[str(c.logfile)] = log
    return logs


@pytest.fixture(scope="session", autouse=True)
def _remove_clusters_at_end() -> Iterator[None]:
    """At the end of the session: no token minted during it appears in any server's
    log (fails the run if one does), then the throwaway clusters are removed (kept with
    PG_OAUTH_KEEP_CLUSTERS=1)."""
    yield
    leaks = token_leaks(MINTED, _server_logs()) if MINTED else []
    for c in CLUSTERS:
        if os.environ.get("PG_OAUTH_KEEP_CLUSTERS"):
            print(f"kept cluster: {c.base} (log: {c.logfile})")
        else:
            c.destroy()
    if leaks:
        pytest.fail(f"token text in server logs ({len(leaks)}; rerun with "
                    f"PG_OAUTH_KEEP_CLUSTERS=1 to keep the logs): {leaks[:5]}", pytrace=False)
