"""One exception per refusal reason.

``reason`` is the stable code returned to PostgreSQL; ``detail`` is a short sentence
for the DBA that never contains the token, its signature or key material;
``show`` writes a value taken from a token or a document into one.
"""

from __future__ import annotations

from typing import ClassVar


def show(value: object, limit: int = 80) -> str:
    """A value for a detail sentence: ASCII-escaped, quoted, truncated."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ValidationError(Exception):
    """A token was refused; ``reason`` says why in one stable code."""

    reason: ClassVar[str] = "validator_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Malformed(ValidationError):
    reason = "malformed"


class TooLarge(ValidationError):
    reason = "too_large"


class UnsupportedAlgorithm(ValidationError):
    reason = "unsupported_alg"


class UntrustedIssuer(ValidationError):
    reason = "untrusted_issuer"


class UnsupportedType(ValidationError):
    """The ``typ`` header is not one the issuer's tokens must carry (RFC 8725 3.11)."""

    reason = "unsupported_typ"


class UnknownKey(ValidationError):
    reason = "unknown_key"


class KeyNotFound(UnknownKey):
    """No key with the token's kid (or none fitting a kid-less token): a refetch may help."""


class BadSignature(ValidationError):
    reason = "bad_signature"


class Expired(ValidationError):
    reason = "expired"


class NotYetValid(ValidationError):
    reason = "not_yet_valid"


class LifetimeTooLong(ValidationError):
    reason = "lifetime_too_long"


class AudienceMismatch(ValidationError):
    reason = "audience_mismatch"


class MissingClaim(ValidationError):
    reason = "missing_claim"


class Revoked(ValidationError):
    reason = "revoked"


class RoleNotAllowed(ValidationError):
    reason = "role_not_allowed"


class DatabaseNotAllowed(ValidationError):
    reason = "database_not_allowed"


class ClientNotAllowed(ValidationError):
    reason = "client_not_allowed"


class JwksUnavailable(ValidationError):
    reason = "jwks_unavailable"


class ValidatorError(ValidationError):
    reason = "validator_error"


class ProvisioningForbidden(ValidationError):
    """The provisioning policy may not create or name this role (docs/provisioning.md)."""

    reason = "provisioning_forbidden"


class ProvisioningUnavailable(ValidationError):
    """The role needs a change this server cannot make now (a hot standby)."""

    reason = "provisioning_unavailable"


# Every reason code this package can produce, for documentation and tests.
REASONS: tuple[str, ...] = (
    Malformed.reason,
    TooLarge.reason,
    UnsupportedAlgorithm.reason,
    UntrustedIssuer.reason,
    UnsupportedType.reason,
    UnknownKey.reason,
    BadSignature.reason,
    Expired.reason,
    NotYetValid.reason,
    LifetimeTooLong.reason,
    AudienceMismatch.reason,
    MissingClaim.reason,
    Revoked.reason,
    RoleNotAllowed.reason,
    DatabaseNotAllowed.reason,
    ClientNotAllowed.reason,
    JwksUnavailable.reason,
    ValidatorError.reason,
    ProvisioningForbidden.reason,
    ProvisioningUnavailable.reason,
)

