"""Support for the client tests (fixtures registered by conftest.py; helpers imported by
the tests from here, under a name no other test directory uses): a real OpenID provider (oidc-provider from npm, run
with Node on 127.0.0.1), a real PostgreSQL 15 with pg_oauth that validates its tokens
through discovery, and the pg-oauth command run as a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "client"
NODE_DIR = Path(__file__).resolve().parent / "node"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(CLIENT_DIR))

from pg_oauth_dev.dev_issuer import DevIssuer
from pgcluster import PG_BIN, Cluster

RESOURCE = "urn:pg-oauth:testdb"
OTHER_RESOURCE = "urn:pg-oauth:otherdb"  # the IdP issues it; the database does not accept it
SHORT_RESOURCE = "urn:pg-oauth:shortdb"  # the database accepts it; its tokens live seconds
SHORT_TTL = 4
WORKLOAD_AUDIENCE = "pg-oauth-idp"
USER_CLIENT = "pg-oauth-cli"
SHORT_CLIENT = "pg-oauth-cli-short"  # its refresh tokens live one second
SECRETS = {
    "svc-basic": "basic-secret-3b1f0c8e9d2a4f6b",
    "svc-post": "post-secret-7c2e5a9b1d3f4e6a",
    "exchanger": "exchange-secret-1a2b3c4d5e6f7a8b",
}
CLEAN_ENV = ("PGPASSWORD", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE",
             "PGSSLROOTCERT", "PGSERVICE", "PGPASSFILE")

# every token the tests obtained: none may appear in a server log
SEEN_TOKENS: list[str] = []


def _generate_private_key(path: Path) -> dict[str, Any]:
    """An EC key for private_key_jwt: the PEM for the client, the public JWK for the IdP."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": "svc-jwt-1", "use": "sig", "alg": "ES256"}


@dataclass
class IdP:
    issuer: str
    private_key_file: Path
    process: subprocess.Popen
    log: Path
    tokens: list[str] = field(default_factory=list)

    def approve(self, verification_uri_complete: str, login: str = "alice",
                decision: str = "approve") -> requests.Response:
        """What the user does in a browser: confirm the code, sign in (or decline)."""
        browser = requests.Session()
        page = browser.get(verification_uri_complete, timeout=10)
        # the provider's pages: the code (auto-submitted), then "confirm this device"
        for _ in range(4):
            page.raise_for_status()
            if "/interaction/" in page.url:
                break
            form = re.search(r'<form[^>]*method="post" action="([^"]+)"', page.text)
            assert form, page.text[:500]
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                                     page.text))
            page = browser.post(urljoin(page.url, form.group(1)), data=fields, timeout=10)
        interaction = page
        uid = interaction.json()["uid"]
        done = browser.post(f"{self.issuer}/interaction/{uid}", timeout=10,
                            data={"login": login, "decision": decision})
        return done


def _clients(jwk: dict[str, Any]) -> list[dict[str, Any]]:
    none = {"redirect_uris": [], "response_types": []}
    device = ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]
    return [
        {**none, "client_id": "svc-basic", "client_secret": SECRETS["svc-basic"],
         "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic"},
        {**none, "client_id": "svc-post", "client_secret": SECRETS["svc-post"],
         "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post"},
        {**none, "client_id": "svc-jwt", "jwks": {"keys": [jwk]},
         "grant_types": ["client_credentials"], "token_endpoint_auth_method": "private_key_jwt",
         "token_endpoint_auth_signing_alg": "ES256"},
        {**none, "client_id": USER_CLIENT, "grant_types": device,
         "token_endpoint_auth_method": "none"},
        {**none, "client_id": SHORT_CLIENT, "grant_types": device,
         "token_endpoint_auth_method": "none"},
        {**none, "client_id": "exchanger", "client_secret": SECRETS["exchanger"],
         "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
         "token_endpoint_auth_method": "client_secret_basic"},
    ]


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pg_oauth-client-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def workload_issuer(workdir: Path) -> Iterator[DevIssuer]:
    """Stands in for a Kubernetes cluster's service-account token issuer."""
    dev = DevIssuer(str(workdir / "workload-keys"))
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture(scope="session")
def idp(workdir: Path, workload_issuer: DevIssuer) -> Iterator[IdP]:
    node = shutil.which("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout \
        if node else ""
    major_minor = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if major_minor < (20, 18):  # oidc-provider 9 (Debian 12's nodejs 18 is too old)
        pytest.fail(f"the client tests need Node 20.18 or later, found {version or 'none'}")
    if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("tests/client/node/node_modules is missing: make node-deps "
                    "(make test runs it)")
    key_file = workdir / "svc-jwt.pem"
    config = {
        "resources": [RESOURCE, OTHER_RESOURCE, SHORT_RESOURCE],
        "access_token_ttl": 300,
        "resource_ttls": {SHORT_RESOURCE: SHORT_TTL},
        "device_interval": 1,
        "clients": _clients(_generate_private_key(key_file)),
        "short_refresh_clients": [SHORT_CLIENT],
        "trusted_issuer": {"issuer": workload_issuer.issuer,
                           "jwks_uri": workload_issuer.discovery()["jwks_uri"],
                           "audience": WORKLOAD_AUDIENCE},
    }
    groups_file = workdir / "groups.json"
    groups_file.write_text("{}")
    config["groups_file"] = str(groups_file)
    config_file = workdir / "idp.json"
    config_file.write_text(json.dumps(config))
    log = workdir / "idp.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([node, str(NODE_DIR / "oidc_idp.mjs"), str(config_file)],
                                stdout=subprocess.PIPE, stderr=logf, cwd=NODE_DIR)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"oidc-provider did not start: {log.read_text()}")
    idp = IdP(issuer=json.loads(line)["issuer"], private_key_file=key_file, process=proc,
              log=log)
    yield idp
    proc.terminate()
    proc.wait(timeout=10)


def _setup_database(cluster: Cluster, issuer: str) -> None:
    cluster.sql("""
        CREATE ROLE oauth_users NOLOGIN;
        CREATE ROLE svc LOGIN IN ROLE oauth_users;
        CREATE ROLE alice LOGIN IN ROLE oauth_users;
        CREATE ROLE reporting LOGIN IN ROLE oauth_users;
        CREATE EXTENSION pg_oauth CASCADE;
    """)
    # oidc-provider's access tokens (RFC 9068): typ at+jwt, aud = the resource
    # indicator, sub = the user (device flow) or the client (client credentials);
    # it serves plain http on 127.0.0.1
    cluster.sql("INSERT INTO oauth.issuers (issuer, audiences, typ, allow_loopback_http) "
                "VALUES (%s, %s, %s, true)", (issuer, [RESOURCE, SHORT_RESOURCE], ["at+jwt"]))
    rules = [
        ("client_id", r"svc-(basic|post|jwt)", "svc"),     # services: the client
        ("email", r"([a-z]+)@example\.com", r"\1"),          # people: only user tokens have it
        ("sub", r"system:serviceaccount:prod:([a-z]+)", r"\1"),  # exchanged workload tokens
    ]
    for claim, pattern, role in rules:
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, %s, %s, %s)", (issuer, claim, pattern, role))


@pytest.fixture(scope="session")
def cluster(idp: IdP) -> Iterator[Cluster]:
    c = Cluster(settings={"pg_oauth.rate_limit_failures": 0}).init().start()
    try:
        _setup_database(c, idp.issuer)
        c.wait_for_workers()
        yield c
    finally:
        log = c.log_text()
        c.destroy()
        leaked = [t for t in SEEN_TOKENS if t in log]
        assert not leaked, "a token obtained by pg-oauth appeared in the server log"


def profiles_toml(idp: IdP, workdir: Path) -> str:
    """The profiles the tests (and the documentation's examples) use."""
    iss = idp.issuer
    return f"""
[profile.prod]
flow = "client_credentials"
issuer = "{iss}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{RESOURCE}"
user = "svc"

[profile.post]
flow = "client_credentials"
issuer = "{iss}"
client_id = "svc-post"
client_secret_file = "{workdir / 'svc-post.secret'}"
auth_method = "client_secret_post"
resource = "{RESOURCE}"
user = "svc"

[profile.keyed]
flow = "client_credentials"
issuer = "{iss}"
client_id = "svc-jwt"
private_key_file = "{idp.private_key_file}"
private_key_kid = "svc-jwt-1"
resource = "{RESOURCE}"
user = "svc"

[profile.wrong-secret]
flow = "client_credentials"
issuer = "{iss}"
client_id = "svc-basic"
client_secret_env = "NOT_THE_SECRET"
resource = "{RESOURCE}"

[profile.other-db]
flow = "client_credentials"
issuer = "{iss}"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
resource = "{OTHER_RESOURCE}"
user = "svc"

[profile.dev]
flow = "device_code"
issuer = "{iss}"
client_id = "{USER_CLIENT}"
scope = "openid offline_access"
resource = "{RESOURCE}"
user = "alice"

[profile.short]
flow = "device_code"
issuer = "{iss}"
client_id = "{SHORT_CLIENT}"
scope = "openid offline_access"
resource = "{RESOURCE}"
user = "alice"

[profile.k8s]
flow = "token_file"
token_file = "{workdir / 'k8s-token'}"

[profile.exchanged]
flow = "token_exchange"
issuer = "{iss}"
client_id = "exchanger"
client_secret_env = "EXCHANGE_SECRET"
subject_profile = "k8s"
resource = "{RESOURCE}"
user = "reporting"
"""


@dataclass
class ClientEnv:
    """A user's machine: config file, cache directory, environment; runs pg-oauth."""

    env: dict[str, str]
    config: Path
    cache: Path
    cluster: Cluster

    def run(self, *args: str, check: bool = False, timeout: float = 60,
            **kw: Any) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "pg_oauth_client", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              **kw)
        if check and done.returncode != 0:
            raise AssertionError(f"pg-oauth {' '.join(args)}: {done.returncode}\n{done.stderr}")
        if args and args[0] == "token" and done.returncode == 0:
            SEEN_TOKENS.append(done.stdout.strip())
        return done

    def token(self, profile: str, *more: str) -> str:
        return self.run("token", "--profile", profile, *more, check=True).stdout.strip()

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pg_oauth_client", *args],
                                env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def cache_entry(self, profile: str) -> dict[str, Any]:
        return json.loads((self.cache / f"{profile}.json").read_text())

    def age_cache(self, profile: str, seconds: float = 3 * 3600) -> None:
        """Hours later, without waiting: the cached access token is past its expiry."""
        path = self.cache / f"{profile}.json"
        data = json.loads(path.read_text())
        data["issued_at"] -= seconds
        data["expires_at"] -= seconds
        path.write_text(json.dumps(data))


def device_sign_in(client: ClientEnv, idp: IdP, profile: str | None, login: str = "alice",
                   decision: str = "approve", command: tuple[str, ...] = ("token",)
                   ) -> tuple[subprocess.CompletedProcess, str]:
    """Run pg-oauth at a terminal (its standard input and error on a pseudo-terminal: a
    device sign-in needs one) until it shows the verification URL, act in the 'browser',
    finish. ``profile`` None: no --profile (``command`` gives the options)."""
    import pty

    leader, follower = pty.openpty()
    chosen = ("--profile", profile) if profile is not None else ()
    proc = subprocess.Popen([sys.executable, "-m", "pg_oauth_client", command[0],
                             *chosen, *command[1:]], env=client.env,
                            stdin=follower, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    terminal = open(leader, "rb", buffering=0)  # noqa: SIM115 - read past the wait below
    shown = ""
    deadline = time.monotonic() + 30
    while "user_code=" not in shown and time.monotonic() < deadline:
        try:
            chunk = terminal.read(4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            break
        shown += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
    url = re.search(r"(http://\S+user_code=\S+)", shown)
    assert url, f"no verification URL in: {shown}"
    idp.approve(url.group(1), login=login, decision=decision)
    rest: list[bytes] = []

    def drain() -> None:
        with contextlib.suppress(OSError):
            while chunk := terminal.read(4096):
                rest.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=60)
    reader.join(timeout=10)
    terminal.close()
    err = b"".join(rest).decode("utf-8", "replace").replace("\r\n", "\n")
    out = out.decode("utf-8", "replace")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, shown + err)
    if proc.returncode == 0 and command[0] == "token":
        SEEN_TOKENS.append(out.strip())
    return done, shown


@pytest.fixture
def client(tmp_path: Path, idp: IdP, cluster: Cluster, workdir: Path) -> ClientEnv:
    config = tmp_path / "config" / "config.toml"
    config.parent.mkdir()
    config.write_text(profiles_toml(idp, workdir))
    (workdir / "svc-post.secret").write_text(SECRETS["svc-post"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV
           and not k.startswith("PG_OAUTH_")}
    env.update({
        "PG_OAUTH_CONFIG": str(config),
        "PG_OAUTH_CACHE_DIR": str(tmp_path / "cache"),
        "SVC_BASIC_SECRET": SECRETS["svc-basic"],
        "EXCHANGE_SECRET": SECRETS["exchanger"],
        "NOT_THE_SECRET": "not-the-secret-at-all",
        "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)]),
        "PATH": f"{PG_BIN}{os.pathsep}{env.get('PATH', '')}",
        # where the database is: the libpq variables every example relies on
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
        "PGDATABASE": "postgres",
        "PGSSLROOTCERT": str(cluster.base / "server.crt"),
        "NODE_EXTRA_CA_CERTS": str(cluster.base / "server.crt"),
        "NODE_PATH": str(NODE_DIR / "node_modules"),
        "HOME": str(tmp_path),
    })
    return ClientEnv(env=env, config=config, cache=tmp_path / "cache", cluster=cluster)
