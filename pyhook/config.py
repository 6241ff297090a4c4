"""Configuration built from the rows of oauth.issuers, oauth.role_map and oauth.revocations.

Rows are dicts as the PL/Python adapter's queries return them (intervals already
converted to seconds, text[] as lists, NULL as None). Regular expressions and CIDRs
are compiled here, once per configuration version; a rule that cannot be compiled
is skipped and noted in ``Config.skipped_rules``, never raised.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a runtime X | Y alias would need Python 3.10
    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every algorithm a token may use, in a stable order (never "none", never HS*).
ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(ALGORITHMS)

# Column defaults of oauth.issuers, used when a row (or a test) leaves a value out.
DEFAULT_LEEWAY = 30.0
DEFAULT_JWKS_REFRESH = 300.0
DEFAULT_JWKS_COOLDOWN = 30.0
DEFAULT_HTTP_TIMEOUT = 5.0
DEFAULT_JWKS_MAX_STALE = 86400.0
DEFAULT_JWKS_REFRESH_MIN = 60.0
DEFAULT_JWKS_REFRESH_MAX = 3600.0

_GROUP_REFERENCE = re.compile(r"\\(\d+)|\\g<(\d+)>")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_texts(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(v) for v in value if v is not None)


_ASCII_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)


def normalize_typ(value: str) -> str:
    """A ``typ`` value for an exact comparison but for ASCII case, nothing stripped.

    RFC 7515 4.1.9: a value without ``/`` means ``application/`` + value, so
    ``application/`` is dropped when no other ``/`` follows. Only ASCII letters
    are folded: ``str.lower`` would turn the Kelvin sign into ``k``.
    """
    value = value.translate(_ASCII_LOWER)
    short = value.removeprefix("application/")
    return value if "/" in short else short


_ANY_VALUE = object()


def _split_requirement(text: str) -> tuple[str, str | None]:
    """``path`` or ``path=value``; an ``=`` inside a double-quoted segment is part of the path."""
    quoted = False
    for position, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == "=" and not quoted:
            return text[:position], text[position + 1 :]
    return text, None


@dataclass(frozen=True)
class RequiredClaim:
    """One entry of oauth.issuers.required_claims: a claim path, optionally ``=value``.

    The value is JSON when it parses (``email_verified=true``) and a string otherwise
    (``hd=example.com``); a string claim also matches the value as written, since
    providers send numbers and booleans as strings (``repository_owner_id=65``
    matches ``"65"``). An entry that cannot be used refuses every token (fail closed).
    """

    text: str
    path: str
    value: Any = _ANY_VALUE
    usable: bool = True
    raw: str | None = None  # the value as written

    @property
    def presence_only(self) -> bool:
        return self.value is _ANY_VALUE

    @classmethod
    def parse(cls, text: str) -> RequiredClaim:
        path, raw = _split_requirement(text)
        if not path or path.strip() != path:
            return cls(text=text, path=path, usable=False)
        if raw is None:
            return cls(text=text, path=path)
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        return cls(text=text, path=path, value=value, raw=raw)


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str | None = None
    jwks: str | None = None  # static JWKS as JSON text; no network when set
    algorithms: tuple[str, ...] = tuple(sorted(SUPPORTED_ALGORITHMS))
    leeway: float = DEFAULT_LEEWAY
    max_token_lifetime: float | None = None
    enabled: bool = True
    jwks_refresh: float = DEFAULT_JWKS_REFRESH
    jwks_cooldown: float = DEFAULT_JWKS_COOLDOWN
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    allow_insecure_http: bool = False
    max_sessions_per_subject: int | None = None
    # accepted typ header values, normalized (None: any typ, or none)
    typ: tuple[str, ...] | None = None
    required_claims: tuple[RequiredClaim, ...] = ()
    # accepted azp values (None: azp not checked)
    authorized_parties: tuple[str, ...] | None = None
    # RFC 9068 2.2: tokens must name their subject; False for issuers that never do
    require_sub: bool = True
    # the last good keys keep working this long after their fetch when refreshes fail
    jwks_max_stale: float = DEFAULT_JWKS_MAX_STALE
    # Cache-Control max-age is honoured within [jwks_refresh_min, jwks_refresh_max]
    jwks_refresh_min: float = DEFAULT_JWKS_REFRESH_MIN
    jwks_refresh_max: float = DEFAULT_JWKS_REFRESH_MAX

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> IssuerConfig:
        def seconds(name: str, default: float | None) -> float | None:
            value = row.get(name)
            return default if value is None else float(value)

        algorithms = row.get("algorithms")
        return cls(
            issuer=str(row["issuer"]),
            audiences=tuple(
                str(a) for a in (row.get("audiences") or ()) if a is not None
            ),
            jwks_uri=row.get("jwks_uri"),
            jwks=row.get("jwks"),
            algorithms=(
                tuple(sorted(SUPPORTED_ALGORITHMS))
                if algorithms is None
                else tuple(str(a) for a in algorithms if a is not None)
            ),
            leeway=seconds("leeway", DEFAULT_LEEWAY) or 0.0,
            max_token_lifetime=seconds("max_token_lifetime", None),
            enabled=bool(row.get("enabled", True)),
            jwks_refresh=seconds("jwks_refresh", DEFAULT_JWKS_REFRESH)
            or DEFAULT_JWKS_REFRESH,
            jwks_cooldown=seconds("jwks_cooldown", DEFAULT_JWKS_COOLDOWN) or 0.0,
            http_timeout=seconds("http_timeout", DEFAULT_HTTP_TIMEOUT)
            or DEFAULT_HTTP_TIMEOUT,
            allow_insecure_http=bool(row.get("allow_insecure_http") or False),
            max_sessions_per_subject=_optional_int(row.get("max_sessions_per_subject")),
            typ=(
                None
                if row.get("typ") is None
                else tuple(normalize_typ(t) for t in _optional_texts(row["typ"]) or ())
            ),
            required_claims=tuple(
                RequiredClaim.parse(text)
                for text in _optional_texts(row.get("required_claims")) or ()
            ),
            authorized_parties=_optional_texts(row.get("authorized_parties")),
            # only an explicit false opts out; NULL or absent keeps the check
            require_sub=row.get("require_sub") is not False,
            jwks_max_stale=seconds("jwks_max_stale", DEFAULT_JWKS_MAX_STALE)
            or DEFAULT_JWKS_MAX_STALE,
            jwks_refresh_min=seconds("jwks_refresh_min", DEFAULT_JWKS_REFRESH_MIN)
            or DEFAULT_JWKS_REFRESH_MIN,
            jwks_refresh_max=seconds("jwks_refresh_max", DEFAULT_JWKS_REFRESH_MAX)
            or DEFAULT_JWKS_REFRESH_MAX,
        )

    def refresh_interval(self, max_age: float | None) -> float:
        """How long fetched keys count as fresh: the document's max-age within the
        issuer's floor and ceiling, or ``jwks_refresh`` when it sent none."""
        if max_age is None:
            return self.jwks_refresh
        return min(max(max_age, self.jwks_refresh_min), self.jwks_refresh_max)


@dataclass(frozen=True)
class RoleRule:
    id: int
    issuer: str
    claim: str
    pattern: str
    role: str  # literal role name or a template with \1 references
    regex: re.Pattern[str]
    databases: frozenset[str] | None = None
    client_cidrs: tuple[IPNetwork, ...] | None = None
    max_sessions: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RoleRule:
        """Compile one role_map row; raises ValueError (re.error is one) if it is unusable."""
        pattern = str(row["pattern"])
        role = str(row["role"])
        regex = re.compile(pattern)
        groups = [int(a or b) for a, b in _GROUP_REFERENCE.findall(role)]
        if groups and max(groups) > regex.groups:
            raise ValueError(
                f"role template uses group \\{max(groups)} but the pattern has "
                f"{regex.groups} group(s)"
            )
        databases = row.get("databases")
        cidrs = row.get("client_cidrs")
        return cls(
            id=int(row["id"]),
            issuer=str(row["issuer"]),
            claim=str(row.get("claim") or "sub"),
            pattern=pattern,
            role=role,
            regex=regex,
            databases=None
            if databases is None
            else frozenset(str(d) for d in databases),
            client_cidrs=(
                None
                if cidrs is None
                else tuple(ipaddress.ip_network(str(c), strict=False) for c in cidrs)
            ),
            max_sessions=_optional_int(row.get("max_sessions")),
        )


@dataclass(frozen=True)
class Revocation:
    """One row of oauth.revocations: every non-NULL column must match the token."""

    id: int
    issuer: str | None = None
    subject: str | None = None
    token_id: str | None = None
    reason: str | None = None
    expires_at: float | None = None  # epoch seconds; None: forever

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Revocation:
        def text(name: str) -> str | None:
            value = row.get(name)
            return None if value is None else str(value)

        expires = row.get("expires_at")
        return cls(
            id=int(row["id"]),
            issuer=text("issuer"),
            subject=text("subject"),
            token_id=text("token_id"),
            reason=text("reason"),
            expires_at=None if expires is None else float(expires),
        )

    def matches(
        self, issuer: str | None, subject: str | None, token_id: str | None, now: float
    ) -> bool:
        if self.expires_at is not None and now >= self.expires_at:
            return False
        if self.issuer is None and self.subject is None and self.token_id is None:
            return False  # the table's CHECK forbids it; never revoke everything
        return (
            (self.issuer is None or self.issuer == issuer)
            and (self.subject is None or self.subject == subject)
            and (self.token_id is None or self.token_id == token_id)
        )

    def describe(self) -> str:
        parts = [
            f"{name} {value!a}"
            for name, value in (
                ("token id", self.token_id),
                ("subject", self.subject),
                ("issuer", self.issuer),
            )
            if value is not None
        ]
        return f"revocation {self.id} (by {', '.join(parts)})"


@dataclass
class Config:
    issuers: dict[str, IssuerConfig]
    rules: list[RoleRule]
    version: object = None
    # one sentence per role_map row that could not be used (for the server log)
    skipped_rules: list[str] = field(default_factory=list)
    revocations: list[Revocation] = field(default_factory=list)
    _rules_by_issuer: dict[str, list[RoleRule]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # each revocation under its most specific column, for O(1) lookups per login
    _revocations_by: dict[tuple[str, str], list[Revocation]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_issuer: dict[str, list[RoleRule]] = {}
        for rule in sorted(self.rules, key=lambda r: r.id):
            by_issuer.setdefault(rule.issuer, []).append(rule)
        self._rules_by_issuer = by_issuer
        index: dict[tuple[str, str], list[Revocation]] = {}
        for rev in self.revocations:
            if rev.token_id is not None:
                key = ("token_id", rev.token_id)
            elif rev.subject is not None:
                key = ("subject", rev.subject)
            elif rev.issuer is not None:
                key = ("issuer", rev.issuer)
            else:
                continue
            index.setdefault(key, []).append(rev)
        self._revocations_by = index

    def rules_for(self, issuer: str) -> list[RoleRule]:
        """The rules of one issuer in id order."""
        return self._rules_by_issuer.get(issuer, [])

    def revocation_for(
        self, issuer: str | None, subject: str | None, token_id: str | None, now: float
    ) -> Revocation | None:
        """The first active revocation that covers this token, if any."""
        if not self._revocations_by:
            return None
        candidates: list[Revocation] = []
        for column, value in (
            ("token_id", token_id),
            ("subject", subject),
            ("issuer", issuer),
        ):
            if value is not None:
                candidates.extend(self._revocations_by.get((column, value), ()))
        for rev in sorted(candidates, key=lambda r: r.id):
            if rev.matches(issuer, subject, token_id, now):
                return rev
        return None

    @classmethod
    def from_rows(
        cls,
        issuer_rows: Iterable[Mapping[str, Any]],
        rule_rows: Iterable[Mapping[str, Any]],
        version: object = None,
        revocation_rows: Iterable[Mapping[str, Any]] = (),
    ) -> Config:
        issuers: dict[str, IssuerConfig] = {}
        for row in issuer_rows:
            cfg = IssuerConfig.from_row(row)
            issuers[cfg.issuer] = cfg
        rules: list[RoleRule] = []
        skipped: list[str] = []
        for row in rule_rows:
            try:
                rules.append(RoleRule.from_row(row))
            except Exception as exc:  # noqa: BLE001 - a broken rule must not break other logins
                skipped.append(f"role_map rule id {row.get('id')} skipped: {exc}")
        # a revocation row that cannot be read must not be skipped (fail closed): let it raise
        revocations = [Revocation.from_row(row) for row in revocation_rows]
        return cls(
            issuers=issuers,
            rules=rules,
            version=version,
            skipped_rules=skipped,
            revocations=revocations,
        )
