"""Support for the driver tests that live through several token lifetimes (node-postgres's
pg-oauth-client, the pgjdbc plugin): a second oidc-provider whose access tokens live a
few seconds, a cluster that trusts it with ``pg_oauth.session_expiry = always`` (a
session ends the moment its token expires), a profile for it with TLS verify-full
against the cluster's certificate, and ``pg-oauth`` on PATH through a shim that counts
its runs (the subcommand only, never an output)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from client_support import (
    CLEAN_ENV,
    CLIENT_DIR,
    NODE_DIR,
    RESOURCE,
    ROOT,
    SECRETS,
    IdP,
    _clients,
    _generate_private_key,
    _setup_database,
)
from pgcluster import PG_BIN, Cluster

TOKEN_TTL = 6  # seconds: several lifetimes fit in a test
PROFILE = "fast"


def start_idp(workdir: Path, ttl: int) -> IdP:
    """oidc-provider (tests/client/node/oidc_idp.mjs) issuing tokens that live ttl seconds."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("node and tests/client/node/node_modules are needed: make node-deps")
    key_file = workdir / "svc-jwt.pem"
    config_file = workdir / "idp.json"
    config_file.write_text(json.dumps({
        "resources": [RESOURCE], "access_token_ttl": ttl, "device_interval": 1,
        "clients": _clients(_generate_private_key(key_file)),
    }))
    log = workdir / "idp.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([node, str(NODE_DIR / "oidc_idp.mjs"), str(config_file)],
                                stdout=subprocess.PIPE, stderr=logf, cwd=NODE_DIR)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"oidc-provider did not start: {log.read_text()}")
    return IdP(issuer=json.loads(line)["issuer"], private_key_file=key_file, process=proc,
               log=log)


@dataclass
class ShortLived:
    """The short-lived IdP, the expiring cluster, a user's home with profile `fast`."""

    idp: IdP
    cluster: Cluster
    home: Path
    env: dict[str, str]
    calls_log: Path

    def calls(self, subcommand: str) -> int:
        """How many times pg-oauth ran that subcommand."""
        if not self.calls_log.exists():
            return 0
        return self.calls_log.read_text().split().count(subcommand)

    def reset_calls(self) -> None:
        self.calls_log.unlink(missing_ok=True)

    def cached_token(self) -> str | None:
        """The token pg-oauth's cache holds for the profile (to search the server log)."""
        path = self.home / "cache" / f"{PROFILE}.json"
        if not path.exists():
            return None
        return json.loads(path.read_text()).get("access_token")


def profile_toml(issuer: str, cluster: Cluster) -> str:
    return f"""
[profile.{PROFILE}]
flow = "client_credentials"
issuer = "{issuer}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{RESOURCE}"
host = "127.0.0.1"
port = "{cluster.port}"
dbname = "postgres"
user = "svc"
sslmode = "verify-full"
sslrootcert = "{cluster.base / 'server.crt'}"

[profile.{PROFILE}-no-tls]     # where and how to trust the server: left to PG* variables
flow = "client_credentials"
issuer = "{issuer}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{RESOURCE}"
user = "svc"

[profile.{PROFILE}-wrong-secret]
flow = "client_credentials"
issuer = "{issuer}"
client_id = "svc-basic"
client_secret_env = "NOT_THE_SECRET"
resource = "{RESOURCE}"
host = "127.0.0.1"
port = "{cluster.port}"
user = "svc"
"""


def user_env(home: Path, config: Path, calls_log: Path) -> dict[str, str]:
    """A user's environment: no PG* variables, no NODE_EXTRA_CA_CERTS (the profile says
    where and how to connect), pg-oauth on PATH (a shim that logs each run's subcommand)."""
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "pg-oauth"
    shim.write_text(f'#!/bin/sh\necho "$1" >> "{calls_log}"\n'
                    f'exec "{sys.executable}" -m pg_oauth_client "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in CLEAN_ENV and not k.startswith("PG_OAUTH_")
           and k not in ("NODE_EXTRA_CA_CERTS", "NODE_PATH", "NODE_OPTIONS")}
    env.update({
        "PG_OAUTH_CONFIG": str(config),
        "PG_OAUTH_CACHE_DIR": str(home / "cache"),
        "SVC_BASIC_SECRET": SECRETS["svc-basic"],
        "NOT_THE_SECRET": "not-the-secret-at-all",
        "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)]),
        "PATH": os.pathsep.join([str(bin_dir), str(PG_BIN), env.get("PATH", "")]),
        "HOME": str(home),
    })
    return env


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShortLived]:
    home = tmp_path_factory.mktemp("short-lived")
    idp = start_idp(home, TOKEN_TTL)
    cluster = Cluster(settings={"pg_oauth.rate_limit_failures": 0,
                                "pg_oauth.session_expiry": "always"})
    try:
        cluster.init().start()
        _setup_database(cluster, idp.issuer)
        cluster.wait_for_workers()
        config = home / "config.toml"
        config.write_text(profile_toml(idp.issuer, cluster))
        calls_log = home / "pg-oauth-calls.log"
        yield ShortLived(idp=idp, cluster=cluster, home=home,
                         env=user_env(home, config, calls_log), calls_log=calls_log)
        token = ShortLived(idp, cluster, home, {}, calls_log).cached_token()
        assert token is None or token not in cluster.log_text(), \
            "a token of profile fast appeared in the server log"
    finally:
        cluster.destroy()
        idp.process.terminate()
        idp.process.wait(timeout=10)
