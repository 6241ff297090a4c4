"""Configuration built from the rows of oauth.issuers and oauth.role_map.

Rows are dicts as the PL/Python adapter's queries return them (intervals already
converted to seconds, text[] as lists, NULL as None). Regular expressions and CIDRs
are compiled here, once per configuration version; a rule that cannot be compiled
is skipped and noted in ``Config.skipped_rules``, never raised.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a runtime X | Y alias would need Python 3.10
    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(
    {
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
    }
)

# Column defaults of oauth.issuers, used when a row (or a test) leaves a value out.
DEFAULT_LEEWAY = 30.0
DEFAULT_JWKS_REFRESH = 300.0
DEFAULT_JWKS_COOLDOWN = 30.0
DEFAULT_HTTP_TIMEOUT = 5.0

_GROUP_REFERENCE = re.compile(r"\\(\d+)|\\g<(\d+)>")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


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
        )


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


@dataclass
class Config:
    issuers: dict[str, IssuerConfig]
    rules: list[RoleRule]
    version: object = None
    # one sentence per role_map row that could not be used (for the server log)
    skipped_rules: list[str] = field(default_factory=list)
    _rules_by_issuer: dict[str, list[RoleRule]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_issuer: dict[str, list[RoleRule]] = {}
        for rule in sorted(self.rules, key=lambda r: r.id):
            by_issuer.setdefault(rule.issuer, []).append(rule)
        self._rules_by_issuer = by_issuer

    def rules_for(self, issuer: str) -> list[RoleRule]:
        """The rules of one issuer in id order."""
        return self._rules_by_issuer.get(issuer, [])

    @classmethod
    def from_rows(
        cls,
        issuer_rows: Iterable[Mapping[str, Any]],
        rule_rows: Iterable[Mapping[str, Any]],
        version: object = None,
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
        return cls(issuers=issuers, rules=rules, version=version, skipped_rules=skipped)
