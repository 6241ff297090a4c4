"""Helpers shared by the unit tests (a module of its own: "conftest" is taken twice)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pg_oauth_dev.dev_issuer import DevIssuer

from pyhook.config import ALGORITHMS, IssuerConfig
from pyhook.decision import Decision

NOW = 1_700_000_000.0
ISS = "https://issuer.example.com"
AUD = "pg-unit"
ALL_ALGS = ALGORITHMS


class Clock:
    """A settable monotonic clock for the key store."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Documents:
    """An injected fetch: serves documents by URL, records every request.

    A value may be a JSON-able object, bytes, an exception to raise, or a
    FetchResult (caching headers, 304s). ``etags`` records the If-None-Match
    sent with each request.
    """

    def __init__(self, documents: dict[str, Any] | None = None) -> None:
        self.documents: dict[str, Any] = dict(documents or {})
        self.requests: list[str] = []
        self.etags: list[str | None] = []

    def __call__(
        self, url: str, timeout: float, max_bytes: int, etag: str | None = None
    ) -> Any:
        self.requests.append(url)
        self.etags.append(etag)
        value = self.documents.get(url)
        if value is None:
            raise OSError(f"no document at {url}")
        if isinstance(value, Exception):
            raise value
        if isinstance(value, (dict, list)):
            return json.dumps(value).encode()
        return value


def no_network(
    url: str, timeout: float, max_bytes: int, etag: str | None = None
) -> bytes:
    raise AssertionError(f"unexpected fetch of {url}")


def issuer_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "issuer": ISS,
        "audiences": [AUD],
        "jwks_uri": None,
        "jwks": None,
        "algorithms": list(ALL_ALGS),
        "leeway": 30.0,
        "max_token_lifetime": None,
        "enabled": True,
        "jwks_refresh": 300.0,
        "jwks_cooldown": 30.0,
        "http_timeout": 5.0,
        "allow_insecure_http": False,
        "allow_loopback_http": False,
    }
    row.update(overrides)
    return row


def rule_row(id: int, pattern: str, role: str, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": id,
        "issuer": ISS,
        "claim": "sub",
        "pattern": pattern,
        "role": role,
        "databases": None,
        "client_cidrs": None,
    }
    row.update(overrides)
    return row


DEFAULT_RULES = [rule_row(1, "(alice|bob)", r"\1")]


def assert_refused(decision: Decision, reason: str, token: Any = None) -> None:
    """Refused for ``reason``; the detail and trail never show the token or signature."""
    assert not decision.ok, decision
    assert decision.reason == reason, (decision.reason, decision.detail)
    assert decision.detail
    texts = [decision.detail] + [c.info for c in decision.trail]
    if isinstance(token, bytes):
        token = token.decode("ascii", "replace")
    if isinstance(token, str) and token:
        parts = token.split(".")
        secrets = [token] + [p for p in parts[2:] if len(p) >= 8]
        for text in texts:
            for secret in secrets:
                assert secret not in text, text


# a remote issuer for key-cache tests (its documents come from an injected fetch)
JWKS_URL = "https://idp.example.com/keys"
IDP = "https://idp.example.com"
DISCOVERY_URL = IDP + "/.well-known/openid-configuration"


def remote(**kw: Any) -> IssuerConfig:
    kw.setdefault("jwks_uri", JWKS_URL)
    return IssuerConfig.from_row(issuer_row(**kw))


def jwks_of(dev: DevIssuer, *kids: str) -> dict[str, Any]:
    keys = dev.jwks()["keys"]
    return {"keys": [k for k in keys if not kids or k["kid"] in kids]}
