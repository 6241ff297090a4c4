"""Configuration built from the rows of oauth.issuers, oauth.role_map and oauth.revocations.

Rows are dicts as the PL/Python adapter's queries return them (intervals already
converted to seconds, text[] as lists, NULL as None). Regular expressions and CIDRs
are compiled here, once per configuration version; a rule that cannot be compiled
is skipped and noted in ``Config.skipped_rules``, never raised.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import ipaddress
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import re2

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
    allow_loopback_http: bool = False
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
            allow_loopback_http=bool(row.get("allow_loopback_http") or False),
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


class PatternMatch(Protocol):
    def group(self, index: int | str) -> str | None: ...


class RolePattern(Protocol):
    """A compiled role_map pattern (RE2's, through google-re2)."""

    @property
    def groups(self) -> int: ...

    def fullmatch(self, text: str) -> PatternMatch | None: ...


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    return options


_RE2_OPTIONS = _re2_options()


def compile_role_pattern(pattern: str) -> RolePattern:
    """A role_map pattern compiled by RE2, whose matching time is linear in the value.

    Python's backtracking engine takes exponential time on patterns such as
    ``([a-z]+)*@corp\\.com`` against values a user controls (email, name, groups),
    holding a validator worker. RE2 has no backreferences, lookaround or possessive
    quantifiers: such a pattern raises ValueError (the rule is refused when written,
    skipped with a warning when loaded).
    """
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        why = exc.args[0] if exc.args else ""
        if isinstance(why, bytes):
            why = why.decode("utf-8", "replace")
        raise ValueError(
            f"pattern is not supported by RE2 ({why}): role_map patterns run in "
            "linear time, without backreferences, lookaround or possessive quantifiers"
        ) from None


def role_rule_problem(pattern: str, role: str) -> str | None:
    """Why a role_map row could not be used (None: it can); for the SQL trigger."""
    try:
        regex = compile_role_pattern(pattern)
    except ValueError as exc:
        return str(exc)
    groups = [int(a or b) for a, b in _GROUP_REFERENCE.findall(role)]
    if groups and max(groups) > regex.groups:
        return (
            f"role template uses group \\{max(groups)} but the pattern has "
            f"{regex.groups} group(s)"
        )
    return None


# Outside a character class these make a pattern more than literal text.
_REGEX_SPECIAL = frozenset(".^$*+?{}[]|()")


def literal_values(pattern: str) -> frozenset[str] | None:
    """Every string ``pattern`` fully matches, when that is a finite list of literals.

    ``alice``, ``example\\.com``, ``(alice|bob)``, ``^(?:a|b)$``: a literal or one
    alternation of literals, optionally in one group and between ``^`` and ``$``. None
    for anything else (classes, quantifiers, ``\\d``, flags, nested groups): those
    are matched by the regular expression on every value. Conservative on purpose:
    a pattern read wrongly here would let a rule miss a value it matches.
    """
    tokens: list[tuple[bool, str]] = []  # (special, character)
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 == len(pattern):
                return None
            escaped = pattern[i + 1]
            if escaped.isascii() and escaped.isalnum():
                return None  # \d, \w, \1, \n, \A ...: not a literal character
            tokens.append((False, escaped))
            i += 2
            continue
        tokens.append((char in _REGEX_SPECIAL, char))
        i += 1
    if tokens[:1] == [(True, "^")]:
        tokens = tokens[1:]
    if tokens[-1:] == [(True, "$")]:
        tokens = tokens[:-1]
    if tokens[:1] == [(True, "(")] and tokens[-1:] == [(True, ")")]:
        tokens = tokens[1:-1]
        if tokens[:1] == [(True, "?")]:
            if tokens[1:2] != [(False, ":")]:
                return None  # (?i), (?P<name>...), lookarounds
            tokens = tokens[2:]
    alternatives = [""]
    for special, char in tokens:
        if not special:
            alternatives[-1] += char
        elif char == "|":
            alternatives.append("")
        else:
            return None
    return frozenset(alternatives)


@dataclass(frozen=True)
class CompiledPattern:
    """A role_map pattern compiled once, and the values it matches when it is literal."""

    regex: RolePattern
    literals: frozenset[str] | None

    @classmethod
    def compile(cls, pattern: str) -> CompiledPattern:
        regex = compile_role_pattern(pattern)
        literals = literal_values(pattern)
        # belt and braces: every value read off the pattern must really match it
        if literals is not None and not all(regex.fullmatch(v) for v in literals):
            literals = None
        return cls(regex, literals)


# pattern text -> compiled pattern; kept by the caller across configuration loads
PatternCache = dict[str, CompiledPattern]


@dataclass(frozen=True)
class RoleRule:
    id: int
    issuer: str
    claim: str
    pattern: str
    role: str  # literal role name or a template with \1 references
    regex: RolePattern
    databases: frozenset[str] | None = None
    client_cidrs: tuple[IPNetwork, ...] | None = None
    max_sessions: int | None = None
    # every value the pattern fully matches, when it is a list of literals (None: a regex)
    literals: frozenset[str] | None = None

    @classmethod
    def from_row(
        cls, row: Mapping[str, Any], patterns: PatternCache | None = None
    ) -> RoleRule:
        """Compile one role_map row; raises ValueError (re.error is one) if it is unusable.

        ``patterns``: compiled patterns to reuse and to add to (a reload of thousands
        of rules then compiles only the new ones).
        """
        pattern = str(row["pattern"])
        role = str(row["role"])
        compiled = None if patterns is None else patterns.get(pattern)
        if compiled is None:
            compiled = CompiledPattern.compile(pattern)
            if patterns is not None:
                patterns[pattern] = compiled
        regex = compiled.regex
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
            literals=compiled.literals,
        )


@dataclass(frozen=True)
class ClaimRules:
    """The rules of one issuer that read one claim path.

    A login resolves the path once; literal patterns are found by the value in a
    dict, only the others are matched value by value.
    """

    claim: str
    by_value: dict[str, tuple[RoleRule, ...]]
    others: tuple[RoleRule, ...]
    # (rule id, value) -> the role a literal rule gives that value, or None: filled
    # by logins, bounded by the rules' literals, gone with this configuration
    literal_roles: dict[tuple[int, str], str | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, claim: str, rules: Iterable[RoleRule]) -> ClaimRules:
        by_value: dict[str, list[RoleRule]] = {}
        others: list[RoleRule] = []
        for rule in rules:
            if rule.literals is None:
                others.append(rule)
            else:
                for value in rule.literals:
                    by_value.setdefault(value, []).append(rule)
        return cls(claim, {v: tuple(r) for v, r in by_value.items()}, tuple(others))


class Revocation(NamedTuple):
    """One row of oauth.revocations: every non-NULL column must match the token.

    With issued_before, only tokens issued (iat) before that moment are covered, so
    that tokens issued since still log in; a token without iat is covered (fail
    closed: nothing says it was issued after the incident).

    A tuple, not a dataclass: a configuration may hold hundreds of thousands.
    """

    id: int
    issuer: str | None = None
    subject: str | None = None
    token_id: str | None = None
    reason: str | None = None
    expires_at: float | None = None  # epoch seconds; None: forever
    issued_before: float | None = None  # epoch seconds; None: whenever issued

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Revocation:
        issuer, subject, token_id, reason, expires, before = (
            row.get("issuer"),
            row.get("subject"),
            row.get("token_id"),
            row.get("reason"),
            row.get("expires_at"),
            row.get("issued_before"),
        )
        return cls(
            int(row["id"]),
            None if issuer is None else str(issuer),
            None if subject is None else str(subject),
            None if token_id is None else str(token_id),
            None if reason is None else str(reason),
            None if expires is None else float(expires),
            None if before is None else float(before),
        )

    def matches(
        self,
        issuer: str | None,
        subject: str | None,
        token_id: str | None,
        now: float,
        issued_at: float | None = None,
    ) -> bool:
        if self.expires_at is not None and now >= self.expires_at:
            return False
        if self.issuer is None and self.subject is None and self.token_id is None:
            return False  # the table's CHECK forbids it; never revoke everything
        # no iat: covered (fail closed), like a revocation without issued_before
        if (
            self.issued_before is not None
            and issued_at is not None
            and issued_at >= self.issued_before
        ):
            return False
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
        before = (
            ""
            if self.issued_before is None
            else ", of tokens issued before "
            + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.issued_before))
        )
        return f"revocation {self.id} (by {', '.join(parts)}{before})"


class Revocations:
    """The revocations of a configuration, each under its most specific column, so a
    login looks up three keys whatever their number. Rows are only ever added here
    (a configuration change that removes or changes rows builds a new set)."""

    def __init__(self, revocations: Iterable[Revocation] = ()) -> None:
        self._by_token_id: dict[str, list[Revocation]] = {}
        self._by_subject: dict[str, list[Revocation]] = {}
        self._by_issuer: dict[str, list[Revocation]] = {}
        self._count = 0
        self.highest_id = 0  # the highest id added
        self.add(revocations)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Revocations:
        # a row that cannot be read must not be skipped (fail closed): let it raise
        with _collector_paused():
            return cls([Revocation.from_row(row) for row in rows])

    def add(self, revocations: Iterable[Revocation]) -> None:
        for rev in revocations:
            if rev.token_id is not None:
                index, key = self._by_token_id, rev.token_id
            elif rev.subject is not None:
                index, key = self._by_subject, rev.subject
            elif rev.issuer is not None:
                index, key = self._by_issuer, rev.issuer
            else:
                continue
            found = index.get(key)
            if found is None:
                index[key] = [rev]
            else:
                found.append(rev)
            self._count += 1
            self.highest_id = max(self.highest_id, rev.id)

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Add rows (all read before any is added); how many."""
        with _collector_paused():
            revocations = [Revocation.from_row(row) for row in rows]
            self.add(revocations)
        return len(revocations)

    def __len__(self) -> int:
        return self._count

    def covering(
        self,
        issuer: str | None,
        subject: str | None,
        token_id: str | None,
        now: float,
        issued_at: float | None = None,
    ) -> Revocation | None:
        """The first active revocation (by id) that covers this token (issued at
        issued_at, its iat; None: it has none), if any."""
        if not self._count:
            return None
        candidates: list[Revocation] = []
        for index, value in (
            (self._by_token_id, token_id),
            (self._by_subject, subject),
            (self._by_issuer, issuer),
        ):
            if value is not None:
                candidates.extend(index.get(value, ()))
        for rev in sorted(candidates):
            if rev.matches(issuer, subject, token_id, now, issued_at):
                return rev
        return None


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while many acyclic objects are made at once: each
    pass would walk all of them again (a 100k-row load took twice as long)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Config:
    issuers: dict[str, IssuerConfig]
    rules: list[RoleRule]
    version: object = None
    # one sentence per role_map row that could not be used (for the server log)
    skipped_rules: list[str] = field(default_factory=list)
    revocations: Revocations = field(default_factory=Revocations)
    # oauth.provisioning and oauth.group_roles by issuer (pyhook.provisioning);
    # the adapter reads them again whenever the configuration version moves
    provisioning: Mapping[str, Any] = field(default_factory=dict)
    _rules_by_issuer: dict[str, list[RoleRule]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _claim_rules: dict[str, tuple[ClaimRules, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.revocations, Revocations):
            self.revocations = Revocations(self.revocations)
        self._index_rules()

    def _index_rules(self) -> None:
        by_issuer: dict[str, list[RoleRule]] = {}
        for rule in sorted(self.rules, key=lambda r: r.id):
            by_issuer.setdefault(rule.issuer, []).append(rule)
        self._rules_by_issuer = by_issuer
        claim_rules: dict[str, tuple[ClaimRules, ...]] = {}
        for issuer, rules in by_issuer.items():
            by_claim: dict[str, list[RoleRule]] = {}
            for rule in rules:
                by_claim.setdefault(rule.claim, []).append(rule)
            claim_rules[issuer] = tuple(
                ClaimRules.build(claim, group) for claim, group in by_claim.items()
            )
        self._claim_rules = claim_rules

    def updated(
        self,
        version: object,
        issuers: dict[str, IssuerConfig] | None = None,
        rules: tuple[list[RoleRule], list[str]] | None = None,
        revocations: Revocations | None = None,
    ) -> Config:
        """A copy with the parts given replaced (``rules``: the rules and the skipped
        rows' sentences); the others, and their indexes, are shared."""
        new = copy.copy(self)
        new.version = version
        if issuers is not None:
            new.issuers = issuers
        if revocations is not None:
            new.revocations = revocations
        if rules is not None:
            new.rules, new.skipped_rules = rules
            new._index_rules()
        return new

    def rules_for(self, issuer: str) -> list[RoleRule]:
        """The rules of one issuer in id order."""
        return self._rules_by_issuer.get(issuer, [])

    def claim_rules(self, issuer: str) -> tuple[ClaimRules, ...]:
        """The rules of one issuer grouped by the claim they read."""
        return self._claim_rules.get(issuer, ())

    def revocation_for(
        self,
        issuer: str | None,
        subject: str | None,
        token_id: str | None,
        now: float,
        issued_at: float | None = None,
    ) -> Revocation | None:
        """The first active revocation that covers this token, if any."""
        return self.revocations.covering(issuer, subject, token_id, now, issued_at)

    @staticmethod
    def issuers_from_rows(issuer_rows: Iterable[Mapping[str, Any]]) -> dict[str, IssuerConfig]:
        issuers: dict[str, IssuerConfig] = {}
        for row in issuer_rows:
            cfg = IssuerConfig.from_row(row)
            issuers[cfg.issuer] = cfg
        return issuers

    @staticmethod
    def rules_from_rows(
        rule_rows: Iterable[Mapping[str, Any]], patterns: PatternCache | None = None
    ) -> tuple[list[RoleRule], list[str]]:
        """The usable rules, and a sentence for each row skipped."""
        rules: list[RoleRule] = []
        skipped: list[str] = []
        for row in rule_rows:
            try:
                rules.append(RoleRule.from_row(row, patterns))
            except Exception as exc:  # noqa: BLE001 - a broken rule must not break other logins
                skipped.append(f"role_map rule id {row.get('id')} skipped: {exc}")
        return rules, skipped

    @classmethod
    def from_rows(
        cls,
        issuer_rows: Iterable[Mapping[str, Any]],
        rule_rows: Iterable[Mapping[str, Any]],
        version: object = None,
        revocation_rows: Iterable[Mapping[str, Any]] = (),
        patterns: PatternCache | None = None,
    ) -> Config:
        rules, skipped = cls.rules_from_rows(rule_rows, patterns)
        return cls(
            issuers=cls.issuers_from_rows(issuer_rows),
            rules=rules,
            version=version,
            skipped_rules=skipped,
            revocations=Revocations.from_rows(revocation_rows),
        )
