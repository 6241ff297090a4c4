"""The validation core: one token in, one Decision out, never an exception.

Order matters: structure and header, issuer, algorithm, key, signature; only a
token whose signature verified has its claims checked, mapped to roles, or
echoed back in the decision.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jwt.algorithms import Algorithm, get_default_algorithms

from pyhook.claim_path import resolve
from pyhook.config import SUPPORTED_ALGORITHMS, Config, IssuerConfig, RoleRule
from pyhook.decision import FAIL, PASS, SKIP, STEPS, Check, Decision
from pyhook.errors import (
    AudienceMismatch,
    BadSignature,
    ClientNotAllowed,
    DatabaseNotAllowed,
    Expired,
    LifetimeTooLong,
    Malformed,
    MissingClaim,
    NotYetValid,
    RoleNotAllowed,
    TooLarge,
    UnsupportedAlgorithm,
    UntrustedIssuer,
    ValidationError,
    ValidatorError,
)
from pyhook.jwks_cache import KeyStore, show

MAX_TOKEN_BYTES = 65530
# header and payload must be there; an empty signature is left for the
# algorithm and signature checks to refuse with a precise reason
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# 9999-12-31T23:59:59Z: the range datetime (and timestamptz) can represent
_MAX_TIMESTAMP = 253402300799
_NOT_CHECKED = "not checked: an earlier check failed"

_algorithms: dict[str, Algorithm] = {}

if TYPE_CHECKING:
    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def validate(
    token: str | bytes,
    requested_role: str,
    database: str,
    client_addr: str | None,
    ssl: bool,
    config: Config,
    keys: KeyStore,
    now: float | None = None,
) -> Decision:
    """Decide whether ``token`` may log in as ``requested_role``; never raises.

    ``ssl`` is accepted for the contract's sake; the C side enforces SSL.
    """
    run = _Validation(config, keys, time.time() if now is None else now)
    try:
        return run.execute(token, requested_role, database, client_addr)
    except ValidationError as exc:
        return run.refuse(exc)
    except Exception as exc:  # noqa: BLE001
        # a bug must refuse the login, and the class name is all that is safe to show
        try:
            return run.refuse(ValidatorError(type(exc).__name__))
        except Exception:  # noqa: BLE001
            return Decision(
                ok=False, reason=ValidatorError.reason, detail=type(exc).__name__
            )


def _algorithm(alg: str) -> Algorithm:
    if not _algorithms:
        defaults = get_default_algorithms()
        _algorithms.update({name: defaults[name] for name in SUPPORTED_ALGORITHMS})
    return _algorithms[alg]


def _b64decode(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise Malformed("a token segment has an impossible base64url length")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise Malformed("a token segment is not valid base64url") from None


class _DuplicateMember(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # two parsers disagreeing about a duplicated member is a known JWT attack
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise _DuplicateMember(name)
        obj[name] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which neither jsonb nor the time checks can use
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _json_object(segment: str, part: str) -> dict[str, Any]:
    raw = _b64decode(segment)
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except _DuplicateMember as exc:
        raise Malformed(f"{part} has a duplicate member {show(str(exc), 40)}") from None
    except (ValueError, RecursionError):
        raise Malformed(f"{part} is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise Malformed(f"{part} is not a JSON object")
    return value


def _split(token: object) -> tuple[str, str, str]:
    if isinstance(token, bytes):
        size = len(token)
    elif isinstance(token, str):
        size = (
            len(token)
            if token.isascii()
            else len(token.encode("utf-8", "surrogatepass"))
        )
    else:
        raise Malformed("no token")
    if size > MAX_TOKEN_BYTES:
        raise TooLarge(
            f"token of {size} bytes exceeds the limit of {MAX_TOKEN_BYTES} bytes"
        )
    if isinstance(token, bytes):
        if not token.isascii():
            raise Malformed("token contains characters outside base64url and dots")
        token = token.decode("ascii")
    assert isinstance(token, str)
    if size == 0:
        raise Malformed("empty token")
    if _COMPACT_JWS.fullmatch(token):
        header, payload, signature = token.split(".")
        return header, payload, signature
    segments = token.count(".") + 1
    if segments == 5:
        raise Malformed(
            "token has 5 segments: encrypted tokens (JWE) are not supported"
        )
    if "=" in token:
        raise Malformed("base64url segments must not be padded with '='")
    if any(c.isspace() for c in token):
        raise Malformed("token contains whitespace")
    if not token.isascii() or re.search(r"[^A-Za-z0-9_.-]", token):
        raise Malformed("token contains characters outside base64url and dots")
    raise Malformed(
        f"token has {segments} segment(s); a compact JWS has three base64url "
        "segments separated by dots"
    )


def _number(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"{name} claim is not a number")
    if not math.isfinite(value) or abs(value) > _MAX_TIMESTAMP:
        raise Malformed(f"{name} claim is out of range")
    return value


def _client_ip(client_addr: str | None) -> IPAddress | None:
    if client_addr is None:
        return None
    try:
        ip = ipaddress.ip_interface(str(client_addr).strip()).ip
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _rule_roles(rule: RoleRule, claims: dict[str, Any]) -> set[str]:
    roles: set[str] = set()
    for value in resolve(claims, rule.claim):
        match = rule.regex.fullmatch(value)
        if match is None:
            continue
        try:
            role = match.expand(rule.role)
        except (re.error, IndexError):
            continue
        if role:
            roles.add(role)
    return roles


class _Validation:
    """State of one validation: the trail so far and what is known to be verified."""

    def __init__(self, config: Config, keys: KeyStore, now: float) -> None:
        self.config = config
        self.keys = keys
        self.now = now
        self.trail: list[Check] = []
        self.step = STEPS[0]
        # set only once the signature verified: unverified data is never echoed
        self.claims: dict[str, Any] | None = None
        self.expires_at: datetime | None = None
        self.allowed_roles: list[str] = []
        self.kid: str | None = None
        self.alg: str | None = None
        self.key_cache: str | None = None
        self.max_sessions: int | None = None

    def _pass(self, info: str) -> None:
        self.trail.append(Check(self.step, PASS, info))

    def _skip(self, info: str) -> None:
        self.trail.append(Check(self.step, SKIP, info))

    def refuse(self, exc: ValidationError) -> Decision:
        self.trail.append(Check(self.step, FAIL, exc.detail))
        done = {check.name for check in self.trail}
        self.trail.extend(
            Check(name, SKIP, _NOT_CHECKED) for name in STEPS if name not in done
        )
        return self._decision(False, exc.reason, exc.detail)

    def _decision(self, ok: bool, reason: str, detail: str) -> Decision:
        claims = self.claims
        return Decision(
            ok=ok,
            reason=reason,
            detail=detail,
            allowed_roles=list(self.allowed_roles),
            issuer=claims.get("iss") if claims is not None else None,
            subject=_string_claim(claims, "sub"),
            token_id=_string_claim(claims, "jti"),
            expires_at=self.expires_at,
            claims=claims,
            trail=self.trail,
            kid=self.kid,
            alg=self.alg,
            key_cache=self.key_cache,
            max_sessions=self.max_sessions,
        )

    def execute(
        self, token: object, requested_role: str, database: str, client_addr: str | None
    ) -> Decision:
        self.step = "header"
        header_b64, payload_b64, signature_b64 = _split(token)
        header = _json_object(header_b64, "header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Malformed("header has no alg string")
        self.alg = alg[:16]
        if alg not in SUPPORTED_ALGORITHMS:
            raise UnsupportedAlgorithm(f"alg {show(alg, 40)} is not supported")
        if "crit" in header:
            raise Malformed("crit extensions not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Malformed("kid is not a string")
        self.kid = kid[:64] if kid is not None else None
        payload = _json_object(payload_b64, "payload")
        signature = _b64decode(signature_b64)
        self._pass(
            f"alg {alg}, " + (f"kid {show(kid, 60)}" if kid is not None else "no kid")
        )

        self.step = "issuer"
        issuer = self._issuer(payload)
        self._pass(f"issuer {show(issuer.issuer)} is trusted")

        self.step = "algorithm"
        if alg not in issuer.algorithms:
            raise UnsupportedAlgorithm(
                f"alg {alg} is not allowed for this issuer (allowed: {', '.join(issuer.algorithms)})"
            )
        self._pass(f"{alg} allowed")

        self.step = "key"
        fetches = self.keys.fetch_count
        try:
            key = self.keys.get_key(issuer, alg, kid)
        finally:
            self.key_cache = "hit" if self.keys.fetch_count == fetches else "miss"
        self._pass(
            f"kid {show(key.kid, 60)}: {key.describe()}" if key.kid else key.describe()
        )

        self.step = "signature"
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        try:
            verified = _algorithm(alg).verify(signing_input, key.key, signature)
        except Exception:  # noqa: BLE001 - whatever breaks verification, it did not verify
            verified = False
        if not verified:
            raise BadSignature(
                f"signature does not verify with key {show(key.kid, 60)} ({alg})"
            )
        self.claims = payload
        self._pass(f"verified with {alg}")

        self._check_times(payload, issuer)
        self._check_audience(payload, issuer)

        self.step = "mapping"
        self._map_roles(payload, issuer, requested_role, database, client_addr)
        return self._decision(True, "ok", f"role {show(requested_role, 60)} allowed")

    def _issuer(self, payload: dict[str, Any]) -> IssuerConfig:
        iss = payload.get("iss")
        if iss is None:
            raise MissingClaim("token has no iss claim")
        if not isinstance(iss, str):
            raise Malformed("iss claim is not a string")
        issuer = self.config.issuers.get(iss)
        if issuer is None:
            raise UntrustedIssuer(
                f"issuer {show(iss)} is not configured in oauth.issuers"
            )
        if not issuer.enabled:
            raise UntrustedIssuer(f"issuer {show(iss)} is disabled")
        return issuer

    def _check_times(self, payload: dict[str, Any], issuer: IssuerConfig) -> None:
        now, leeway = self.now, issuer.leeway

        self.step = "exp"
        exp = _number(payload, "exp")
        if exp is None:
            raise MissingClaim("token has no exp claim")
        self.expires_at = datetime.fromtimestamp(exp, tz=timezone.utc)  # noqa: UP017 - datetime.UTC needs 3.11
        if now > exp + leeway:
            raise Expired(f"token expired {now - exp:.0f} s ago (leeway {leeway:g} s)")
        self._pass(f"expires in {exp - now:.0f} s")

        self.step = "nbf"
        nbf = _number(payload, "nbf")
        if nbf is None:
            self._skip("no nbf claim")
        elif nbf > now + leeway:
            raise NotYetValid(
                f"token not valid for another {nbf - now:.0f} s (leeway {leeway:g} s)"
            )
        else:
            self._pass(f"valid from {now - nbf:.0f} s ago")

        self.step = "iat"
        iat = _number(payload, "iat")
        if iat is None:
            self._skip("no iat claim")
        elif iat > now + leeway:
            raise NotYetValid(
                f"token issued in the future ({iat - now:.0f} s ahead, leeway {leeway:g} s)"
            )
        else:
            self._pass(f"issued {now - iat:.0f} s ago")

        self.step = "lifetime"
        limit = issuer.max_token_lifetime
        if limit is None:
            self._skip("no max_token_lifetime configured")
        else:
            lifetime = exp - (iat if iat is not None else now)
            since = "iat" if iat is not None else "now"
            if lifetime > limit:
                raise LifetimeTooLong(
                    f"token lifetime {lifetime:.0f} s (exp - {since}) exceeds "
                    f"max_token_lifetime {limit:g} s"
                )
            self._pass(f"lifetime {lifetime:.0f} s (exp - {since}) within {limit:g} s")

    def _check_audience(self, payload: dict[str, Any], issuer: IssuerConfig) -> None:
        self.step = "audience"
        aud = payload.get("aud")
        if aud is None:
            raise MissingClaim("token has no aud claim")
        if isinstance(aud, str):
            audiences = [aud]
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            audiences = aud
        else:
            raise Malformed("aud claim is neither a string nor a list of strings")
        accepted = [a for a in audiences if a in issuer.audiences]
        if not accepted:
            raise AudienceMismatch(
                f"audience {show(audiences[:10], 200)} not accepted; expected one of "
                f"{show(list(issuer.audiences[:10]), 200)}"
            )
        self._pass(f"audience {show(accepted[0])} accepted")

    def _map_roles(
        self,
        claims: dict[str, Any],
        issuer: IssuerConfig,
        requested_role: str,
        database: str,
        client_addr: str | None,
    ) -> None:
        client_ip = _client_ip(client_addr)
        allowed: set[str] = set()
        limits: list[int] = []
        excluded_by_database: set[str] = set()
        excluded_by_client: set[str] = set()
        for rule in self.config.rules_for(issuer.issuer):
            roles = _rule_roles(rule, claims)
            if not roles:
                continue
            if rule.databases is not None and database not in rule.databases:
                excluded_by_database |= roles
            elif rule.client_cidrs is not None and not (
                client_ip is not None
                and any(client_ip in net for net in rule.client_cidrs)
            ):
                excluded_by_client |= roles
            else:
                allowed |= roles
                if requested_role in roles and rule.max_sessions is not None:
                    limits.append(rule.max_sessions)
        self.allowed_roles = sorted(allowed)
        if issuer.max_sessions_per_subject is not None:
            limits.append(issuer.max_sessions_per_subject)
        self.max_sessions = min(limits) if limits else None
        role = show(requested_role, 60)
        if requested_role in allowed:
            self._pass(
                f"role {role} allowed; token allows {show(self.allowed_roles, 200)}"
            )
            return
        if requested_role in excluded_by_database:
            raise DatabaseNotAllowed(
                f"role {role} is not allowed for this token in database {show(database, 60)}"
            )
        if requested_role in excluded_by_client:
            where = (
                "a Unix-socket connection"
                if client_addr is None
                else show(client_addr, 60)
            )
            raise ClientNotAllowed(
                f"role {role} is not allowed for this token from {where}"
            )
        if self.allowed_roles:
            raise RoleNotAllowed(
                f"role {role} is not allowed; the token allows {show(self.allowed_roles, 200)}"
            )
        raise RoleNotAllowed(
            f"role {role} is not allowed; the token allows no role "
            "(no oauth.role_map rule matched)"
        )


def _string_claim(claims: dict[str, Any] | None, name: str) -> str | None:
    if claims is None:
        return None
    value = claims.get(name)
    return value if isinstance(value, str) else None
