"""The validation core: one token in, one Decision out, never an exception.

Order matters: structure and header, issuer, algorithm, typ, key, signature; only
a token whose signature verified has its claims checked (times, audience, azp,
required claims), its revocation looked up, its identity mapped to roles, or its
claims echoed back in the decision.

Header members that point at keys (``jku``, ``x5u``, ``jwk``, ``x5c``) are never
followed: keys come from the issuer's configuration only.
"""

from __future__ import annotations

import binascii
import hashlib
import ipaddress
import json
import math
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jwt.algorithms import Algorithm, get_default_algorithms

from pyhook.claim_path import lookup, resolve
from pyhook.config import (
    SUPPORTED_ALGORITHMS,
    ClaimRules,
    Config,
    IssuerConfig,
    PatternMatch,
    RequiredClaim,
    RolePattern,
    RoleRule,
    normalize_typ,
)
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
    ProvisioningForbidden,
    Revoked,
    RoleNotAllowed,
    TooLarge,
    UnsupportedAlgorithm,
    UnsupportedType,
    UntrustedIssuer,
    ValidationError,
    ValidatorError,
    show,
)
from pyhook.jwks_cache import KeyStore
from pyhook.provisioning import (
    ProvisioningPlan,
    ProvisioningPolicy,
    groups_overflowed,
    name_problem,
)

# PG_OAUTH_TOKEN_CEILING in pg_oauth_ext/pg_oauth.h, the highest pg_oauth.max_token_bytes
# the C side accepts: the two must agree (tests/unit/test_validator.py compares them)
MAX_TOKEN_BYTES = 65530
# header and payload must be there; an empty signature is left for the
# algorithm and signature checks to refuse with a precise reason
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z: the range datetime can represent
_MIN_TIMESTAMP = -62135596800
_MAX_TIMESTAMP = 253402300799
_NOT_CHECKED = "not checked: an earlier check failed"
# real tokens nest a few levels; deeper is an attack on whatever parses them next
MAX_JSON_DEPTH = 32
# header members naming keys or where to get them: never followed, noted in the trail
_KEY_POINTERS = ("jku", "x5u", "jwk", "x5c")

_algorithms: dict[str, Algorithm] = {}

if TYPE_CHECKING:
    from collections.abc import Callable

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
    explain: bool = False,
    trail: bool = True,
) -> Decision:
    """Decide whether ``token`` may log in as ``requested_role``; never raises.

    ``ssl`` is unused and kept: it is an argument of oauth.validate, the contract with
    the C side (DESIGN.md), which enforces pg_oauth.require_ssl before asking for a token.
    ``explain`` adds detail a DBA wants and a login does not need: one trail
    entry per role_map rule, and where the keys came from. ``trail``: write the trail
    of checks; the workers' logins say False, as they need the decision only (explain
    always writes it).
    """
    run = _Validation(config, keys, time.time() if now is None else now, explain, trail)
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


_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64decode(segment: str) -> bytes:
    """The bytes of a base64url segment, which must be their one canonical spelling."""
    if len(segment) % 4 == 1:
        raise Malformed("a token segment has an impossible base64url length")
    # what base64.urlsafe_b64decode/urlsafe_b64encode do, without their wrappers
    try:
        data = segment.encode("ascii")
        raw = binascii.a2b_base64(data.translate(_TO_STANDARD) + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise Malformed("a token segment is not valid base64url") from None
    # set spare bits in the last character would give one token many spellings, and
    # the decoder skips characters outside the alphabet: only the one spelling passes
    if binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != data:
        raise Malformed("a token segment is not canonical base64url")
    return raw


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


def _too_deep(value: Any, limit: int) -> bool:
    """Whether objects/arrays nest more than ``limit`` levels (the top one is 1)."""
    # iterative: the point is not to recurse on attacker-controlled nesting
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        children = container.values() if isinstance(container, dict) else container
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


# one decoder for every token (json.loads with hooks would build one per call)
_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)


def _json_object(segment: str, part: str) -> dict[str, Any]:
    raw = _b64decode(segment)
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except _DuplicateMember as exc:
        raise Malformed(f"{part} has a duplicate member {show(str(exc), 40)}") from None
    except (ValueError, RecursionError):
        raise Malformed(f"{part} is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise Malformed(f"{part} is not a JSON object")
    # each level opens with a bracket: with no more brackets than levels allowed
    # in the whole text (strings included), the walk below cannot find too many
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _too_deep(value, MAX_JSON_DEPTH):
        raise Malformed(f"{part} is nested deeper than {MAX_JSON_DEPTH} levels")
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


# claims that leave Python as identities (issuer, subject and token id columns, the
# C side's hashes, the revocation lookup, azp against authorized_parties)
IDENTITY_CLAIMS = ("iss", "sub", "jti", "azp")


def _unstorable(value: str) -> bool:
    """Whether text holds what PostgreSQL text cannot: NUL or a lone surrogate.

    Such a value is stored with U+FFFD in place (sessions, audit, C hashes) but
    compared raw here, so two forms of one identity would disagree.
    """
    if value.isascii():
        return "\x00" in value
    return any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in value)


def _digest_prefix(value: str) -> str:
    """Enough of a value's SHA-256 to tell it from another, nothing to read it by.

    Compare: left(encode(sha256(convert_to(issuer, 'UTF8')), 'hex'), 12).
    """
    raw = value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:12]


def _check_identity_text(payload: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = payload.get(name)
        if isinstance(value, str) and _unstorable(value):
            raise Malformed(
                f"{name} claim contains NUL or an unpaired surrogate (\\u0000, "
                "\\ud800-\\udfff), which PostgreSQL text cannot store"
            )


def _number(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"{name} claim is not a number")
    # beyond years 1-9999 no date can be formed (login and explain alike): not a time
    if not math.isfinite(value) or not _MIN_TIMESTAMP <= value <= _MAX_TIMESTAMP:
        raise Malformed(f"{name} claim is out of range (years 1 to 9999)")
    return value


def _utc(value: float) -> datetime:
    """A time claim as a datetime; _number has bounded it to what datetime can hold."""
    return datetime.fromtimestamp(value, tz=timezone.utc)  # noqa: UP017 - 3.9 compatible


def _when(value: float, readable: bool) -> str:
    if not readable:  # formatting dates costs more than the rest of a step
        return f"{value:.0f}"
    # isoformat, unlike strftime's %Y, writes year 1 as 0001
    stamp = _utc(value).replace(tzinfo=None).isoformat(timespec="seconds")
    return f"{value:.0f} ({stamp}Z)"


def _regex_text(value: str, limit: int = 100) -> str:
    """A pattern quoted for reading: backslashes as written, anything unprintable escaped."""
    text = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in value[: limit + 1])
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"'{text}'"


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _requirement_met(claim: Any, requirement: RequiredClaim) -> bool:
    if claim is None:
        return False
    if requirement.presence_only:
        return True

    def equal(item: Any) -> bool:
        return _json_equal(item, requirement.value) or (
            isinstance(item, str) and item == requirement.raw
        )

    return equal(claim) or (isinstance(claim, list) and any(map(equal, claim)))


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


_SINGLE_GROUP = re.compile(r"\\([1-9])")
# a group reference, or any other escape (kept for Python's template rules)
_TEMPLATE_ESCAPE = re.compile(r"\\(?:([1-9][0-9]?)|g<([^>]*)>|(.))", re.DOTALL)


def _literal(piece: str) -> str:
    # Python's own template rules (\n, \\, a bad escape raises) for text without groups
    return re.sub(r"\A", piece, "", count=1) if "\\" in piece else piece


def _expand(match: PatternMatch, template: str) -> str:
    """The role a template names, as Python's Match.expand would name it: \\1-\\99,
    \\g<N> and \\g<name> are the pattern's groups (an unmatched one is empty)."""
    if "\\" not in template:
        return template
    single = _SINGLE_GROUP.fullmatch(template)
    if single is not None:
        return match.group(int(single.group(1))) or ""
    parts: list[str] = []
    literal_start = 0
    for ref in _TEMPLATE_ESCAPE.finditer(template):
        if ref.group(3) is not None:
            continue  # not a group: part of the literal text around it
        parts.append(_literal(template[literal_start : ref.start()]))
        name = ref.group(1) or ref.group(2)
        parts.append(match.group(int(name) if name.isdigit() else name) or "")
        literal_start = ref.end()
    parts.append(_literal(template[literal_start:]))
    return "".join(parts)


def _pattern_value(regex: RolePattern, template: str, value: str) -> str | None:
    """What ``template`` names when ``value`` fully matches ``regex`` (role_map's
    rules, provisioning's role names and group roles); None when it does not match
    or the template cannot be filled."""
    # RE2 sees UTF-8: a value with a lone surrogate has none, and neither it nor
    # one with NUL could become a role name PostgreSQL stores; it matches nothing
    if _unstorable(value):
        return None
    match = regex.fullmatch(value)
    if match is None:
        return None
    try:
        return _expand(match, template)
    except (re.error, IndexError, KeyError):
        return None


def _value_role(rule: RoleRule, value: str) -> str | None:
    # a function of the rule's pattern and template and the value only:
    # _matching_rules keeps its answers for literal rules (ClaimRules.literal_roles)
    return _pattern_value(rule.regex, rule.role, value) or None


def _rule_roles(rule: RoleRule, claims: dict[str, Any]) -> set[str]:
    roles: set[str] = set()
    for value in resolve(claims, rule.claim):
        role = _value_role(rule, value)
        if role is not None:
            roles.add(role)
    return roles


def _matching_rules(
    groups: tuple[ClaimRules, ...], claims: dict[str, Any]
) -> list[tuple[RoleRule, set[str]]]:
    """The rules that give the token a role, in id order, with the roles each gives.

    Each claim path is resolved once; a literal pattern is found through its value,
    only the other patterns are matched against every value.
    """
    found: dict[int, tuple[RoleRule, set[str]]] = {}
    for group in groups:
        values = resolve(claims, group.claim)
        if not values:
            continue
        for value in values:
            for rule in group.by_value.get(value, ()):
                key = (rule.id, value)
                if key in group.literal_roles:
                    role = group.literal_roles[key]
                else:
                    role = group.literal_roles[key] = _value_role(rule, value)
                if role is not None:
                    found.setdefault(rule.id, (rule, set()))[1].add(role)
        for rule in group.others:
            for value in values:
                role = _value_role(rule, value)
                if role is not None:
                    found.setdefault(rule.id, (rule, set()))[1].add(role)
    return [found[rule_id] for rule_id in sorted(found)]


if TYPE_CHECKING:
    # a trail sentence, or what makes it (only oauth.explain() asks)
    Lazy = str | Callable[[], str]


class _Validation:
    """State of one validation: the trail so far and what is known to be verified."""

    def __init__(
        self,
        config: Config,
        keys: KeyStore,
        now: float,
        explain: bool = False,
        trail: bool = True,
    ) -> None:
        self.config = config
        self.keys = keys
        self.now = now
        self.explain = explain
        self.tracing = explain or trail
        self.trail: list[Check] = []
        self.step = STEPS[0]
        self.input = ""  # what the current step looks at
        # set only once the signature verified: unverified data is never echoed
        self.claims: dict[str, Any] | None = None
        self.expires_at: datetime | None = None
        self.issued_at: float | None = None  # iat, once the times were checked
        self.allowed_roles: list[str] = []
        self.kid: str | None = None
        self.alg: str | None = None
        self.key_cache: str | None = None
        self.max_sessions: int | None = None
        # what the login's role needs from provisioning (oauth._provision)
        self.provisioning: ProvisioningPlan | None = None

    # The trail is what oauth.explain() shows. A worker's login needs only the decision,
    # so the sentences are passed as lambdas and written only when tracing: formatting
    # them was a sixth of a validation's Python (issue 24).
    def _begin(self, step: str, given: Lazy = "") -> None:
        self.step = step
        if self.tracing:
            self.input = given() if callable(given) else given

    def _pass(self, info: Lazy) -> None:
        if self.tracing:
            self.trail.append(Check(self.step, PASS, info() if callable(info) else info, self.input))

    def _skip(self, info: Lazy) -> None:
        if self.tracing:
            self.trail.append(Check(self.step, SKIP, info() if callable(info) else info, self.input))

    def refuse(self, exc: ValidationError) -> Decision:
        self.trail.append(Check(self.step, FAIL, exc.detail, self.input))
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
            provisioning=self.provisioning if ok else None,
        )

    def execute(
        self, token: object, requested_role: str, database: str, client_addr: str | None
    ) -> Decision:
        self._begin("header")
        header_b64, payload_b64, signature_b64 = _split(token)
        header = _json_object(header_b64, "header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Malformed("header has no alg string")
        self.alg = alg[:16]
        if self.tracing:
            self.input = f"alg {show(alg, 40)}"
        if alg not in SUPPORTED_ALGORITHMS:
            raise UnsupportedAlgorithm(f"alg {show(alg, 40)} is not supported")
        if "crit" in header:
            # no JWS extension is understood here, so any critical one is unknown
            raise Malformed(
                f"crit extensions not supported: {show(header['crit'], 100)}"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Malformed("kid is not a string")
        self.kid = kid[:64] if kid is not None else None
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            raise Malformed("typ is not a string")
        pointers = [name for name in _KEY_POINTERS if name in header]
        if self.tracing:
            self.input = ", ".join(
                [
                    f"alg {alg}",
                    f"kid {show(kid, 60)}" if kid is not None else "no kid",
                    f"typ {show(typ, 40)}" if typ is not None else "no typ",
                ]
            )
        payload = _json_object(payload_b64, "payload")
        signature = _b64decode(signature_b64)
        ignored = f"; {', '.join(pointers)} ignored (keys never come from the token)"
        self._pass(
            lambda: f"compact JWS, header {len(header_b64)} and payload {len(payload_b64)} "
            f"base64url characters" + (ignored if pointers else "")
        )

        self._begin("issuer")
        issuer = self._issuer(payload)
        self._pass(lambda: f"issuer {show(issuer.issuer)} is trusted")

        self._begin("algorithm", lambda: f"alg {alg}; allowed: {', '.join(issuer.algorithms)}")
        if alg not in issuer.algorithms:
            raise UnsupportedAlgorithm(
                f"alg {alg} is not allowed for this issuer (allowed: {', '.join(issuer.algorithms)})"
            )
        self._pass(lambda: f"{alg} allowed")

        self._check_typ(typ, issuer)

        self._begin("key", lambda: f"kid {show(kid, 60)}" if kid is not None else "no kid")
        fetches = self.keys.fetch_count
        try:
            key = self.keys.get_key(issuer, alg, kid)
        finally:
            self.key_cache = "hit" if self.keys.fetch_count == fetches else "miss"
            if self.explain:
                self.input += f"; {self.keys.describe(issuer)}"
        self._pass(
            lambda: f"kid {show(key.kid, 60)}: {key.describe()}" if key.kid else key.describe()
        )

        self._begin(
            "signature", lambda: f"{alg} over {len(header_b64) + len(payload_b64) + 1} bytes"
        )
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        # RFC 8017 8.1.2/8.2.2 (OpenSSL lets a PSS signature one byte short
        # pass), JWS raw r||s (RFC 7518 3.4), RFC 8032: exactly this many bytes
        size = key.signature_size()
        if len(signature) != size:
            raise BadSignature(
                f"signature is {len(signature)} bytes; {alg} with key "
                f"{show(key.kid, 60)} ({key.describe()}) needs exactly {size}"
            )
        try:
            verified = _algorithm(alg).verify(signing_input, key.key, signature)
        except Exception:  # noqa: BLE001 - whatever breaks verification, it did not verify
            verified = False
        if not verified:
            raise BadSignature(
                f"signature does not verify with key {show(key.kid, 60)} ({alg})"
            )
        self.claims = payload
        self._pass(lambda: f"verified with {alg}")

        self._check_times(payload, issuer)
        self._check_audience(payload, issuer)
        self._check_azp(payload, issuer)
        self._check_required(payload, issuer)
        self._check_revocation(payload)

        self._begin(
            "mapping",
            lambda: f"role {show(requested_role, 60)}, database {show(database, 60)}, client "
            + ("Unix socket" if client_addr is None else show(client_addr, 60)),
        )
        self._map_roles(payload, issuer, requested_role, database, client_addr)
        return self._decision(True, "ok", f"role {show(requested_role, 60)} allowed")

    def _check_typ(self, typ: str | None, issuer: IssuerConfig) -> None:
        accepted = issuer.typ
        given = "no typ" if typ is None else f"typ {show(typ, 40)}"
        if accepted is None:
            self._begin("typ", lambda: given)
            self._skip("this issuer requires no particular typ")
            return
        self._begin("typ", lambda: f"{given}; accepted: {', '.join(accepted) or 'none'}")
        if typ is None:
            raise UnsupportedType(
                f"token has no typ header; this issuer requires {show(list(accepted), 100)}"
            )
        if normalize_typ(typ) not in accepted:
            raise UnsupportedType(
                f"typ {show(typ, 40)} is not accepted for this issuer "
                f"(accepted: {show(list(accepted), 100)})"
            )
        self._pass(lambda: f"typ {show(typ, 40)} accepted")

    def _issuer(self, payload: dict[str, Any]) -> IssuerConfig:
        iss = payload.get("iss")
        if iss is None:
            raise MissingClaim("token has no iss claim")
        if not isinstance(iss, str):
            raise Malformed("iss claim is not a string")
        _check_identity_text(payload, ("iss",))
        if self.tracing:
            self.input = f"iss {show(iss)}"
        issuer = self.config.issuers.get(iss)
        if issuer is None:
            # the signature is not verified yet: the value is the sender's, and
            # reaches the server log and audit_log; explain's trail shows it
            raise UntrustedIssuer(
                "the token's issuer is not configured in oauth.issuers (unverified "
                f"iss of {len(iss)} characters, SHA-256 {_digest_prefix(iss)}...; "
                "oauth.explain with the token shows it)"
            )
        if not issuer.enabled:
            raise UntrustedIssuer(f"issuer {show(iss)} is disabled")
        return issuer

    def _check_times(self, payload: dict[str, Any], issuer: IssuerConfig) -> None:
        now, leeway = self.now, issuer.leeway
        at = f"now {_when(now, self.explain)}, leeway {leeway:g} s" if self.tracing else ""

        self._begin("exp", lambda: f"no exp; {at}")
        exp = _number(payload, "exp")
        if exp is None:
            raise MissingClaim("token has no exp claim")
        if self.tracing:
            self.input = f"exp {_when(exp, self.explain)}; {at}"
        self.expires_at = _utc(exp)
        if now > exp + leeway:
            raise Expired(f"token expired {now - exp:.0f} s ago (leeway {leeway:g} s)")
        self._pass(lambda: f"expires in {exp - now:.0f} s")

        self._not_after_now(
            payload, "nbf", leeway,
            lambda ahead: f"token not valid for another {ahead:.0f} s (leeway {leeway:g} s)",
            lambda ago: f"valid from {ago:.0f} s ago",
        )
        iat = self.issued_at = self._not_after_now(
            payload, "iat", leeway,
            lambda ahead: (
                f"token issued in the future ({ahead:.0f} s ahead, leeway {leeway:g} s)"
            ),
            lambda ago: f"issued {ago:.0f} s ago",
        )

        limit = issuer.max_token_lifetime
        self._begin(
            "lifetime",
            lambda: "max_token_lifetime " + ("not set" if limit is None else f"{limit:g} s"),
        )
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
            self._pass(lambda: f"lifetime {lifetime:.0f} s (exp - {since}) within {limit:g} s")

    def _not_after_now(
        self,
        payload: dict[str, Any],
        name: str,
        leeway: float,
        too_early: Callable[[float], str],
        passed: Callable[[float], str],
    ) -> float | None:
        """One of nbf/iat: absent is fine, later than now + leeway is refused."""
        self._begin(name, lambda: f"no {name}")
        value = _number(payload, name)
        if value is None:
            self._skip(lambda: f"no {name} claim")
            return None
        if self.tracing:
            self.input = f"{name} {_when(value, self.explain)}"
        if value > self.now + leeway:
            raise NotYetValid(too_early(value - self.now))
        self._pass(lambda: passed(self.now - value))
        return value

    def _check_audience(self, payload: dict[str, Any], issuer: IssuerConfig) -> None:
        aud = payload.get("aud")
        self._begin(
            "audience",
            lambda: f"aud {show(aud, 200)}; accepted: {show(list(issuer.audiences[:10]), 200)}",
        )
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
        self._pass(lambda: f"audience {show(accepted[0])} accepted")

    def _check_azp(self, payload: dict[str, Any], issuer: IssuerConfig) -> None:
        azp = payload.get("azp")
        given = "no azp" if azp is None else f"azp {show(azp, 100)}"
        parties = issuer.authorized_parties
        if parties is None:
            self._begin("azp", lambda: given)
            self._skip("no authorized_parties configured")
            return
        self._begin("azp", lambda: f"{given}; accepted: {show(list(parties[:10]), 200)}")
        if azp is None:
            raise MissingClaim("token has no azp claim (authorized_parties is set)")
        if not isinstance(azp, str):
            raise Malformed("azp claim is not a string")
        _check_identity_text(payload, ("azp",))
        if azp not in parties:
            raise AudienceMismatch(
                f"authorized party (azp) {show(azp, 100)} not accepted; expected one of "
                f"{show(list(parties[:10]), 200)}"
            )
        self._pass(lambda: f"azp {show(azp, 100)} accepted")

    def _check_required(self, payload: dict[str, Any], issuer: IssuerConfig) -> None:
        wanted = [r.text for r in issuer.required_claims]
        self._begin(
            "required_claims",
            lambda: ("sub required, jti a string if present" if issuer.require_sub
             else "sub (not required), jti strings if present")
            + (f"; required: {show(wanted, 200)}" if wanted else ""),
        )  # fmt: skip
        for name in ("sub", "jti"):
            value = payload.get(name)
            if value is not None and not isinstance(value, str):
                raise Malformed(f"{name} claim is not a string")
        _check_identity_text(payload, IDENTITY_CLAIMS)
        sub = payload.get("sub")
        if issuer.require_sub and not sub:
            # RFC 9068 2.2: an access token names its subject
            raise MissingClaim(
                ("sub claim is empty" if sub == "" else "token has no sub claim")
                + "; an issuer whose tokens have none needs require_sub = false"
            )
        for requirement in issuer.required_claims:
            if not requirement.usable:
                raise MissingClaim(
                    f"required_claims entry {show(requirement.text, 100)} is not a "
                    "usable claim path; every token of this issuer is refused"
                )
            value = lookup(payload, requirement.path)
            if _requirement_met(value, requirement):
                continue
            if value is None:
                raise MissingClaim(
                    f"required claim {show(requirement.path, 100)} is missing"
                )
            raise MissingClaim(
                f"required claim {show(requirement.path, 100)} is {show(value, 100)}, "
                f"not {show(requirement.value, 100)}"
            )
        if wanted:
            self._pass(lambda: f"{len(wanted)} required claims present")
        else:
            self._pass("no required_claims configured")

    def _check_revocation(self, payload: dict[str, Any]) -> None:
        iss = payload.get("iss")
        sub = _string_claim(payload, "sub")
        jti = _string_claim(payload, "jti")
        self._begin(
            "revocation",
            lambda: f"issuer {show(iss)}, subject {show(sub, 100)}, token id {show(jti, 100)}",
        )
        rev = self.config.revocation_for(iss, sub, jti, self.now, self.issued_at)
        if rev is not None:
            until = (
                ""
                if rev.expires_at is None
                else f" until {_when(rev.expires_at, True)}"
            )
            why = "" if not rev.reason else f": {show(rev.reason, 120)}"
            raise Revoked(f"token revoked by {rev.describe()}{until}{why}")
        self._pass(lambda: f"not revoked ({len(self.config.revocations)} revocations loaded)")

    def _map_roles(
        self,
        claims: dict[str, Any],
        issuer: IssuerConfig,
        requested_role: str,
        database: str,
        client_addr: str | None,
    ) -> None:
        # parsed only if a rule limits client addresses, then once
        parsed: list[Any] = []

        def client_ip() -> Any:
            if not parsed:
                parsed.append(_client_ip(client_addr))
            return parsed[0]

        allowed: set[str] = set()
        limits: list[int] = []
        excluded_by_database: set[str] = set()
        excluded_by_client: set[str] = set()
        rule_checks: list[Check] = []
        # explain shows every rule; a login looks only at the rules that match
        candidates = (
            [(rule, _rule_roles(rule, claims)) for rule in self.config.rules_for(issuer.issuer)]
            if self.explain
            else _matching_rules(self.config.claim_rules(issuer.issuer), claims)
        )
        for rule, roles in candidates:
            if not roles:
                if self.explain:
                    rule_checks.append(self._rule_check(rule, claims, SKIP, "no match"))
                continue
            if rule.databases is not None and database not in rule.databases:
                excluded_by_database |= roles
                outcome, why = FAIL, f"not for database {show(database, 60)}"
            elif rule.client_cidrs is not None and not (
                client_ip() is not None
                and any(client_ip() in net for net in rule.client_cidrs)
            ):
                excluded_by_client |= roles
                outcome, why = FAIL, "not for this client address"
            else:
                allowed |= roles
                outcome, why = PASS, "applies"
                if requested_role in roles and rule.max_sessions is not None:
                    limits.append(rule.max_sessions)
            if self.explain:
                rule_checks.append(
                    self._rule_check(
                        rule,
                        claims,
                        outcome,
                        f"gives {show(sorted(roles), 200)}: {why}",
                    )
                )
        self.trail.extend(rule_checks)
        policy = self.config.provisioning.get(issuer.issuer)
        if policy is not None:
            plan = self._provisioning_plan(policy, claims, requested_role, allowed)
            if plan is not None:
                allowed.add(plan.role)
                self.provisioning = plan
        self.allowed_roles = sorted(allowed)
        if issuer.max_sessions_per_subject is not None:
            limits.append(issuer.max_sessions_per_subject)
        self.max_sessions = min(limits) if limits else None
        role = show(requested_role, 60)
        here = (
            f"the token allows {show(self.allowed_roles, 200)} here"
            if self.allowed_roles
            else "the token allows no role here"
        )
        if requested_role in allowed:
            self._pass(
                lambda: f"role {role} allowed; token allows {show(self.allowed_roles, 200)}"
            )
            return
        if requested_role == "" and len(self.allowed_roles) == 1:
            # oauth.authenticate(token) names no role: the token's only one
            self._pass(lambda: f"no role named; the token allows {show(self.allowed_roles, 200)}")
            return
        if requested_role == "" and self.allowed_roles:
            raise RoleNotAllowed(
                f"no role was named and the token allows {show(self.allowed_roles, 200)}: "
                "name one"
            )
        if requested_role in excluded_by_database:
            raise DatabaseNotAllowed(
                f"role {role} is not allowed for this token in database "
                f"{show(database, 60)}; {here}"
            )
        if requested_role in excluded_by_client:
            where = (
                "a Unix-socket connection"
                if client_addr is None
                else show(client_addr, 60)
            )
            raise ClientNotAllowed(
                f"role {role} is not allowed for this token from {where}; {here}"
            )
        if self.allowed_roles:
            raise RoleNotAllowed(
                f"role {role} is not allowed; the token allows {show(self.allowed_roles, 200)}"
            )
        elsewhere = sorted(excluded_by_database | excluded_by_client)
        raise RoleNotAllowed(
            f"role {role} is not allowed; the token allows no role"
            + (
                f" here (elsewhere: {show(elsewhere, 200)})"
                if elsewhere
                else " (no oauth.role_map rule matched)"
            )
        )

    def _provisioning_plan(
        self,
        policy: ProvisioningPolicy,
        claims: dict[str, Any],
        requested_role: str,
        mapped: set[str],
    ) -> ProvisioningPlan | None:
        """The role the issuer's provisioning policy names for this token, and the
        group roles its groups give, when that role is the one asked for (or none
        was named). Raises ProvisioningForbidden when it is asked for and may not be."""
        name = None
        for value in resolve(claims, policy.role_claim):
            name = _pattern_value(
                policy.regex, policy.role_name, value.lower() if policy.lowercase else value
            )
            if name is not None:
                break
        if name is None:
            self._skip_provisioning(policy, "no value of the claim matches role_pattern")
            return None
        if policy.lowercase:
            name = name.lower()  # the template's own text too
        if requested_role not in (name, ""):
            self._skip_provisioning(
                policy, f"names role {show(name, 80)}, not the one asked for"
            )
            return None
        self._begin(
            "provisioning",
            lambda: f"{policy.role_claim} -> role {show(name, 80)}"
            + (f"; groups from {policy.groups_claim}" if policy.groups_claim else ""),
        )
        problem = name_problem(name)
        if problem is not None:
            raise ProvisioningForbidden(f"role {show(name, 80)} cannot be provisioned: {problem}")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or _unstorable(subject):
            raise ProvisioningForbidden(
                "the token has no usable sub claim: a provisioned role is recorded by its subject"
            )
        groups: tuple[str, ...] | None = None
        count = 0
        skipped: list[str] = []
        if policy.groups_claim is not None:
            if groups_overflowed(claims, policy.groups_claim):
                raise ProvisioningForbidden(
                    f"the identity provider left the groups out of the token ({policy.groups_claim} "
                    "overflowed: _claim_names or hasgroups); memberships cannot be synced"
                )
            values = resolve(claims, policy.groups_claim)
            count = len(values)
            if count > policy.max_groups:
                raise ProvisioningForbidden(
                    f"the token carries {count} groups in {policy.groups_claim}, more than the "
                    f"policy's max_groups ({policy.max_groups})"
                )
            roles: set[str] = set()
            for value in values:
                for rule in policy.group_rules:
                    role = _pattern_value(rule.regex, rule.role, value)
                    if role is None:
                        continue
                    # a name the DBA wrote is theirs; one a group's name made must
                    # pass the same rules as a role pg_oauth would create
                    made = "\\" in rule.role
                    problem = name_problem(role) if made else (None if role else "empty")
                    if problem is None:
                        roles.add(role)
                    else:
                        skipped.append(
                            f"group {show(value, 80)} gives no role: rule {rule.id} makes "
                            f"{show(role, 80)}, which {problem}"
                        )
            groups = tuple(sorted(roles))
        self._pass(
            lambda: f"role {show(name, 80)}"
            + ("" if groups is None else f"; {count} groups give {show(list(groups), 200)}")
        )
        return ProvisioningPlan(
            issuer=policy.issuer,
            subject=subject,
            role=name,
            groups=groups,
            token_groups=count,
            mapped=name in mapped,
            skipped=tuple(skipped[:10]),
        )

    def _skip_provisioning(self, policy: ProvisioningPolicy, why: str) -> None:
        if self.explain:
            self._begin("provisioning", lambda: f"{policy.role_claim} (issuer's provisioning policy)")
            self._skip(lambda: why)

    @staticmethod
    def _rule_check(
        rule: RoleRule, claims: dict[str, Any], outcome: str, info: str
    ) -> Check:
        values = resolve(claims, rule.claim)
        given = (
            f"{rule.claim} = {show(values[:10], 200)}"
            if values
            else f"{rule.claim} absent"
        )
        limits = []
        if rule.databases is not None:
            limits.append(f"databases {show(sorted(rule.databases), 100)}")
        if rule.client_cidrs is not None:
            limits.append(f"clients {', '.join(str(n) for n in rule.client_cidrs)}")
        return Check(
            f"rule {rule.id}",
            outcome,
            info,
            f"{given}; pattern {_regex_text(rule.pattern)} -> role {_regex_text(rule.role)}"
            + (f" ({'; '.join(limits)})" if limits else ""),
        )


def _string_claim(claims: dict[str, Any] | None, name: str) -> str | None:
    if claims is None:
        return None
    value = claims.get(name)
    return value if isinstance(value, str) else None
