"""The validator's answer: a decision plus the trail of checks that led to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PASS = "pass"
FAIL = "fail"
SKIP = "skip"

# The checks in the order the validator runs them; the trail names each one.
STEPS: tuple[str, ...] = (
    "header",
    "issuer",
    "algorithm",
    "typ",
    "key",
    "signature",
    "exp",
    "nbf",
    "iat",
    "lifetime",
    "audience",
    "azp",
    "required_claims",
    "revocation",
    "mapping",
)


@dataclass(frozen=True)
class Check:
    """One step of a validation.

    ``input`` is what the step looked at, ``info`` what it concluded; neither ever
    holds the token, its signature or key material.
    """

    name: str
    outcome: str  # PASS, FAIL or SKIP
    info: str
    input: str = ""


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str
    detail: str
    allowed_roles: list[str] = field(default_factory=list)
    issuer: str | None = None
    subject: str | None = None
    token_id: str | None = None
    expires_at: datetime | None = None
    claims: dict[str, Any] | None = None
    trail: list[Check] = field(default_factory=list)
    # from the (possibly unverified) header, shortened: for audit lines and stats
    kid: str | None = None
    alg: str | None = None
    # "hit" when the key came from the cache, "miss" when a fetch was needed
    key_cache: str | None = None
    # live sessions the subject may have (None: no limit)
    max_sessions: int | None = None
    # what provisioning must do for the role (pyhook.provisioning.ProvisioningPlan)
    provisioning: Any = None
