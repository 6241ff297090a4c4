"""Signing keys per issuer: static JWKS, a jwks_uri, or OIDC discovery.

Keys are parsed once into cryptography public-key objects. Fetched keys are kept
with the time of the last successful fetch and refreshed when older than the
issuer's ``jwks_refresh`` (the old keys keep working when a refresh fails);
``refresh_due``/``refresh`` let the adapter do that between logins so that in
steady state no login waits on the network. An unknown ``kid`` triggers at most
one refetch per ``jwks_cooldown`` per issuer.
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from pyhook.config import SUPPORTED_ALGORITHMS, Config, IssuerConfig
from pyhook.errors import JwksUnavailable, KeyNotFound, UnknownKey

MAX_DOCUMENT_BYTES = 1 << 20
MAX_KEYS = 100  # keys parsed per JWKS document; more is abuse, not rotation
MIN_RSA_BITS = 2048
# warmup refreshes keys once they are this fraction of jwks_refresh old, so that the
# login path (which refreshes at 100 %) normally finds fresh keys
REFRESH_AHEAD = 0.8
DISCOVERY_PATH = "/.well-known/openid-configuration"

Fetch = Callable[[str, float, int], bytes]
Clock = Callable[[], float]

# alg -> (kty, curves the key may have; None: any)
_KEY_TYPE_FOR_ALG: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


class FetchError(Exception):
    """A document could not be fetched; the message is safe to show to a DBA."""


@dataclass(frozen=True)
class JsonWebKey:
    """One public verification key; ``key`` is a cryptography public-key object."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any = field(repr=False)
    bits: int | None = None

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a token signed with ``alg``."""
        wanted = _KEY_TYPE_FOR_ALG.get(alg)
        if wanted is None or self.kty != wanted[0]:
            return False
        if wanted[1] is not None and self.crv not in wanted[1]:
            return False
        return self.alg is None or self.alg == alg

    def describe(self) -> str:
        """A label without key material, e.g. ``RSA 2048-bit`` or ``EC P-256``."""
        kind = f"RSA {self.bits}-bit" if self.kty == "RSA" else f"{self.kty} {self.crv}"
        return kind if self.alg is None else f"{kind} for {self.alg}"


def show(value: object, limit: int = 80) -> str:
    """A value for a detail sentence: ASCII-escaped, quoted, truncated."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_url(url: str) -> str:
    """A URL without user info, query or fragment, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return show(f"{parts.scheme}://{host}{port}{parts.path}", 200)
    except ValueError:
        return "an invalid URL"


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure_http: bool) -> None:
    """Refuse URLs the key store must not fetch (raises FetchError)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise FetchError("invalid URL") from None
    if not host:
        raise FetchError(f"URL {safe_url(url)} has no host")
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        if allow_insecure_http or is_loopback_host(host):
            return
        raise FetchError(
            f"plain http is refused for {safe_url(url)}: use https, or set "
            "allow_insecure_http for this issuer"
        )
    raise FetchError(f"URL scheme {show(parts.scheme)} is not supported")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    # Returning None makes urllib raise HTTPError for every 3xx: a key URL that
    # redirects is a misconfiguration or an attack, never followed.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def urllib_fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    """GET ``url``: no redirects, no proxies, ``timeout`` seconds in all, at most ``max_bytes``."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _RefuseRedirects()
    )
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "pg_oauth"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise FetchError(f"HTTP status {response.status}")
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"document larger than {max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise FetchError(f"timed out after {timeout:g} s")
                chunk = response.read(min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"document larger than {max_bytes} bytes")
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            raise FetchError(
                f"HTTP status {exc.code}: redirects are not followed"
            ) from None
        raise FetchError(f"HTTP status {exc.code}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise FetchError(f"timed out after {timeout:g} s") from None
        reason = (
            exc.reason if isinstance(exc.reason, str) else type(exc.reason).__name__
        )
        if isinstance(exc.reason, OSError) and exc.reason.strerror:
            reason = exc.reason.strerror
        raise FetchError(f"connection failed: {reason}") from None
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g} s") from None
    except OSError as exc:
        raise FetchError(
            f"connection failed: {exc.strerror or type(exc).__name__}"
        ) from None
    except ValueError as exc:  # http.client: bad status line, bad chunk, ...
        raise FetchError(f"bad HTTP response ({type(exc).__name__})") from None


class _SkipKey(Exception):
    pass


def parse_jwk(obj: Any) -> JsonWebKey:
    """One JWK (a dict) as a JsonWebKey; raises _SkipKey with a safe reason."""
    if not isinstance(obj, dict):
        raise _SkipKey("not a JSON object")
    kid = obj.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _SkipKey("kid is not a string")
    use = obj.get("use")
    if use is not None and use != "sig":
        raise _SkipKey(f"use is {show(use)}, not 'sig'")
    alg = obj.get("alg")
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        raise _SkipKey(f"alg {show(alg)} is not supported")
    kty = obj.get("kty")
    crv = obj.get("crv")
    bits: int | None = None
    try:
        # only the public members are passed on: a JWKS leaking private parts must
        # not turn into private-key objects here
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk({"kty": "RSA", "n": obj["n"], "e": obj["e"]})
            bits = key.key_size
            crv = None
        elif kty == "EC" and crv in ("P-256", "P-384", "P-521"):
            key = ECAlgorithm.from_jwk(
                {"kty": "EC", "crv": crv, "x": obj["x"], "y": obj["y"]}
            )
        elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
            key = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": crv, "x": obj["x"]})
        elif kty in ("EC", "OKP"):
            raise _SkipKey(f"curve {show(crv)} is not supported")
        else:
            raise _SkipKey(f"key type {show(kty)} is not supported")
    except _SkipKey:
        raise
    except Exception as exc:  # noqa: BLE001 - any bad member skips only this key
        raise _SkipKey(f"invalid key parameters ({type(exc).__name__})") from None
    if bits is not None and bits < MIN_RSA_BITS:
        raise _SkipKey(f"RSA key of {bits} bits is too short")
    return JsonWebKey(kid=kid, kty=str(kty), crv=crv, alg=alg, key=key, bits=bits)


def parse_jwks(document: bytes | str) -> tuple[list[JsonWebKey], list[str]]:
    """The usable keys of a JWKS document and one note per skipped key."""
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):
        raise JwksUnavailable("JWKS document is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksUnavailable("JWKS document has no 'keys' array")
    keys: list[JsonWebKey] = []
    notes: list[str] = []
    for position, obj in enumerate(data["keys"][:MAX_KEYS]):
        try:
            keys.append(parse_jwk(obj))
        except _SkipKey as exc:
            kid = obj.get("kid") if isinstance(obj, dict) else None
            label = f"kid {show(kid, 60)}" if isinstance(kid, str) else f"#{position}"
            notes.append(f"key {label} skipped: {exc}")
    if len(data["keys"]) > MAX_KEYS:
        notes.append(f"only the first {MAX_KEYS} keys were read")
    return keys, notes


def select_key(keys: list[JsonWebKey], alg: str, kid: str | None) -> JsonWebKey:
    """The key for a token; KeyNotFound when a refetch might help, UnknownKey otherwise."""
    if kid is not None:
        same_kid = [k for k in keys if k.kid == kid]
        if not same_kid:
            raise KeyNotFound(f"no key with kid {show(kid, 60)}")
        for key in same_kid:
            if key.fits(alg):
                return key
        raise UnknownKey(
            f"key {show(kid, 60)} is {same_kid[0].describe()} and cannot verify {alg}"
        )
    fitting = [k for k in keys if k.fits(alg)]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        raise KeyNotFound(f"token has no kid and no key fits {alg}")
    raise UnknownKey(
        f"token has no kid and {len(fitting)} keys fit {alg}; a kid is required"
    )


def _source(issuer: IssuerConfig) -> tuple[object, ...]:
    return (issuer.jwks, issuer.jwks_uri, issuer.allow_insecure_http)


@dataclass
class _Entry:
    source: tuple[object, ...]
    keys: list[JsonWebKey] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loaded: bool = False  # static keys parsed (successfully or not)
    fetched_at: float | None = None  # last successful fetch
    attempted_at: float | None = None  # last fetch attempt
    last_error: str | None = None
    kid_refetch_at: float | None = None
    discovered_uri: str | None = None
    discovered_at: float | None = None


class KeyStore:
    """Per-issuer keys; inject ``fetch`` and ``now`` (monotonic seconds) for tests."""

    def __init__(
        self,
        fetch: Fetch | None = None,
        now: Clock = time.monotonic,
        max_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self._fetch: Fetch = fetch or urllib_fetch
        self._now = now
        self.max_bytes = max_bytes
        self.fetch_count = 0  # HTTP requests made (discovery and JWKS), for benchmarks
        self._entries: dict[str, _Entry] = {}

    # -- the login path -----------------------------------------------------

    def get_key(self, issuer: IssuerConfig, alg: str, kid: str | None) -> JsonWebKey:
        """The key that must verify a token of ``issuer`` signed with ``alg``/``kid``.

        Raises UnknownKey (KeyNotFound) or JwksUnavailable.
        """
        entry = self._entry(issuer)
        if issuer.jwks is not None:
            self._load_static(entry, issuer)
            if not entry.keys:
                raise JwksUnavailable(
                    entry.last_error or "static jwks has no usable keys"
                )
            return select_key(entry.keys, alg, kid)

        now = self._now()
        attempted = False  # one login waits for the network at most once
        if not entry.keys:
            if self._may_retry(entry, issuer, now):
                attempted = True
                self._fetch_into(entry, issuer, now)
            if not entry.keys:
                raise JwksUnavailable(entry.last_error or "no keys could be fetched")
        elif (
            entry.fetched_at is None or now - entry.fetched_at >= issuer.jwks_refresh
        ) and self._may_retry(entry, issuer, now):
            attempted = True
            self._fetch_into(entry, issuer, now)  # old keys stay on error
        try:
            return select_key(entry.keys, alg, kid)
        except KeyNotFound as exc:
            if attempted:
                raise
            cooldown = issuer.jwks_cooldown
            if (
                cooldown > 0
                and entry.kid_refetch_at is not None
                and now - entry.kid_refetch_at < cooldown
            ):
                wait = cooldown - (now - entry.kid_refetch_at)
                raise KeyNotFound(
                    f"{exc.detail}; keys refetched {now - entry.kid_refetch_at:.0f} s "
                    f"ago, next refetch allowed in {wait:.0f} s"
                ) from None
            entry.kid_refetch_at = now
            if not self._fetch_into(entry, issuer, now):
                raise KeyNotFound(
                    f"{exc.detail}; refetching keys failed: {entry.last_error}"
                ) from None
            return select_key(entry.keys, alg, kid)

    # -- between logins ---------------------------------------------------------

    def refresh_due(
        self, config: Config, now: float | None = None
    ) -> list[IssuerConfig]:
        """Enabled issuers whose keys are missing or (nearly) due for a refresh."""
        now = self._now() if now is None else now
        due: list[IssuerConfig] = []
        for issuer in config.issuers.values():
            if not issuer.enabled:
                continue
            entry = self._entries.get(issuer.issuer)
            if entry is None or entry.source != _source(issuer):
                due.append(issuer)
            elif issuer.jwks is not None:
                if not entry.loaded:
                    due.append(issuer)
            elif (
                not entry.keys
                or entry.fetched_at is None
                or now - entry.fetched_at >= issuer.jwks_refresh * REFRESH_AHEAD
            ) and self._may_retry(entry, issuer, now):
                due.append(issuer)
        return due

    def refresh(self, issuer: IssuerConfig) -> int:
        """Load or fetch the keys of ``issuer`` now; the number of keys held.

        Raises JwksUnavailable when that failed (keys held before stay in use).
        """
        entry = self._entry(issuer)
        if issuer.jwks is not None:
            entry.loaded = False
            self._load_static(entry, issuer)
        elif not self._fetch_into(entry, issuer, self._now()):
            raise JwksUnavailable(entry.last_error or "no keys could be fetched")
        if not entry.keys:
            raise JwksUnavailable(entry.last_error or "no usable keys")
        return len(entry.keys)

    def keys(self, issuer: str) -> list[JsonWebKey]:
        """The keys held for an issuer (no loading, no network)."""
        entry = self._entries.get(issuer)
        return list(entry.keys) if entry else []

    def notes(self, issuer: str) -> list[str]:
        """Why keys of the last document were skipped, and the last error, if any."""
        entry = self._entries.get(issuer)
        if entry is None:
            return []
        return entry.notes + ([entry.last_error] if entry.last_error else [])

    def prune(self, config: Config) -> None:
        """Forget issuers that are no longer configured."""
        for name in list(self._entries):
            if name not in config.issuers:
                del self._entries[name]

    # -- internals -------------------------------------------------------------

    def _entry(self, issuer: IssuerConfig) -> _Entry:
        entry = self._entries.get(issuer.issuer)
        source = _source(issuer)
        if entry is None or entry.source != source:
            entry = _Entry(source=source)
            self._entries[issuer.issuer] = entry
        return entry

    @staticmethod
    def _may_retry(entry: _Entry, issuer: IssuerConfig, now: float) -> bool:
        # after a failure, wait jwks_cooldown before trying again: a dead IdP must
        # not make every login wait for a timeout
        return (
            entry.attempted_at is None
            or entry.last_error is None
            or now - entry.attempted_at >= issuer.jwks_cooldown
        )

    def _load_static(self, entry: _Entry, issuer: IssuerConfig) -> None:
        if entry.loaded:
            return
        entry.loaded = True
        try:
            entry.keys, entry.notes = parse_jwks(issuer.jwks or "")
            entry.last_error = None if entry.keys else "static jwks has no usable keys"
        except JwksUnavailable as exc:
            entry.keys, entry.notes = [], []
            entry.last_error = f"static jwks: {exc.detail}"

    def _fetch_into(self, entry: _Entry, issuer: IssuerConfig, now: float) -> bool:
        """Fetch keys into ``entry``; on failure keep the old keys and record why."""
        entry.attempted_at = now
        try:
            keys, notes = self._download(entry, issuer, now)
        except JwksUnavailable as exc:
            entry.last_error = exc.detail
            return False
        if not keys:
            entry.notes = notes
            entry.last_error = "the JWKS document has no usable keys"
            return False
        entry.keys, entry.notes = keys, notes
        entry.fetched_at = now
        entry.last_error = None
        return True

    def _download(
        self, entry: _Entry, issuer: IssuerConfig, now: float
    ) -> tuple[list[JsonWebKey], list[str]]:
        uri = issuer.jwks_uri
        if uri is None:
            if (
                entry.discovered_uri is None
                or entry.discovered_at is None
                or now - entry.discovered_at >= issuer.jwks_refresh
            ):
                entry.discovered_uri = self._discover(issuer)
                entry.discovered_at = now
            uri = entry.discovered_uri
        try:
            return parse_jwks(self._get(uri, issuer))
        except JwksUnavailable:
            if issuer.jwks_uri is None:
                entry.discovered_uri = None  # discover again next time
            raise

    def _discover(self, issuer: IssuerConfig) -> str:
        url = issuer.issuer.rstrip("/") + DISCOVERY_PATH
        try:
            document = json.loads(self._get(url, issuer))
        except (ValueError, RecursionError):
            raise JwksUnavailable(
                f"discovery document at {safe_url(url)} is not valid JSON"
            ) from None
        if not isinstance(document, dict):
            raise JwksUnavailable(
                f"discovery document at {safe_url(url)} is not a JSON object"
            )
        if document.get("issuer") != issuer.issuer:
            raise JwksUnavailable(
                f"discovery document at {safe_url(url)} names issuer "
                f"{show(document.get('issuer'))}, not {show(issuer.issuer)}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise JwksUnavailable(
                f"discovery document at {safe_url(url)} has no jwks_uri"
            )
        return jwks_uri

    def _get(self, url: str, issuer: IssuerConfig) -> bytes:
        try:
            check_url(url, issuer.allow_insecure_http)
        except FetchError as exc:
            raise JwksUnavailable(str(exc)) from None
        self.fetch_count += 1
        try:
            data = self._fetch(url, issuer.http_timeout, self.max_bytes)
        except FetchError as exc:
            raise JwksUnavailable(f"fetching {safe_url(url)} failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - an injected fetch may raise anything
            raise JwksUnavailable(
                f"fetching {safe_url(url)} failed: {type(exc).__name__}"
            ) from None
        if len(data) > self.max_bytes:
            raise JwksUnavailable(
                f"fetching {safe_url(url)} failed: document larger than {self.max_bytes} bytes"
            )
        return data
