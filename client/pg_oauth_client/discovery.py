"""Endpoints by OIDC discovery (``/.well-known/openid-configuration``), with the RFC 8414
document as a fallback, and the rule every endpoint obeys: HTTPS, or http:// on a
loopback address only."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import requests

from pg_oauth_client.errors import (
    ConfigError,
    IdPCertificateError,
    IdPError,
    IdPUnavailable,
)
from pg_oauth_client.idp_http import certificate_failure, idp_session, tls_failure
from pg_oauth_client.profile import Profile

OIDC_PATH = "/.well-known/openid-configuration"
RFC8414_PATH = "/.well-known/oauth-authorization-server"


def check_url(url: str, what: str) -> str:
    """Refuse endpoints that would carry secrets in clear over a network."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise ConfigError(f"{what} {url!r} must be https:// (http:// only on a loopback address)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_error_line(exc: requests.RequestException, url: str,
                    profile: Profile | None = None) -> str:
    """One sentence for a failed request; with the profile, an untrusted certificate is
    named as that (and the setting that fixes it), not as a host that cannot be reached."""
    tls = tls_failure(exc, url, profile) if profile is not None else None
    if tls:
        return tls
    host = urlsplit(url).netloc
    if isinstance(exc, requests.Timeout):
        return f"{host} did not answer in time"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot reach {host}"
    return f"request to {host} failed: {type(exc).__name__}"


def request_failed(what: str, exc: requests.RequestException, url: str,
                   profile: Profile) -> IdPError:
    """The error for a request to the IdP that got no answer. No answer in time, no
    connection, a TLS handshake cut short: IdPUnavailable (it may be back in a minute; a
    cached token that is still usable serves meanwhile). A certificate that does not
    verify: IdPCertificateError, a trust problem that waiting does not fix."""
    line = f"{what}: {http_error_line(exc, url, profile)}"
    if certificate_failure(exc):
        return IdPCertificateError(line)
    return IdPUnavailable(line)


def fetch_metadata(profile: Profile) -> dict[str, Any]:
    """The issuer's metadata; endpoints set in the profile win over discovered ones."""
    known = {
        "token_endpoint": profile.token_endpoint,
        "device_authorization_endpoint": profile.device_authorization_endpoint,
    }
    needs_device = profile.flow == "device_code" and not profile.device_authorization_endpoint
    if profile.token_endpoint and not needs_device:
        metadata: dict[str, Any] = {}
    else:
        if not profile.issuer:
            raise ConfigError(f"profile {profile.name!r}: no issuer to discover endpoints from")
        metadata = discover(profile)
    metadata.update({k: v for k, v in known.items() if v})
    for key in ("token_endpoint", "device_authorization_endpoint"):
        if metadata.get(key):
            check_url(str(metadata[key]), key)
    return metadata


def discover(profile: Profile) -> dict[str, Any]:
    """The issuer's discovery document (OIDC, else RFC 8414), whatever the profile sets."""
    issuer = profile.issuer or ""
    check_url(issuer, "issuer")
    parts = urlsplit(issuer)
    candidates = [issuer + OIDC_PATH,
                  f"{parts.scheme}://{parts.netloc}{RFC8414_PATH}{parts.path}"]
    with idp_session(profile) as session:
        return _first_document(profile, issuer, candidates, session)


def _first_document(profile: Profile, issuer: str, candidates: list[str],
                    session: requests.Session) -> dict[str, Any]:
    missing: list[str] = []
    for url in candidates:
        try:
            resp = session.get(url, timeout=profile.http_timeout,
                               headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise request_failed(f"discovery for profile {profile.name!r}", exc, url,
                                 profile) from None
        if resp.status_code == 404:
            missing.append(url)
            continue
        if resp.status_code >= 500:
            raise IdPUnavailable(f"discovery for profile {profile.name!r}: {url} answered "
                                 f"HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise IdPError(f"discovery for profile {profile.name!r}: {url} answered "
                           f"HTTP {resp.status_code}")
        try:
            metadata = resp.json()
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise IdPError(f"discovery for profile {profile.name!r}: {url} is not a JSON object")
        # RFC 8414 section 3.3: a document naming another issuer is not this issuer's
        if str(metadata.get("issuer", "")).rstrip("/") != issuer:
            raise IdPError(f"discovery for profile {profile.name!r}: {url} names issuer "
                           f"{metadata.get('issuer')!r}, not {issuer!r}")
        return metadata
    raise IdPError(f"discovery for profile {profile.name!r}: no metadata: "
                   f"{' and '.join(missing)} answered HTTP 404 (tried in that order); "
                   "check issuer, or set token_endpoint in the profile")
