"""Getting an issuer's key documents: URL policy, the HTTP GET, OIDC discovery.

The key store (``jwks_cache``) decides when to fetch; this module decides what
may be fetched (``check_url``), fetches it (``urllib_fetch``: no redirects, no
proxies, a deadline and a size limit), reads what the response said about caching,
and reads the ``jwks_uri`` out of a discovery document. Messages never carry a
URL's user info, query or fragment (``safe_url``).
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from pyhook.errors import JwksUnavailable, show

MAX_DOCUMENT_BYTES = 1 << 20
DISCOVERY_PATH = "/.well-known/openid-configuration"


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



def checked_result(
    raw: bytes | FetchResult, etag: str | None, max_bytes: int
) -> FetchResult:
    """What a fetch returned, as a FetchResult; raises FetchError for an answer no
    fetch may give (a 304 nobody asked for, a document over ``max_bytes``)."""
    result = raw if isinstance(raw, FetchResult) else FetchResult(bytes(raw))
    if result.not_modified and etag is None:
        raise FetchError("HTTP status 304 to an unconditional request")
    if len(result.body) > max_bytes:
        raise FetchError(f"document larger than {max_bytes} bytes")
    return result


def discovery_url(issuer: str) -> str:
    """Where an issuer's OIDC discovery document is."""
    return issuer.rstrip("/") + DISCOVERY_PATH


def discovered_jwks_uri(url: str, body: bytes, issuer: str) -> str:
    """The jwks_uri of the discovery document ``body`` fetched from ``url``, which
    must name ``issuer``; raises JwksUnavailable saying what is wrong with it."""
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
    if document.get("issuer") != issuer:
        raise JwksUnavailable(
            f"discovery document at {safe_url(url)} names issuer "
            f"{show(document.get('issuer'))}, not {show(issuer)}"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise JwksUnavailable(
            f"discovery document at {safe_url(url)} has no jwks_uri"
        )
    return jwks_uri
