"""Reading a JWT's claims without verifying it: only to know when a token expires and to
explain a refusal. Nothing here decides whether a token is trusted (the server does)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS, or None when ``token`` is not one (opaque tokens)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(body.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None


def number_claim(claims: dict[str, Any] | None, name: str) -> float | None:
    value = (claims or {}).get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
