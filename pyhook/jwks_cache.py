"""Signing keys per issuer: static JWKS, a jwks_uri, or OIDC discovery.

Keys are parsed once into cryptography public-key objects. Fetched keys are kept
with the time of the last successful fetch and count as fresh for the document's
Cache-Control max-age (held within the issuer's ``jwks_refresh_min`` and
``jwks_refresh_max``; ``jwks_refresh`` when it sent none); a refresh sends the
ETag back, and a 304 keeps the keys. ``refresh_due``/``refresh`` let the adapter
refresh between logins so that in steady state no login waits on the network.
When refreshes fail the last good keys keep working up to ``jwks_max_stale``
after their fetch. An unknown ``kid`` triggers at most one refetch per
``jwks_cooldown`` per issuer.

``snapshot``/``seed`` move the last good document in and out of the store (the
adapter persists it in oauth.jwks_cache), so a restarted process starts warm.
Only public key members ever leave the store.
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

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from pyhook.config import SUPPORTED_ALGORITHMS, Config, IssuerConfig
from pyhook.edwards_points import eddsa_key_problem
from pyhook.errors import JwksUnavailable, KeyNotFound, UnknownKey

MAX_DOCUMENT_BYTES = 1 << 20
MAX_KEYS = 100  # keys parsed per JWKS document; more is abuse, not rotation
MAX_PENDING_NOTES = 200  # skipped-key notes waiting for drain_notes()
MIN_RSA_BITS = 2048
# warmup refreshes keys once they are this fraction of jwks_refresh old, so that the
# login path (which refreshes at 100 %) normally finds fresh keys
REFRESH_AHEAD = 0.8
DISCOVERY_PATH = "/.well-known/openid-configuration"

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


# JWS signatures of EC keys are r||s, each padded to the curve's size (RFC 7518
# 3.4); EdDSA signatures are R||S (RFC 8032)
_SIGNATURE_SIZES: dict[str, int] = {
    "P-256": 64,
    "P-384": 96,
    "P-521": 132,
    "Ed25519": 64,
    "Ed448": 114,
}


class FetchError(Exception):
    """A document could not be fetched; the message is safe to show to a DBA."""


@dataclass(frozen=True)
class FetchResult:
    """A fetched document with what its response said about caching.

    ``not_modified``: the server answered 304 to ``If-None-Match`` (``body`` empty).
    """

    body: bytes
    max_age: float | None = None
    etag: str | None = None
    not_modified: bool = False


# fetch(url, timeout, max_bytes, etag) -> the document; raises FetchError. A plain
# bytes result means "no caching headers".
Fetch = Callable[[str, float, int, "str | None"], "bytes | FetchResult"]

# members that make up a public JWK; nothing else is kept or persisted
_PUBLIC_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
}


@dataclass(frozen=True)
class JsonWebKey:
    """One public verification key; ``key`` is a cryptography public-key object."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any = field(repr=False)
    bits: int | None = None
    # the public members as a JWK (kty, kid, alg, n/e or crv/x/y): for oauth.jwks_cache
    public: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a token signed with ``alg``."""
        wanted = _KEY_TYPE_FOR_ALG.get(alg)
        if wanted is None or self.kty != wanted[0]:
            return False
        if wanted[1] is not None and self.crv not in wanted[1]:
            return False
        return self.alg is None or self.alg == alg

    def signature_size(self) -> int:
        """The length every signature by this key has, in bytes."""
        if self.kty == "RSA":
            return ((self.bits or 0) + 7) // 8  # k, the modulus length (RFC 8017)
        return _SIGNATURE_SIZES[str(self.crv)]

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


def check_url(
    url: str, allow_insecure_http: bool, allow_loopback_http: bool = False
) -> None:
    """Refuse URLs the key store must not fetch (raises FetchError).

    Plain http needs the issuer's say-so: ``allow_insecure_http`` for any host,
    ``allow_loopback_http`` for a loopback one only. Loopback is no exception by
    itself: any local OS user can bind a free port there (or [::1] when the IdP
    listens on IPv4 only) and serve keys.
    """
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
        loopback = is_loopback_host(host)
        if allow_insecure_http or (allow_loopback_http and loopback):
            return
        raise FetchError(
            f"plain http is refused for {safe_url(url)}: use https, or set "
            + (
                "allow_loopback_http (a development issuer on this machine)"
                if loopback
                else "allow_insecure_http"
            )
            + " for this issuer"
        )
    raise FetchError(f"URL scheme {show(parts.scheme)} is not supported")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    # Returning None makes urllib raise HTTPError for every 3xx: a key URL that
    # redirects is a misconfiguration or an attack, never followed.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def cache_max_age(cache_control: str | None, age: str | None = None) -> float | None:
    """Seconds a response may be cached per Cache-Control (minus Age); None: not said.

    ``no-cache``/``no-store`` count as 0 (the issuer's floor then applies).
    """
    if not cache_control:
        return None
    max_age: float | None = None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-cache", "no-store"):
            return 0.0
        if name == "max-age":
            value = value.strip().strip('"')
            if value.isdigit() and len(value) <= 12:
                max_age = float(value)
    if max_age is not None and age is not None and age.strip().isdigit():
        max_age = max(0.0, max_age - float(age.strip()[:12]))
    return max_age


def urllib_fetch(
    url: str, timeout: float, max_bytes: int, etag: str | None = None
) -> FetchResult:
    """GET ``url``: no redirects, no proxies, ``timeout`` seconds in all, at most ``max_bytes``.

    With ``etag`` the request is conditional (If-None-Match); a 304 answer is a
    result with ``not_modified`` set.
    """
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _RefuseRedirects()
    )
    headers = {"Accept": "application/json", "User-Agent": "pg_oauth"}
    if etag is not None:
        headers["If-None-Match"] = etag
    request = urllib.request.Request(url, headers=headers)
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
            return FetchResult(
                b"".join(chunks),
                max_age=cache_max_age(
                    response.headers.get("Cache-Control"), response.headers.get("Age")
                ),
                etag=_etag(response.headers.get("ETag")),
            )
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 304 and etag is not None:
            return FetchResult(
                b"",
                max_age=cache_max_age(
                    exc.headers.get("Cache-Control"), exc.headers.get("Age")
                ),
                etag=_etag(exc.headers.get("ETag")),
                not_modified=True,
            )
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


def _etag(value: str | None) -> str | None:
    # an opaque validator echoed back as it came; anything odd is not worth keeping
    if value is None or len(value) > 200 or not value.isascii():
        return None
    value = value.strip()
    return value or None


class _SkipKey(Exception):
    pass


def parse_jwk(obj: Any) -> JsonWebKey:
    """One JWK (a dict) as a JsonWebKey; raises _SkipKey with a safe reason."""
    if not isinstance(obj, dict):
        raise _SkipKey("not a JSON object")
    kid = obj.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _SkipKey("kid is not a string")
    # present means present: "use": null is no more a signing key than "enc" is
    if "use" in obj and obj["use"] != "sig":
        raise _SkipKey(f"use is {show(obj['use'])}, not 'sig'")
    if "key_ops" in obj:
        ops = obj["key_ops"]
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise _SkipKey("key_ops is not a list of strings")
        if "verify" not in ops:
            raise _SkipKey(f"key_ops {show(ops[:10], 100)} does not include 'verify'")
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
    if kty == "OKP":
        # what OpenSSL holds, however x was spelled
        problem = eddsa_key_problem(
            str(crv), key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        if problem is not None:
            raise _SkipKey(problem)
    public: dict[str, Any] = {"kty": kty}
    public.update({name: obj[name] for name in _PUBLIC_MEMBERS[str(kty)]})
    for name in ("kid", "alg", "use"):
        if obj.get(name) is not None:
            public[name] = obj[name]
    return JsonWebKey(
        kid=kid, kty=str(kty), crv=crv, alg=alg, key=key, bits=bits, public=public
    )


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
            prefix = (
                _skip_prefix(kid) if isinstance(kid, str) else f"key #{position} skipped: "
            )
            notes.append(f"{prefix}{exc}")
    if len(data["keys"]) > MAX_KEYS:
        notes.append(f"only the first {MAX_KEYS} keys were read")
    return keys, notes


def _skip_prefix(kid: str) -> str:
    return f"key kid {show(kid, 60)} skipped: "


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
    # without a kid the choice of key would be a guess: only a single-key JWKS allows it
    if len(keys) > 1:
        raise UnknownKey(
            f"token has no kid and the JWKS has {len(keys)} keys; a kid is required"
        )
    if keys and keys[0].fits(alg):
        return keys[0]
    if keys:
        raise KeyNotFound(
            f"token has no kid and the only key ({keys[0].describe()}) cannot verify {alg}"
        )
    raise KeyNotFound(f"token has no kid and no key fits {alg}")


def _skipped(entry: _Entry | None, limit: int = 5) -> str:
    """The notes of the last document, for describe(): why keys were skipped."""
    if entry is None or not entry.notes:
        return ""
    more = len(entry.notes) - limit
    return "; " + "; ".join(entry.notes[:limit]) + (f"; {more} more" if more > 0 else "")


def _source(issuer: IssuerConfig) -> tuple[object, ...]:
    return (
        issuer.jwks,
        issuer.jwks_uri,
        issuer.allow_insecure_http,
        issuer.allow_loopback_http,
    )


@dataclass(frozen=True)
class CachedJwks:
    """The last good JWKS of an issuer as oauth.jwks_cache holds it (public keys only)."""

    issuer: str
    jwks_uri: str
    discovered: bool  # jwks_uri came from OIDC discovery
    jwks: str  # {"keys": [...]} with public members only
    etag: str | None
    max_age: float | None
    fetched_at: float  # wall clock, epoch seconds


@dataclass(frozen=True)
class FetchEvent:
    """One HTTP request for an issuer's keys (discovery or JWKS) and whether it worked."""

    issuer: str
    ok: bool


@dataclass
class _Entry:
    source: tuple[object, ...]
    issuer: str = ""
    keys: list[JsonWebKey] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loaded: bool = False  # static keys parsed (successfully or not)
    fetched_at: float | None = None  # last successful fetch (monotonic)
    fetched_wall: float | None = None  # the same, wall clock
    attempted_at: float | None = None  # last fetch attempt
    last_error: str | None = None
    kid_refetch_at: float | None = None
    discovered_uri: str | None = None
    discovered_at: float | None = None
    jwks_uri: str | None = None  # where the keys held came from
    etag: str | None = None
    max_age: float | None = None
    seeded: bool = False  # keys came from a snapshot, not from a fetch by this store
    dirty: bool = False  # fetched since the last snapshot was taken


@dataclass(frozen=True)
class _Download:
    uri: str
    result: FetchResult
    keys: list[JsonWebKey] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class KeyStore:
    """Per-issuer keys; inject ``fetch``, ``now`` (monotonic) and ``wall`` for tests."""

    def __init__(
        self,
        fetch: Fetch | None = None,
        now: Clock = time.monotonic,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        wall: Clock = time.time,
        refresh_on_login: bool = True,
        kid_refetch_gate: Callable[[str, float], bool] | None = None,
        held_keys_only: bool = False,
    ) -> None:
        self._fetch: Fetch = fetch or urllib_fetch
        # False where something else calls refresh_due()/refresh() between logins
        # (the validator workers do): a login then never waits for a routine
        # refresh, only for missing keys, too-stale keys or an unknown kid
        self.refresh_on_login = refresh_on_login
        # asked before an unknown-kid refetch when several stores (one per
        # worker process) share one cooldown: False means another used it
        self.kid_refetch_gate = kid_refetch_gate
        # True: once it holds keys for an issuer, never fetch for it again, not
        # even for an unknown kid (oauth.explain decides with the document the
        # workers stored, neither fresher nor staler)
        self.held_keys_only = held_keys_only
        self._now = now
        self._wall = wall
        self.max_bytes = max_bytes
        self.fetch_count = 0  # HTTP requests made (discovery and JWKS), for benchmarks
        # times a key set was replaced by a different one (the decision cache in
        # shared memory must forget decisions made with keys that may be gone)
        self.key_changes = 0
        self._entries: dict[str, _Entry] = {}
        self._events: list[FetchEvent] = []
        self._new_notes: list[tuple[str, str]] = []

    def sibling(self, **options: Any) -> KeyStore:
        """An empty store that fetches and tells time the way this one does."""
        return KeyStore(
            fetch=self._fetch,
            now=self._now,
            max_bytes=self.max_bytes,
            wall=self._wall,
            **options,
        )

    # -- the login path -----------------------------------------------------

    def get_key(self, issuer: IssuerConfig, alg: str, kid: str | None) -> JsonWebKey:
        """The key that must verify a token of ``issuer`` signed with ``alg``/``kid``.

        Raises UnknownKey (KeyNotFound) or JwksUnavailable; when the JWKS has a
        key with that kid that was skipped, the detail says why.
        """
        try:
            return self._get_key(issuer, alg, kid)
        except UnknownKey as exc:
            note = self._skip_note(issuer.issuer, kid)
            if note is None:
                raise
            raise type(exc)(f"{exc.detail}; {note}") from None

    def _skip_note(self, issuer: str, kid: str | None) -> str | None:
        entry = self._entries.get(issuer)
        if entry is None or kid is None:
            return None
        prefix = _skip_prefix(kid)
        return next((note for note in entry.notes if note.startswith(prefix)), None)

    def _get_key(self, issuer: IssuerConfig, alg: str, kid: str | None) -> JsonWebKey:
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
        if not entry.keys or self._too_stale(entry, issuer, now):
            if self._may_retry(entry, issuer, now) and not (
                self.held_keys_only and entry.keys
            ):
                attempted = True
                self._fetch_into(entry, issuer, now)
            if not entry.keys:
                raise JwksUnavailable(entry.last_error or "no keys could be fetched")
            if self._too_stale(entry, issuer, now):
                raise JwksUnavailable(self._stale_detail(entry, issuer, now))
        elif (
            self.refresh_on_login
            and self._due(entry, issuer, now)
            and self._may_retry(entry, issuer, now)
        ):
            attempted = True
            self._fetch_into(entry, issuer, now)  # old keys stay on error
        try:
            return select_key(entry.keys, alg, kid)
        except KeyNotFound as exc:
            if attempted:
                raise
            if self.held_keys_only:
                raise KeyNotFound(
                    f"{exc.detail}; the keys held are not refetched here (a login "
                    "refetches them for an unknown kid, at most once per jwks_cooldown)"
                ) from None
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
            if self.kid_refetch_gate is not None and not self.kid_refetch_gate(
                issuer.issuer, cooldown
            ):
                raise KeyNotFound(
                    f"{exc.detail}; another worker refetched the keys less than "
                    f"{cooldown:.0f} s ago"
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
        """Enabled issuers whose keys are missing or (nearly) due for a refresh.

        In issuer order, so that processes persisting the results lock rows alike.
        """
        now = self._now() if now is None else now
        due: list[IssuerConfig] = []
        for name in sorted(config.issuers):
            issuer = config.issuers[name]
            if not issuer.enabled:
                continue
            entry = self._entries.get(issuer.issuer)
            if entry is None or entry.source != _source(issuer):
                due.append(issuer)
            elif issuer.jwks is not None:
                if not entry.loaded:
                    due.append(issuer)
            elif (
                not entry.keys or self._due(entry, issuer, now, REFRESH_AHEAD)
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

    def describe(self, issuer: IssuerConfig) -> str:
        """Where the keys of ``issuer`` come from and how fresh they are (for explain)."""
        entry = self._entries.get(issuer.issuer)
        if issuer.jwks is not None:
            count = len(entry.keys) if entry is not None and entry.loaded else None
            held = "" if count is None else f", {count} usable keys"
            return f"static keys from oauth.issuers.jwks{held}{_skipped(entry)}"
        if entry is None or entry.source != _source(issuer) or not entry.keys:
            where = (
                f"jwks_uri {safe_url(issuer.jwks_uri)}"
                if issuer.jwks_uri
                else "OIDC discovery"
            )
            error = (
                f"; last error: {entry.last_error}"
                if entry and entry.last_error
                else ""
            )
            return f"no keys held yet (source: {where}){error}{_skipped(entry)}"
        now = self._now()
        age = now - entry.fetched_at if entry.fetched_at is not None else 0.0
        interval = issuer.refresh_interval(entry.max_age)
        origin = "from oauth.jwks_cache" if entry.seeded else "fetched"
        parts = [
            (
                f"{len(entry.keys)} keys {origin} {age:.0f} s ago from "
                f"{safe_url(entry.jwks_uri or '')}"
            ),
            (
                f"max-age {entry.max_age:g} s"
                if entry.max_age is not None
                else "no max-age"
            )
            + f", fresh for {interval:g} s"
            + (", ETag kept" if entry.etag else ""),
        ]
        if entry.last_error:
            parts.append(f"last refresh failed: {entry.last_error}")
        return "; ".join(parts) + _skipped(entry)

    def forget(self, issuer: str | None = None) -> None:
        """Drop everything held for ``issuer`` (None: every issuer): keys, the
        discovered jwks_uri, cooldowns. The next use loads or fetches anew."""
        if issuer is None:
            self._entries.clear()
        else:
            self._entries.pop(issuer, None)

    def prune(self, config: Config) -> None:
        """Forget issuers that are no longer configured."""
        for name in list(self._entries):
            if name not in config.issuers:
                del self._entries[name]

    def drain_notes(self) -> list[tuple[str, str]]:
        """(issuer, note) for each key skipped in a document loaded since the last
        call; a document whose notes did not change is not reported again."""
        notes, self._new_notes = self._new_notes, []
        return notes

    def drain_events(self) -> list[FetchEvent]:
        """The HTTP requests made since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- persistence ---------------------------------------------------------------

    def snapshot(self, issuer: str) -> CachedJwks | None:
        """The last good fetched JWKS of ``issuer`` (None: none, or static keys)."""
        entry = self._entries.get(issuer)
        if (
            entry is None
            or not entry.keys
            or entry.jwks_uri is None
            or entry.fetched_wall is None
        ):
            return None
        document = {"keys": [key.public for key in entry.keys]}
        return CachedJwks(
            issuer=issuer,
            jwks_uri=entry.jwks_uri,
            discovered=entry.source[1] is None,
            jwks=json.dumps(document, separators=(",", ":"), sort_keys=True),
            etag=entry.etag,
            max_age=entry.max_age,
            fetched_at=entry.fetched_wall,
        )

    def take_dirty(self) -> list[CachedJwks]:
        """Snapshots of the issuers fetched since the last call, in issuer order."""
        out: list[CachedJwks] = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            if entry.dirty:
                entry.dirty = False
                snap = self.snapshot(name)
                if snap is not None:
                    out.append(snap)
        return out

    def seed(self, issuer: IssuerConfig, cached: CachedJwks) -> bool:
        """Adopt a persisted JWKS when it is newer than what is held; whether it was.

        A document whose origin no longer fits the issuer's configuration (another
        jwks_uri, a URL the policy now refuses, static keys) is ignored.
        """
        if issuer.jwks is not None or cached.issuer != issuer.issuer:
            return False
        if issuer.jwks_uri is not None:
            if cached.discovered or cached.jwks_uri != issuer.jwks_uri:
                return False
        elif not cached.discovered:
            return False
        try:
            check_url(
                cached.jwks_uri, issuer.allow_insecure_http, issuer.allow_loopback_http
            )
        except FetchError:
            return False
        entry = self._entry(issuer)
        if entry.fetched_wall is not None and entry.fetched_wall >= cached.fetched_at:
            return False
        try:
            keys, notes = parse_jwks(cached.jwks)
        except JwksUnavailable:
            return False
        if not keys:
            return False
        now, wall = self._now(), self._wall()
        self._replace_keys(entry, keys, notes)
        entry.fetched_at = now - max(0.0, wall - cached.fetched_at)
        entry.fetched_wall = cached.fetched_at
        entry.jwks_uri = cached.jwks_uri
        entry.etag = cached.etag
        entry.max_age = cached.max_age
        entry.last_error = None
        entry.seeded = True
        entry.dirty = False
        if cached.discovered:
            entry.discovered_uri = cached.jwks_uri
            entry.discovered_at = entry.fetched_at
        return True

    # -- internals -------------------------------------------------------------

    def _entry(self, issuer: IssuerConfig) -> _Entry:
        entry = self._entries.get(issuer.issuer)
        source = _source(issuer)
        if entry is None or entry.source != source:
            entry = _Entry(source=source, issuer=issuer.issuer)
            self._entries[issuer.issuer] = entry
        return entry

    @staticmethod
    def _due(
        entry: _Entry, issuer: IssuerConfig, now: float, ahead: float = 1.0
    ) -> bool:
        if entry.fetched_at is None:
            return True
        return now - entry.fetched_at >= issuer.refresh_interval(entry.max_age) * ahead

    @staticmethod
    def _too_stale(entry: _Entry, issuer: IssuerConfig, now: float) -> bool:
        return (
            entry.fetched_at is not None
            and now - entry.fetched_at > issuer.jwks_max_stale
        )

    @staticmethod
    def _stale_detail(entry: _Entry, issuer: IssuerConfig, now: float) -> str:
        age = now - (entry.fetched_at or now)
        why = (
            f"refreshing failed: {entry.last_error}"
            if entry.last_error
            else "no refresh attempted yet"
        )
        return (
            f"the last good keys were fetched {age:.0f} s ago, longer than "
            f"jwks_max_stale ({issuer.jwks_max_stale:g} s); {why}"
        )

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
            keys, notes = parse_jwks(issuer.jwks or "")
            entry.keys = keys
            self._set_notes(entry, notes)
            entry.last_error = None if entry.keys else "static jwks has no usable keys"
        except JwksUnavailable as exc:
            entry.keys, entry.notes = [], []
            entry.last_error = f"static jwks: {exc.detail}"

    def _fetch_into(self, entry: _Entry, issuer: IssuerConfig, now: float) -> bool:
        """Fetch keys into ``entry``; on failure keep the old keys and record why."""
        entry.attempted_at = now
        try:
            download = self._download(entry, issuer, now)
        except JwksUnavailable as exc:
            entry.last_error = exc.detail
            return False
        result = download.result
        if not result.not_modified:
            if not download.keys:
                self._set_notes(entry, download.notes)
                entry.last_error = "the JWKS document has no usable keys"
                return False
            self._replace_keys(entry, download.keys, download.notes)
            entry.etag = result.etag
        elif result.etag is not None:
            entry.etag = result.etag
        entry.jwks_uri = download.uri
        entry.max_age = result.max_age
        entry.fetched_at = now
        entry.fetched_wall = self._wall()
        entry.last_error = None
        entry.seeded = False
        entry.dirty = True
        return True

    def _replace_keys(
        self, entry: _Entry, keys: list[JsonWebKey], notes: list[str]
    ) -> None:
        if entry.keys and [k.public for k in entry.keys] != [k.public for k in keys]:
            self.key_changes += 1
        entry.keys = keys
        self._set_notes(entry, notes)

    def _set_notes(self, entry: _Entry, notes: list[str]) -> None:
        if notes != entry.notes:
            room = MAX_PENDING_NOTES - len(self._new_notes)
            self._new_notes.extend((entry.issuer, note) for note in notes[: max(room, 0)])
        entry.notes = notes

    def _download(self, entry: _Entry, issuer: IssuerConfig, now: float) -> _Download:
        uri = issuer.jwks_uri
        if uri is None:
            if (
                entry.discovered_uri is None
                or entry.discovered_at is None
                or now - entry.discovered_at >= issuer.refresh_interval(None)
            ):
                entry.discovered_uri = self._discover(issuer)
                entry.discovered_at = now
            uri = entry.discovered_uri
        # conditional only when the keys held came from this very URL
        etag = entry.etag if entry.keys and entry.jwks_uri == uri else None
        try:
            result = self._get(uri, issuer, etag)
            if result.not_modified:
                self._record(issuer, True)
                return _Download(uri, result)
            try:
                keys, notes = parse_jwks(result.body)
            except JwksUnavailable:
                self._record(issuer, False)
                raise
            # a document without a usable key counts as a failed fetch
            self._record(issuer, bool(keys))
            return _Download(uri, result, keys, notes)
        except JwksUnavailable:
            if issuer.jwks_uri is None:
                entry.discovered_uri = None  # discover again next time
            raise

    def _discover(self, issuer: IssuerConfig) -> str:
        url = issuer.issuer.rstrip("/") + DISCOVERY_PATH
        result = self._get(url, issuer, None)
        try:
            jwks_uri = self._discovered_jwks_uri(url, result.body, issuer)
        except JwksUnavailable:
            self._record(issuer, False)
            raise
        self._record(issuer, True)
        return jwks_uri

    @staticmethod
    def _discovered_jwks_uri(url: str, body: bytes, issuer: IssuerConfig) -> str:
        try:
            document = json.loads(body)
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

    def _record(self, issuer: IssuerConfig, ok: bool) -> None:
        self._events.append(FetchEvent(issuer.issuer, ok))

    def _get(self, url: str, issuer: IssuerConfig, etag: str | None) -> FetchResult:
        """One HTTP request; a failed one is recorded here, a successful one by the
        caller once it knows whether the document was any good."""
        try:
            check_url(url, issuer.allow_insecure_http, issuer.allow_loopback_http)
        except FetchError as exc:
            raise JwksUnavailable(str(exc)) from None
        self.fetch_count += 1
        try:
            raw = self._fetch(url, issuer.http_timeout, self.max_bytes, etag)
            result = raw if isinstance(raw, FetchResult) else FetchResult(bytes(raw))
            if result.not_modified and etag is None:
                raise FetchError("HTTP status 304 to an unconditional request")
            if len(result.body) > self.max_bytes:
                raise FetchError(f"document larger than {self.max_bytes} bytes")
            return result
        except FetchError as exc:
            self._record(issuer, False)
            raise JwksUnavailable(f"fetching {safe_url(url)} failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - an injected fetch may raise anything
            self._record(issuer, False)
            raise JwksUnavailable(
                f"fetching {safe_url(url)} failed: {type(exc).__name__}"
            ) from None
