"""HTTP to the IdP. TLS: oidc-provider served over https:// on 127.0.0.1 with a certificate of a
CA made here. The profile's ca_file is what every request to the IdP trusts (discovery,
token, device authorization, revocation), whatever REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE
say; a certificate that does not verify is named as that, with the setting that fixes it.
Discovery: a 404 names every URL tried. No database: the laptop's side only."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from client_support import (
    CLEAN_ENV,
    CLIENT_DIR,
    NODE_DIR,
    RESOURCE,
    ROOT,
    SECRETS,
    USER_CLIENT,
    IdP,
)
from pg_oauth_client.discovery import request_failed
from pg_oauth_client.errors import IdPCertificateError, IdPUnavailable
from pg_oauth_client.jwt_peek import unverified_claims
from pg_oauth_client.profile import Profile


def _write_ca(directory: Path, name: str) -> tuple[Path, object, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def _write_server_cert(directory: Path, ca_cert, ca_key) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "idp.crt", directory / "idp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


class TlsIdP:
    def __init__(self, idp: IdP, ca: Path, unrelated: Path) -> None:
        self.idp, self.issuer, self.ca, self.unrelated = idp, idp.issuer, ca, unrelated


@pytest.fixture(scope="module")
def tls_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsIdP]:
    d = tmp_path_factory.mktemp("tls-idp")
    ca, ca_cert, ca_key = _write_ca(d, "idp-ca")
    unrelated, _, _ = _write_ca(d, "unrelated-ca")  # a corporate bundle, say
    cert, key = _write_server_cert(d, ca_cert, ca_key)
    none = {"redirect_uris": [], "response_types": []}
    config = {
        "resources": [RESOURCE], "access_token_ttl": 300, "device_interval": 1,
        "clients": [
            {**none, "client_id": "svc-basic", "client_secret": SECRETS["svc-basic"],
             "grant_types": ["client_credentials"],
             "token_endpoint_auth_method": "client_secret_basic"},
            {**none, "client_id": USER_CLIENT, "token_endpoint_auth_method": "none",
             "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]},
        ],
        "tls": {"key": str(key), "cert": str(cert)},
    }
    (d / "idp.json").write_text(json.dumps(config))
    log = d / "idp.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([shutil.which("node") or "node", str(NODE_DIR / "oidc_idp.mjs"),
                                 str(d / "idp.json")],
                                stdout=subprocess.PIPE, stderr=logf, cwd=NODE_DIR)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"oidc-provider did not start: {log.read_text()}")
    issuer = json.loads(line)["issuer"]
    assert issuer.startswith("https://127.0.0.1:")
    yield TlsIdP(IdP(issuer=issuer, private_key_file=d / "none", process=proc, log=log),
                 ca, unrelated)
    proc.terminate()
    proc.wait(timeout=10)


def profiles(tls: TlsIdP, closed_port: int) -> str:
    common = f'issuer = "{tls.issuer}"\nresource = "{RESOURCE}"\n'
    service = f'flow = "client_credentials"\nclient_id = "svc-basic"\n' \
              f'client_secret_env = "SVC_BASIC_SECRET"\n{common}'
    return f"""
[profile.tls]
{service}ca_file = "{tls.ca}"

[profile.tls-no-ca]
{service}
[profile.tls-wrong-ca]
{service}ca_file = "{tls.unrelated}"

[profile.tls-token-endpoint]
flow = "client_credentials"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
token_endpoint = "{tls.issuer}/token"
resource = "{RESOURCE}"

[profile.tls-missing-ca]
{service}ca_file = "{tls.ca.parent / 'no-such-ca.pem'}"

[profile.tls-closed]
flow = "client_credentials"
client_id = "svc-basic"
client_secret_env = "SVC_BASIC_SECRET"
issuer = "https://127.0.0.1:{closed_port}"

[profile.tls-user]
flow = "device_code"
client_id = "{USER_CLIENT}"
scope = "openid offline_access"
{common}ca_file = "{tls.ca}"
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Laptop:
    """A user's machine with REQUESTS_CA_BUNDLE pointing at an unrelated bundle."""

    def __init__(self, tmp_path: Path, tls: TlsIdP) -> None:
        config = tmp_path / "config.toml"
        config.write_text(profiles(tls, _closed_port()))
        self.cache = tmp_path / "cache"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in CLEAN_ENV and not k.startswith("PG_OAUTH_")
                    and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        self.env.update({
            "PG_OAUTH_CONFIG": str(config), "PG_OAUTH_CACHE_DIR": str(self.cache),
            "SVC_BASIC_SECRET": SECRETS["svc-basic"], "HOME": str(tmp_path),
            "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)]),
            "REQUESTS_CA_BUNDLE": str(tls.unrelated),
        })

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pg_oauth_client", *args],
                              env={**self.env, **env}, capture_output=True, text=True,
                              timeout=60, check=False)


@pytest.fixture
def laptop(tmp_path: Path, tls_idp: TlsIdP) -> Laptop:
    return Laptop(tmp_path, tls_idp)


def test_ca_file_is_trusted_over_requests_ca_bundle(laptop: Laptop, tls_idp: TlsIdP) -> None:
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env = {k: v for k, v in laptop.env.items() if k != "REQUESTS_CA_BUNDLE"}
        env[variable] = str(tls_idp.unrelated)
        done = subprocess.run([sys.executable, "-m", "pg_oauth_client", "token", "-p", "tls",
                               "--force"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, (variable, done.stderr)
        claims = unverified_claims(done.stdout.strip()) or {}
        assert claims["iss"] == tls_idp.issuer and claims["aud"] == RESOURCE


def test_device_sign_in_and_revocation_trust_ca_file(laptop: Laptop, tls_idp: TlsIdP,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # discovery, device authorization, token polling, refresh and revocation, all over
    # https with ca_file while REQUESTS_CA_BUNDLE names another CA (login: the code is
    # shown without a terminal)
    proc = subprocess.Popen([sys.executable, "-m", "pg_oauth_client", "login", "-p",
                             "tls-user"], env=laptop.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    shown = ""
    while "user_code=" not in shown:
        line = proc.stderr.readline()
        assert line, shown
        shown += line
    url = next(w for w in shown.split() if "user_code=" in w)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_idp.ca))  # the browser trusts it
    tls_idp.idp.approve(url)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, shown + err
    # the refresh token is the sign-in's (shared by the profiles of this client and IdP)
    [signin] = laptop.cache.glob("signin@*.json")
    refresh_token = json.loads(signin.read_text())["refresh_token"]
    refreshed = laptop.run("token", "-p", "tls-user", "--force", "--no-interactive")
    assert refreshed.returncode == 0, refreshed.stderr
    refresh_token = json.loads(signin.read_text())["refresh_token"]  # rotated

    done = laptop.run("logout", "-p", "tls-user")
    assert done.returncode == 0, done.stderr
    assert "revoked the refresh token" in done.stderr
    refused = requests.post(f"{tls_idp.issuer}/token", timeout=10, verify=str(tls_idp.ca),
                            data={"grant_type": "refresh_token", "client_id": USER_CLIENT,
                                  "refresh_token": refresh_token})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_untrusted_certificate_names_the_setting(laptop: Laptop, tls_idp: TlsIdP) -> None:
    host = tls_idp.issuer.removeprefix("https://")
    done = laptop.run("token", "-p", "tls-no-ca")
    assert done.returncode == 1 and done.stdout == ""
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith(f"pg-oauth: discovery for profile 'tls-no-ca': the IdP's "
                           f"certificate at {host} is not trusted (")
    assert f"checked against REQUESTS_CA_BUNDLE={tls_idp.unrelated}" in line
    assert line.endswith("set ca_file = \"/path/to/idp-ca.pem\" (the CA that issued it) in "
                         "profile 'tls-no-ca', or PG_OAUTH_CA_FILE")
    assert "cannot reach" not in line

    # without REQUESTS_CA_BUNDLE: requests' own bundle
    env = {k: v for k, v in laptop.env.items() if k != "REQUESTS_CA_BUNDLE"}
    done = subprocess.run([sys.executable, "-m", "pg_oauth_client", "token", "-p",
                           "tls-no-ca"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert "not trusted" in done.stderr and "(certifi)" in done.stderr, done.stderr

    # the token request itself (no discovery: the profile names the token endpoint)
    done = laptop.run("token", "-p", "tls-token-endpoint")
    assert done.stderr.startswith("pg-oauth: client credentials for profile "
                                  f"'tls-token-endpoint': the IdP's certificate at {host} "
                                  "is not trusted"), done.stderr

    # PG_OAUTH_CA_FILE is the fix it names
    done = laptop.run("token", "-p", "tls-no-ca", PG_OAUTH_CA_FILE=str(tls_idp.ca))
    assert done.returncode == 0, done.stderr


def test_untrusted_certificate_is_not_an_idp_that_is_down(laptop: Laptop,
                                                           tls_idp: TlsIdP) -> None:
    # a cached token would serve through an outage while it has the life asked for; a
    # certificate that does not verify is no outage: waiting does not fix it
    trusted = laptop.run("token", "-p", "tls-no-ca", REQUESTS_CA_BUNDLE=str(tls_idp.ca))
    assert trusted.returncode == 0, trusted.stderr
    path = laptop.cache / "tls-no-ca.json"
    data = json.loads(path.read_text())
    shift = (data["expires_at"] - data["issued_at"]) * 0.43  # past fresh, still usable
    data["issued_at"] -= shift
    data["expires_at"] -= shift
    path.write_text(json.dumps(data))

    done = laptop.run("token", "-p", "tls-no-ca")  # REQUESTS_CA_BUNDLE: the unrelated CA
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert "is not trusted (" in done.stderr and "using the cached token" not in done.stderr

    # unreachable (a proxy that is down): the same cached token serves, with a warning
    proxy = f"http://127.0.0.1:{_closed_port()}"
    done = laptop.run("token", "-p", "tls-no-ca", HTTPS_PROXY=proxy, https_proxy=proxy,
                      NO_PROXY="", no_proxy="")
    assert done.returncode == 0 and done.stdout.strip() == data["access_token"], done.stderr
    assert "cannot reach 127.0.0.1:" in done.stderr and "using the cached token" in done.stderr


def test_which_request_failures_are_an_idp_that_is_down() -> None:
    def cert_error(code: int, message: str) -> ssl.SSLCertVerificationError:
        error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
        error.verify_code, error.verify_message = code, message
        return error

    profile = Profile(name="p", flow="client_credentials", ca_file="/etc/idp-ca.pem")
    url = "https://login.example.com/token"
    down = [requests.ConnectionError("refused"), requests.Timeout("slow"),
            requests.exceptions.SSLError(ssl.SSLEOFError(8, "EOF in violation of protocol"))]
    for exc in down:  # may be back in a minute: a cached token serves meanwhile
        error = request_failed("token for profile 'p'", exc, url, profile)
        assert type(error) is IdPUnavailable, exc
    untrusted = requests.exceptions.SSLError(cert_error(20, "unable to get local issuer"))
    wrong_host = requests.exceptions.SSLError(cert_error(62, "Hostname mismatch"))
    for exc in (untrusted, wrong_host):  # waiting does not fix these
        error = request_failed("token for profile 'p'", exc, url, profile)
        assert type(error) is IdPCertificateError, exc
        assert "certificate at login.example.com is not" in str(error)


def test_ca_file_that_does_not_hold_the_ca(laptop: Laptop, tls_idp: TlsIdP) -> None:
    done = laptop.run("token", "-p", "tls-wrong-ca")
    assert done.returncode == 1
    assert "is not trusted (" in done.stderr
    assert (f"checked against ca_file {tls_idp.unrelated} of profile 'tls-wrong-ca'): "
            "ca_file must hold the certificate of the CA that issued it") in done.stderr

    done = laptop.run("token", "-p", "tls-missing-ca")
    assert done.returncode == 2
    assert "profile 'tls-missing-ca': cannot read ca_file " in done.stderr
    assert "No such file or directory" in done.stderr


def test_unreachable_idp_is_not_a_certificate_problem(laptop: Laptop) -> None:
    done = laptop.run("token", "-p", "tls-closed")
    assert done.returncode == 1
    assert "cannot reach 127.0.0.1:" in done.stderr and "certificate" not in done.stderr


# -- discovery: what was tried ------------------------------------------------------------

def test_discovery_404_names_both_urls(tmp_path: Path, idp: IdP) -> None:
    # oidc-provider serves its metadata at the root only: an issuer with a path has none
    issuer = f"{idp.issuer}/tenant-a"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_OAUTH_")}
    env.update({"PG_OAUTH_CONFIG": str(tmp_path / "none"), "PG_OAUTH_FLOW": "device_code",
                "PG_OAUTH_ISSUER": issuer, "PG_OAUTH_CLIENT_ID": USER_CLIENT,
                "PG_OAUTH_CACHE_DIR": str(tmp_path / "cache"),
                "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)])})
    done = subprocess.run([sys.executable, "-m", "pg_oauth_client", "token"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    first = f"{issuer}/.well-known/openid-configuration"
    fallback = f"{idp.issuer}/.well-known/oauth-authorization-server/tenant-a"
    assert done.stderr.strip() == (
        f"pg-oauth: discovery for profile 'default': no metadata: {first} and {fallback} "
        "answered HTTP 404 (tried in that order); check issuer, or set token_endpoint in "
        "the profile")


def test_one_off_use_names_the_option(laptop: Laptop, tls_idp: TlsIdP) -> None:
    args = ("token", "--issuer", tls_idp.issuer, "--client-id", "svc-basic",
            "--client-secret-env", "SVC_BASIC_SECRET", "--resource", RESOURCE)
    done = laptop.run(*args)
    assert done.returncode == 1
    assert "is not trusted (" in done.stderr
    assert done.stderr.rstrip().endswith("; checked against "
                                         f"REQUESTS_CA_BUNDLE={tls_idp.unrelated}): pass "
                                         "--ca-file FILE, the PEM certificate of the CA "
                                         "that issued it"), done.stderr
    done = laptop.run(*args, "--ca-file", str(tls_idp.ca))
    assert done.returncode == 0, done.stderr
