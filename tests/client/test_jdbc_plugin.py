"""client/java, the pgjdbc AuthenticationPlugin, built with its Makefile and run by the
machine's Java against oidc-provider and a real cluster: connections over several token
lifetimes (``pg_oauth.session_expiry = always``) with sslmode=verify-full, no error,
pg-oauth run once per token lifetime, not per connection; a refused token request is
pg-oauth's one line in the SQLException. Needs a JDK and pgjdbc (make test-deps installs
default-jdk-headless and libpostgresql-jdbc-java)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest
from client_support import CLIENT_DIR
from short_tokens import PROFILE, ShortLived, short_lived

__all__ = ["short_lived"]  # the fixture

pytestmark = [pytest.mark.server, pytest.mark.slow]

PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
PROGRAM = Path(__file__).resolve().parent / "java" / "TokenLifetimes.java"
PLUGIN = "pgoauth.jdbc.ProfileTokenPlugin"
LIFETIMES = 3


@pytest.fixture(scope="module")
def plugin_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("javac") is None or not PGJDBC_JAR.exists():
        pytest.skip("no JDK or pgjdbc here (make test-deps installs them)")
    build = tmp_path_factory.mktemp("java-build")
    subprocess.run(["make", "-s", "-C", str(CLIENT_DIR / "java"), f"BUILD={build}"],
                   check=True, capture_output=True, text=True, timeout=300)
    return build / "pg-oauth-jdbc.jar"


def jdbc_url(short_lived: ShortLived, profile: str) -> str:
    cluster = short_lived.cluster
    query = urlencode({
        "user": "svc",
        "sslmode": "verify-full",
        "sslrootcert": str(cluster.base / "server.crt"),
        "authenticationPluginClassName": PLUGIN,
        "pgOAuthProfile": profile,
    })
    return f"jdbc:postgresql://127.0.0.1:{cluster.port}/postgres?{query}"


def run_java(plugin_jar: Path, short_lived: ShortLived, profile: str,
             lifetimes: int) -> subprocess.CompletedProcess:
    classpath = f"{plugin_jar}:{PGJDBC_JAR}"
    return subprocess.run(["java", "-cp", classpath, str(PROGRAM),
                           jdbc_url(short_lived, profile), str(lifetimes)],
                          env=short_lived.env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_connections_through_token_lifetimes_with_one_pg_oauth_run_each(
        plugin_jar: Path, short_lived: ShortLived) -> None:
    short_lived.reset_calls()
    done = run_java(plugin_jar, short_lived, PROFILE, LIFETIMES)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("error")] == []
    counts = {line.split()[0]: int(line.split()[1]) for line in lines
              if line.split()[0] in ("tokens", "connections")}
    assert counts["tokens"] == LIFETIMES
    assert [line for line in lines if line.startswith("seen")] == ["seen svc ssl=true"]
    # one pg-oauth run per token, shared by the threads connecting at that moment
    assert short_lived.calls("token") == counts["tokens"]
    assert counts["connections"] >= 4 * counts["tokens"]


def test_refused_token_request_is_pg_oauths_one_line(plugin_jar: Path,
                                                     short_lived: ShortLived) -> None:
    done = run_java(plugin_jar, short_lived, f"{PROFILE}-wrong-secret", 1)
    assert done.returncode == 0, done.stderr
    assert (f"error pg-oauth: client credentials for profile '{PROFILE}-wrong-secret' "
            "refused by the issuer: invalid_client") in done.stdout
