"""A local OIDC issuer for demos and tests: discovery, JWKS, token minting, and the
RFC 8628 device authorization grant that libpq's built-in OAuth flow uses (PostgreSQL 18+).

Keys live in ``key_dir`` (PEM private keys plus ``keys.json``, files mode 0600) so
that a ``pg-oauth dev-issuer`` process and ``pg-oauth mint``/``rotate`` run in other
processes agree; the server re-reads the index on every request. Never use it for
anything but development: it signs whatever it is asked to.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import (
    ECAlgorithm,
    OKPAlgorithm,
    RSAAlgorithm,
    get_default_algorithms,
)

from pyhook.config import ALGORITHMS

INDEX_FILE = "keys.json"
LOCK_FILE = ".lock"
ISSUER_FILE = "issuer"
DISCOVERY_PATH = "/.well-known/openid-configuration"
# RFC 8414's name for the same document; libpq 18 fetches it when the oauth_issuer of
# a connection names it (it asks for DISCOVERY_PATH otherwise)
AUTHORIZATION_SERVER_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/jwks.json"
DEVICE_AUTHORIZATION_PATH = "/device_authorization"
TOKEN_PATH = "/token"
DEVICE_APPROVE_PATH = "/device/approve"
DEVICE_VERIFICATION_PATH = "/device"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_AUDIENCE = "pg_oauth"
DEFAULT_SUBJECT = "alice"
INITIAL_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
SIGNING_ALGORITHMS: tuple[str, ...] = ALGORITHMS
_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


@dataclass
class DeviceGrant:
    """One RFC 8628 device authorization, from the client's request to its token."""

    device_code: str
    user_code: str
    scope: str
    client_id: str
    expires_at: float
    subject: str | None = None  # set by approve(): the end user it is issued for
    claims: dict[str, Any] = field(default_factory=dict)
    aud: str | list[str] | None = None
    denied: bool = False
    polls: int = 0
    issued: bool = False


class _Remove:
    def __repr__(self) -> str:
        return "REMOVE"


# A claim or header value of REMOVE leaves that member out of the token.
REMOVE: Any = _Remove()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _apply(
    base: dict[str, Any], changes: Mapping[str, Any] | None, remove: Iterable[str]
) -> None:
    for name, value in (changes or {}).items():
        if value is REMOVE:
            base.pop(name, None)
        else:
            base[name] = value
    for name in remove:
        base.pop(name, None)


def encode_jws(
    header: Mapping[str, Any], payload: Mapping[str, Any] | bytes, key: Any
) -> str:
    """A compact JWS of ``payload`` signed per ``header['alg']`` with a private key.

    ``alg`` "none" gives an empty signature; payload bytes are used as they are.
    """
    body = payload if isinstance(payload, bytes) else _json_bytes(dict(payload))
    signing_input = f"{b64url(_json_bytes(dict(header)))}.{b64url(body)}"
    alg = header.get("alg")
    if alg == "none":
        return signing_input + "."
    signature = get_default_algorithms()[str(alg)].sign(
        signing_input.encode("ascii"), key
    )
    return f"{signing_input}.{b64url(signature)}"


def forge_hs256_with_public_key(
    source: DevIssuer | bytes,
    claims: Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, Any] | None = None,
    **mint_args: Any,
) -> str:
    """The classic key-confusion attack token: HS256 keyed with an RSA public key PEM.

    ``source`` is either a DevIssuer (its current RS256 key; ``claims`` and
    ``mint_args`` as for ``DevIssuer.mint``, e.g. ``sub=``, ``aud=``) or the PEM bytes
    themselves (then ``claims`` plus ``mint_args`` are the whole payload).
    PyJWT refuses to build such a token, so the HMAC is done here by hand.
    """
    if isinstance(source, DevIssuer):
        return source.mint(claims, alg="HS256", headers=headers, **mint_args)
    return _hmac_token(source, {**(claims or {}), **mint_args}, headers)


def _hmac_token(
    secret: bytes, payload: Mapping[str, Any], headers: Mapping[str, Any] | None
) -> str:
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    _apply(header, headers, ())
    signing_input = (
        f"{b64url(_json_bytes(header))}.{b64url(_json_bytes(dict(payload)))}"
    )
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def generate_private_key(alg: str) -> Any:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg in _EC_CURVES:
        return ec.generate_private_key(_EC_CURVES[alg]())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no key type for alg {alg!r}")


def public_jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of a private key, with kid, alg and use."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk.pop("key_ops", None)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def _user_code() -> str:
    """Eight letters without vowels or look-alikes, as RFC 8628 section 6.1 suggests."""
    alphabet = "BCDFGHJKLMNPQRSTVWXZ"
    code = "".join(secrets.choice(alphabet) for _ in range(8))
    return f"{code[:4]}-{code[4:]}"


def parse_form(body: bytes, content_type: str) -> dict[str, str]:
    """A POST body as a flat dict: application/x-www-form-urlencoded, or a JSON object."""
    if content_type.split(";", 1)[0].strip().lower() == "application/json":
        value = json.loads(body or b"{}")
        if not isinstance(value, dict):
            raise ValueError("the JSON body is not an object")
        return {
            str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()
        }
    pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    return dict(pairs)


def _write_private(path: str, data: bytes) -> None:
    """Write a file readable by its owner only, atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class DevIssuer:
    """A development issuer over the keys in ``key_dir``."""

    def __init__(self, key_dir: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.key_dir = os.path.abspath(key_dir)
        self.host = host
        self.port = port
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.not_modified_responses = 0  # JWKS requests answered 304
        self._delay = 0.0
        self._broken = False
        self._garbage = False
        self._cache_control: str | None = "max-age=300"
        self._counter_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._private_keys: dict[str, Any] = {}  # file name -> key (files never change)
        self._unpublished: dict[str, Any] = {}  # alg -> a key that is never published
        # device flow (RFC 8628): what the tokens it issues carry, how clients poll
        self.device_audience: str | list[str] = DEFAULT_AUDIENCE
        self.device_interval = 1  # seconds between token polls (RFC default: 5)
        self.device_lifetime = 600  # seconds a device code stays valid
        self.device_token_lifetime = 300
        self.device_grants: dict[str, DeviceGrant] = {}  # by device_code
        self._device_lock = threading.Lock()

    # -- keys ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.key_dir, mode=0o700, exist_ok=True)
        fd = os.open(
            os.path.join(self.key_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_index(self) -> list[dict[str, Any]]:
        try:
            with open(os.path.join(self.key_dir, INDEX_FILE), encoding="utf-8") as f:
                return list(json.load(f)["keys"])
        except FileNotFoundError:
            return []

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        data = json.dumps({"keys": entries}, indent=2).encode("utf-8")
        _write_private(os.path.join(self.key_dir, INDEX_FILE), data)

    def _add_key(self, entries: list[dict[str, Any]], alg: str) -> str:
        if alg not in SIGNING_ALGORITHMS:
            raise ValueError(
                f"unsupported alg {alg!r}; one of {', '.join(SIGNING_ALGORITHMS)}"
            )
        number = 1 + sum(1 for e in entries if e["alg"] == alg)
        kid = f"{alg.lower()}-{number}"
        while any(e["kid"] == kid for e in entries):
            number += 1
            kid = f"{alg.lower()}-{number}"
        key = generate_private_key(alg)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        file_name = f"{kid}.pem"
        _write_private(os.path.join(self.key_dir, file_name), pem)
        entries.append(
            {
                "kid": kid,
                "alg": alg,
                "file": file_name,
                "published": True,
                "created": int(time.time()),
            }
        )
        return kid

    def ensure_keys(self) -> list[dict[str, Any]]:
        """The key index, creating the initial RS256, ES256 and EdDSA keys on first use."""
        entries = self._read_index()
        if all(any(e["alg"] == alg for e in entries) for alg in INITIAL_ALGORITHMS):
            return entries
        with self._locked():
            entries = self._read_index()
            missing = [
                a for a in INITIAL_ALGORITHMS if not any(e["alg"] == a for e in entries)
            ]
            for alg in missing:
                self._add_key(entries, alg)
            if missing:
                self._write_index(entries)
        return entries

    def rotate(self, alg: str = "RS256", retire: bool = False) -> str:
        """Add a key for ``alg``; old keys stay published unless ``retire``. The new kid."""
        self.ensure_keys()
        with self._locked():
            entries = self._read_index()
            if retire:
                for entry in entries:
                    if entry["alg"] == alg:
                        entry["published"] = False
            kid = self._add_key(entries, alg)
            self._write_index(entries)
        return kid

    def private_key(self, kid: str) -> Any:
        entry = self._entry(kid)
        if entry is None:
            raise KeyError(kid)
        return self._load(entry)

    def _load(self, entry: Mapping[str, Any]) -> Any:
        name = str(entry["file"])
        key = self._private_keys.get(name)
        if key is None:
            with open(os.path.join(self.key_dir, name), "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
            self._private_keys[name] = key
        return key

    def _entry(self, kid: str) -> dict[str, Any] | None:
        return next((e for e in self.ensure_keys() if e["kid"] == kid), None)

    def current_kid(self, alg: str) -> str:
        """The newest published kid for ``alg``, creating a key if there is none."""
        published = [
            e for e in self.ensure_keys() if e["alg"] == alg and e["published"]
        ]
        return published[-1]["kid"] if published else self.rotate(alg)

    def public_key_pem(self, kid: str) -> bytes:
        return (
            self.private_key(kid)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )

    def jwks(self) -> dict[str, Any]:
        """The published public keys as a JWKS document."""
        return {
            "keys": [
                public_jwk(self._load(e), e["kid"], e["alg"])
                for e in self.ensure_keys()
                if e["published"]
            ]
        }

    # -- tokens -------------------------------------------------------------

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        alg: str | None = None,
        kid: str | None = None,
        lifetime: float = 300,
        sub: str | None = DEFAULT_SUBJECT,
        aud: str | list[str] | None = DEFAULT_AUDIENCE,
        headers: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
        sign_with_unpublished: bool = False,
        now: float | None = None,
        **more_claims: Any,
    ) -> str:
        """A signed token.

        Claims default to iss (this issuer), sub, aud, iat = nbf = now, exp = now +
        ``lifetime`` and a random jti; ``claims`` and ``more_claims`` (e.g. ``jti=``)
        override them, a value of REMOVE or a name in ``remove`` leaves one out.
        ``alg`` defaults to RS256, or to the alg of key ``kid``; "none" gives an
        unsigned token and "HS256" the key-confusion forgery. A ``kid`` not in the
        index is put in the header of a token signed with the current key.
        ``sign_with_unpublished`` signs with a key that is never published, under
        the current kid (or ``kid``). ``headers`` override header members.
        """
        issued = int(time.time() if now is None else now)
        payload: dict[str, Any] = {}
        if claims is None or "iss" not in claims:
            payload["iss"] = self.issuer
        if sub is not None:
            payload["sub"] = sub
        if aud is not None:
            payload["aud"] = aud
        payload.update(
            {
                "iat": issued,
                "nbf": issued,
                "exp": issued + int(lifetime),
                "jti": uuid.uuid4().hex,
            }
        )
        _apply(payload, {**(claims or {}), **more_claims}, remove)

        entry = self._entry(kid) if kid is not None else None
        alg = alg or (str(entry["alg"]) if entry else "RS256")
        if alg == "HS256":
            is_rsa = entry is not None and str(entry["alg"]).startswith(("RS", "PS"))
            rsa_kid = str(kid) if is_rsa else self.current_kid("RS256")
            header_changes = {"kid": rsa_kid, **(headers or {})}
            return _hmac_token(self.public_key_pem(rsa_kid), payload, header_changes)

        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        key: Any = None
        if alg != "none":
            if kid is None:
                kid = self.current_kid(alg)
                entry = self._entry(kid)
            header["kid"] = kid
            if sign_with_unpublished:
                key = self._unpublished.get(alg)
                if key is None:
                    key = self._unpublished[alg] = generate_private_key(alg)
            elif entry is not None:
                key = self._load(entry)
            else:  # a kid that is not in the index: sign with the current key anyway
                key = self.private_key(self.current_kid(alg))
        _apply(header, headers, ())
        return encode_jws(header, payload, key)

    # -- the HTTP server ----------------------------------------------------

    @property
    def issuer(self) -> str:
        """``http://host:port`` of the running server (or of key_dir/issuer)."""
        port = self._server.server_address[1] if self._server else self.port
        if port:
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"http://{host}:{port}"
        try:
            with open(os.path.join(self.key_dir, ISSUER_FILE), encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            raise RuntimeError(
                "the dev issuer is not started and key_dir has no issuer file"
            ) from None

    def start(self) -> DevIssuer:
        """Serve discovery and JWKS in a daemon thread."""
        self.ensure_keys()
        server = _Server((self.host, self.port), _Handler)
        server.dev_issuer = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            args=(0.05,),  # shutdown() waits up to one poll interval
            name="pg-oauth-dev-issuer",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DevIssuer:  # noqa: PYI034 - typing.Self needs 3.11
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_delay(self, seconds: float) -> None:
        """Answer discovery and JWKS requests only after ``seconds``."""
        self._delay = seconds

    def set_broken(self, broken: bool = True) -> None:
        """Answer discovery and JWKS requests with HTTP 500."""
        self._broken = broken

    def set_garbage(self, garbage: bool = True) -> None:
        """Answer JWKS requests with 200 and a body that is not JSON."""
        self._garbage = garbage

    def set_cache_control(self, value: str | None) -> None:
        """The Cache-Control header of discovery and JWKS answers (None: none)."""
        self._cache_control = value

    def discovery(self) -> dict[str, Any]:
        issuer = self.issuer
        algs = sorted({e["alg"] for e in self.ensure_keys() if e["published"]})
        return {
            "issuer": issuer,
            "jwks_uri": issuer + JWKS_PATH,
            "token_endpoint": issuer + TOKEN_PATH,
            "device_authorization_endpoint": issuer + DEVICE_AUTHORIZATION_PATH,
            "grant_types_supported": [DEVICE_CODE_GRANT],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
            "id_token_signing_alg_values_supported": algs,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }

    # -- device authorization grant (RFC 8628) -------------------------------

    def device_authorize(
        self, form: Mapping[str, str], now: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """The device authorization endpoint: a device code and a user code to approve."""
        client_id = form.get("client_id", "")
        if not client_id:
            return 400, {"error": "invalid_client", "error_description": "no client_id"}
        now = time.time() if now is None else now
        grant = DeviceGrant(
            device_code=secrets.token_urlsafe(24),
            user_code=_user_code(),
            scope=form.get("scope", ""),
            client_id=client_id,
            expires_at=now + self.device_lifetime,
        )
        with self._device_lock:
            self.device_grants[grant.device_code] = grant
        verification = self.issuer + DEVICE_VERIFICATION_PATH
        return 200, {
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_uri": verification,
            "verification_uri_complete": f"{verification}?user_code={grant.user_code}",
            "expires_in": self.device_lifetime,
            "interval": self.device_interval,
        }

    def device_grant(self, user_code: str) -> DeviceGrant | None:
        with self._device_lock:
            return next(
                (g for g in self.device_grants.values() if g.user_code == user_code),
                None,
            )

    def approve(
        self,
        user_code: str,
        sub: str = DEFAULT_SUBJECT,
        claims: Mapping[str, Any] | None = None,
        aud: str | list[str] | None = None,
        deny: bool = False,
    ) -> bool:
        """The end user approves (or denies) ``user_code``; the token will be for ``sub``.

        ``claims`` are added to the token, ``aud`` replaces ``device_audience``.
        False when no pending grant has that user code.
        """
        grant = self.device_grant(user_code)
        if grant is None or grant.issued:
            return False
        grant.subject = sub
        grant.claims = dict(claims or {})
        grant.aud = aud
        grant.denied = deny
        return True

    def device_token(
        self, form: Mapping[str, str], now: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """The token endpoint for the device code grant (RFC 8628 section 3.4/3.5)."""
        if form.get("grant_type") != DEVICE_CODE_GRANT:
            return 400, {"error": "unsupported_grant_type"}
        now = time.time() if now is None else now
        with self._device_lock:
            grant = self.device_grants.get(form.get("device_code", ""))
            if grant is None or grant.issued:
                return 400, {"error": "invalid_grant"}
            if form.get("client_id") and form["client_id"] != grant.client_id:
                return 400, {"error": "invalid_grant"}
            grant.polls += 1
            if now >= grant.expires_at:
                return 400, {"error": "expired_token"}
            if grant.denied:
                return 400, {"error": "access_denied"}
            if grant.subject is None:
                return 400, {"error": "authorization_pending"}
            grant.issued = True
        claims: dict[str, Any] = {"client_id": grant.client_id, **grant.claims}
        if grant.scope:
            claims.setdefault("scope", grant.scope)
        token = self.mint(
            claims,
            sub=grant.subject,
            aud=grant.aud if grant.aud is not None else self.device_audience,
            lifetime=self.device_token_lifetime,
            now=now,
        )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.device_token_lifetime,
        }
        if grant.scope:
            body["scope"] = grant.scope
        return 200, body

    def _answer_post(self, path: str, form: Mapping[str, str]) -> tuple[int, bytes]:
        if path == DEVICE_AUTHORIZATION_PATH:
            status, body = self.device_authorize(form)
        elif path == TOKEN_PATH:
            status, body = self.device_token(form)
        elif path == DEVICE_APPROVE_PATH:
            claims = json.loads(form["claims"]) if form.get("claims") else None
            aud = json.loads(form["aud"]) if form.get("aud") else None
            approved = self.approve(
                form.get("user_code", ""),
                sub=form.get("sub", DEFAULT_SUBJECT),
                claims=claims,
                aud=aud,
                deny=form.get("deny", "") in ("1", "true"),
            )
            status, body = 200, {"approved": True}
            if not approved:
                status, body = 404, {"error": "no pending grant has this user_code"}
        else:
            status, body = 404, {"error": "not found"}
        return status, _json_bytes(body)

    def _answer(self, path: str) -> tuple[int, bytes]:
        if path in (DISCOVERY_PATH, AUTHORIZATION_SERVER_PATH):
            with self._counter_lock:
                self.discovery_requests += 1
            if self._delay:
                time.sleep(self._delay)
            if self._broken:
                return 500, _json_bytes({"error": "broken"})
            return 200, _json_bytes(self.discovery())
        if path == JWKS_PATH:
            with self._counter_lock:
                self.jwks_requests += 1
            if self._delay:
                time.sleep(self._delay)
            if self._broken:
                return 500, _json_bytes({"error": "broken"})
            if self._garbage:
                return 200, b"<html>temporarily unavailable</html>"
            return 200, _json_bytes(self.jwks())
        return 404, _json_bytes({"error": "not found"})

    def _count_not_modified(self) -> None:
        with self._counter_lock:
            self.not_modified_responses += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    dev_issuer: DevIssuer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        issuer = self.server.dev_issuer
        path = urllib.parse.urlsplit(self.path).path
        try:
            status, body = issuer._answer(path)
        except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
            status, body = 500, _json_bytes({"error": type(exc).__name__})
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        if status == 200 and self.headers.get("If-None-Match") == etag:
            status, body = 304, b""
            if path == JWKS_PATH:
                issuer._count_not_modified()
        try:
            self.send_response(status)
            if status in (200, 304):
                self.send_header("ETag", etag)
                if issuer._cache_control is not None:
                    self.send_header("Cache-Control", issuer._cache_control)
            if status != 304:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def do_POST(self) -> None:
        issuer = self.server.dev_issuer
        path = urllib.parse.urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            form = parse_form(body, self.headers.get("Content-Type", ""))
            status, answer = issuer._answer_post(path, form)
        except (ValueError, UnicodeDecodeError) as exc:
            status, answer = (
                400,
                _json_bytes(
                    {"error": "invalid_request", "error_description": str(exc)}
                ),
            )
        except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
            status, answer = 500, _json_bytes({"error": type(exc).__name__})
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and demos need quiet stderr
