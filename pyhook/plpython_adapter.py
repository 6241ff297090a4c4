"""The PL/Python entry point: oauth.validate(), oauth.warmup() and oauth.explain() call this.

``plpy`` is the module PL/Python hands to functions; nothing here imports from
PostgreSQL. One Adapter lives per process (in PL/Python's GD) and keeps the
prepared plans, the configuration (per version, revocations included) and the
key store. In steady state a login runs no query at all.

After a call that fetched keys, the adapter reports each HTTP request to the C
statistics (oauth._record_jwks_fetch) and, on a primary, stores the last good
JWKS in oauth.jwks_cache; loading the configuration and each warm-up adopt
newer documents from that table (on a standby: what replicated). Both are
best-effort, each in its own subtransaction: they never change a decision.

oauth.explain() runs in a DBA's session, whose statement may be logged with
every message raised in it: it raises none (what would be logged becomes a
row), refuses a token written into the statement text, and decides with the
document the workers stored, as a login would.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from typing import Any

from pyhook.config import Config, IssuerConfig, PatternCache, Revocations
from pyhook.decision import FAIL, PASS, Check, Decision
from pyhook.errors import ValidatorError
from pyhook.jwks_cache import CachedJwks, KeyStore
from pyhook.validator import validate

# Every built-in is qualified (the functions that run these also pin their
# search_path, and so do the workers): a superuser runs them, in a database
# whose owner may not be one.
ISSUERS_QUERY = (
    "SELECT issuer, audiences, jwks_uri, jwks::pg_catalog.text AS jwks, algorithms, "
    "extract(epoch FROM leeway)::pg_catalog.float8 AS leeway, "
    "extract(epoch FROM max_token_lifetime)::pg_catalog.float8 AS max_token_lifetime, "
    "enabled, "
    "extract(epoch FROM jwks_refresh)::pg_catalog.float8 AS jwks_refresh, "
    "extract(epoch FROM jwks_cooldown)::pg_catalog.float8 AS jwks_cooldown, "
    "extract(epoch FROM http_timeout)::pg_catalog.float8 AS http_timeout, "
    "allow_insecure_http, allow_loopback_http, typ, required_claims, authorized_parties, require_sub, "
    "extract(epoch FROM jwks_max_stale)::pg_catalog.float8 AS jwks_max_stale, "
    "extract(epoch FROM jwks_refresh_min)::pg_catalog.float8 AS jwks_refresh_min, "
    "extract(epoch FROM jwks_refresh_max)::pg_catalog.float8 AS jwks_refresh_max, "
    "max_sessions_per_subject FROM oauth.issuers"
)
RULES_QUERY = (
    "SELECT id, issuer, claim, pattern, role, databases, "
    "client_cidrs::pg_catalog.text[] AS client_cidrs, "
    "max_sessions FROM oauth.role_map ORDER BY id"
)
# The shared-memory change counter (moved by every committed configuration
# change, read by the worker before each request); NULL on a standby, where
# replayed changes do not move it.
COUNTER_QUERY = (
    "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
    "ELSE oauth.config_version() END AS counter"
)
# The table's version and what changed where (80-scale.sql); the table's oid
# tells a re-created extension from the one loaded. Whether to trust those
# counters: the structure counter (changes config_guard.c saw a statement make
# that the triggers may not have) and how many of the triggers keeping them fire.
TRACKING_TRIGGERS = (
    "issuers_changed", "role_map_changed", "revocations_changed", "issuers_counted",
    "role_map_counted", "revocations_counted", "revocations_inserted",
)
STATE_QUERY = (
    "SELECT s.tableoid::pg_catalog.int8 AS table_id, s.version, s.changes_counted, "
    "s.issuers_changes, s.role_map_changes, s.revocations_rewrites, "
    "oauth._config_structure_version() AS structure, "
    "(SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t "
    "WHERE t.tgrelid OPERATOR(pg_catalog.=) ANY (ARRAY["
    "'oauth.issuers'::pg_catalog.regclass::pg_catalog.oid, "
    "'oauth.role_map'::pg_catalog.regclass::pg_catalog.oid, "
    "'oauth.revocations'::pg_catalog.regclass::pg_catalog.oid]) "
    "AND t.tgname OPERATOR(pg_catalog.=) ANY ('{" + ",".join(TRACKING_TRIGGERS) + "}'::"
    "pg_catalog.name[]) AND t.tgenabled OPERATOR(pg_catalog.=) ANY ('{O,A}'::"
    "pg_catalog.\"char\"[])) AS tracking FROM oauth.config_state s"
)
_REVOCATION_COLUMNS = (
    "SELECT id, issuer, subject, token_id, reason, "
    "extract(epoch FROM expires_at)::pg_catalog.float8 AS expires_at, "
    "extract(epoch FROM issued_before)::pg_catalog.float8 AS issued_before FROM oauth.revocations "
)
# expired rows are left out here; the validator also compares expires_at with now
REVOCATIONS_QUERY = (
    _REVOCATION_COLUMNS
    + "WHERE expires_at IS NULL OR expires_at OPERATOR(pg_catalog.>) pg_catalog.now() "
    "ORDER BY id"
)
# the rows added since a worker last read the table (by the primary key)
REVOCATIONS_SINCE_QUERY = (
    _REVOCATION_COLUMNS
    + "WHERE id OPERATOR(pg_catalog.>) $1 "
    "AND coalesce(expires_at OPERATOR(pg_catalog.>) pg_catalog.now(), true) ORDER BY id"
)
# Columns added after 1.0. Between the restart that loads a newer library and the
# ALTER EXTENSION pg_oauth UPDATE that adds them, the tables are 1.0's: the queries
# then read each missing one as its default (allow_loopback_http false, issued_before
# NULL: every token), so logins go on. Checked at every full read (the update is DDL,
# which makes the workers read everything again).
LATER_COLUMNS = {
    "allow_loopback_http": ("issuers", "allow_loopback_http, ", "false AS allow_loopback_http, "),
    "issued_before": (
        "revocations",
        "extract(epoch FROM issued_before)::pg_catalog.float8 AS issued_before ",
        "NULL::pg_catalog.float8 AS issued_before ",
    ),
}
MISSING_COLUMNS_QUERY = (
    "SELECT c.name FROM (VALUES ('issuers', 'allow_loopback_http'), "
    "('revocations', 'issued_before')) AS c(tab, name) "
    "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid OPERATOR(pg_catalog.=) "
    "pg_catalog.to_regclass('oauth.' OPERATOR(pg_catalog.||) c.tab)::pg_catalog.oid "
    "AND a.attname OPERATOR(pg_catalog.=) c.name AND NOT a.attisdropped)"
)


def query_for(query: str, missing: frozenset[str]) -> str:
    """query with the columns of ``missing`` read as their defaults."""
    for name in missing:
        _table, column, default = LATER_COLUMNS[name]
        query = query.replace(column, default)
    return query


# worker_log.c: without the PL/Python CONTEXT lines; one LOG line per change
LOG_QUERY = "SELECT oauth._log($1, $2)"
LOG_CONFIG_QUERY = "SELECT oauth._log_config_applied($1, $2, $3) AS first"
# documents fetched before a committed oauth.refresh_keys() are never adopted again
JWKS_CACHE_QUERY = (
    "SELECT issuer, jwks_uri, discovered, jwks::pg_catalog.text AS jwks, etag, "
    "extract(epoch FROM max_age)::pg_catalog.float8 AS max_age, "
    "extract(epoch FROM fetched_at)::pg_catalog.float8 AS fetched_at FROM oauth.jwks_cache "
    "WHERE fetched_at OPERATOR(pg_catalog.>) oauth._keys_dropped_at(issuer)"
)
RECOVERY_QUERY = "SELECT pg_catalog.pg_is_in_recovery() AS standby"
# the statement as the client sent it: does it hold the token as a literal?
CURRENT_QUERY_QUERY = "SELECT pg_catalog.current_query() AS query"
CONFIG_DATABASE_QUERY = (
    "SELECT oauth._in_config_database() AS here, "
    "pg_catalog.current_setting('pg_oauth.database', true) AS config_database"
)
# Writers skip a row another process is writing (advisory lock, never waited
# for), never replace a newer document, and give up on any other lock quickly.
LOCK_TIMEOUT_QUERY = (
    "SELECT pg_catalog.current_setting('lock_timeout') AS previous, "
    "pg_catalog.set_config('lock_timeout', '100ms', true) AS now"
)
RESTORE_LOCK_TIMEOUT_QUERY = "SELECT pg_catalog.set_config('lock_timeout', $1, true)"
PERSIST_QUERY = (
    "INSERT INTO oauth.jwks_cache AS c "
    "(issuer, jwks_uri, discovered, jwks, etag, max_age, fetched_at) "
    "SELECT $1, $2, $3, $4::pg_catalog.jsonb, $5, pg_catalog.make_interval(secs => $6), "
    "pg_catalog.to_timestamp($7) "
    "WHERE pg_catalog.pg_try_advisory_xact_lock(1868658036, pg_catalog.hashtext($1)) "
    "AND EXISTS (SELECT 1 FROM oauth.issuers i WHERE i.issuer OPERATOR(pg_catalog.=) $1) "
    "ON CONFLICT (issuer) DO UPDATE SET jwks_uri = EXCLUDED.jwks_uri, "
    "discovered = EXCLUDED.discovered, jwks = EXCLUDED.jwks, etag = EXCLUDED.etag, "
    "max_age = EXCLUDED.max_age, fetched_at = EXCLUDED.fetched_at "
    "WHERE c.fetched_at OPERATOR(pg_catalog.<) EXCLUDED.fetched_at"
)
TEXT, BOOL, FLOAT8, INT8 = (
    "pg_catalog.text", "pg_catalog.bool", "pg_catalog.float8", "pg_catalog.int8"
)
PERSIST_TYPES = [TEXT, TEXT, BOOL, TEXT, TEXT, FLOAT8, FLOAT8]
RECORD_FETCH_QUERY = "SELECT oauth._record_jwks_fetch($1::pg_catalog.text, $2::pg_catalog.bool)"
RECORD_FETCH_TYPES = [TEXT, BOOL]
KEYS_CHANGED_QUERY = "SELECT oauth._keys_changed()"
KID_REFETCH_QUERY = (
    "SELECT oauth._kid_refetch_allowed($1::pg_catalog.text, $2::pg_catalog.float8) AS allowed"
)
KID_REFETCH_TYPES = [TEXT, FLOAT8]
# The role checks the backend makes after the validator (auth_hook.c): exists,
# may log in, reaches no privilege pg_oauth.allow_privileges does not name.
ROLE_QUERY = (
    "SELECT r.rolcanlogin, "
    "ARRAY(SELECT p.privilege FROM oauth.role_privileges(r.rolname) "
    "WITH ORDINALITY AS p(privilege, via, allowed, n) WHERE NOT p.allowed ORDER BY p.n) "
    "AS refused, "
    "ARRAY(SELECT p.via FROM oauth.role_privileges(r.rolname) "
    "WITH ORDINALITY AS p(privilege, via, allowed, n) WHERE NOT p.allowed ORDER BY p.n) "
    "AS refused_via "
    "FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) $1"
)


@dataclass(frozen=True)
class ConfigState:
    """The row of oauth.config_state: the version and what changed in each table."""

    table_id: int  # the table's oid: a re-created extension starts over
    version: int
    changes_counted: int = 0  # moves with version while the counting triggers run
    issuers_changes: int = 0
    role_map_changes: int = 0
    revocations_rewrites: int = 0  # updates, deletes, and ids inserted out of order
    structure: int | None = None  # oauth._config_structure_version(); None: unknown
    tracking: int = len(TRACKING_TRIGGERS)  # of those triggers, how many fire

    def counted_since(self, old: ConfigState) -> bool:
        """Whether the counters explain every change since ``old``: the same table,
        no statement the triggers may have missed, every trigger firing, and each
        statement that moved the version also moved the counters."""
        return (
            self.table_id == old.table_id
            and self.structure == old.structure
            and self.tracking == old.tracking == len(TRACKING_TRIGGERS)
            and self.version - old.version == self.changes_counted - old.changes_counted
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ConfigState:
        return cls(
            table_id=int(row["table_id"]),
            version=int(row["version"]),
            changes_counted=int(row["changes_counted"]),
            issuers_changes=int(row["issuers_changes"]),
            role_map_changes=int(row["role_map_changes"]),
            revocations_rewrites=int(row["revocations_rewrites"]),
            structure=None if row["structure"] is None else int(row["structure"]),
            tracking=int(row["tracking"]),
        )


def _pg_text(value: str) -> str:
    # text cannot hold NUL, and PL/Python cannot encode lone surrogates (which JSON
    # \ud800 escapes produce): both would make the whole call fail
    if value.isascii() and "\x00" not in value:
        return value
    return "".join(
        "\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value
    )


def _pg_json(value: Any) -> Any:
    """A copy of a JSON value whose strings jsonb accepts (no NUL, no lone surrogates)."""
    if isinstance(value, str):
        return _pg_text(value)
    if isinstance(value, dict):
        return {_pg_text(k): _pg_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pg_json(v) for v in value]
    return value


def _optional_text(value: str | None) -> str | None:
    return None if value is None else _pg_text(value)


def decision_row(decision: Decision) -> dict[str, Any]:
    """A Decision as one row of oauth.validate()'s result table."""
    return {
        "ok": decision.ok,
        "reason": decision.reason,
        "detail": _pg_text(decision.detail),
        "allowed_roles": [_pg_text(r) for r in decision.allowed_roles],
        "issuer": _optional_text(decision.issuer),
        "subject": _optional_text(decision.subject),
        "token_id": _optional_text(decision.token_id),
        "expires_at": decision.expires_at.isoformat() if decision.expires_at else None,
        "kid": _optional_text(decision.kid),
        "alg": _optional_text(decision.alg),
        "key_cache": decision.key_cache,
        "max_sessions": decision.max_sessions,
        "claims": None if decision.claims is None else claims_json(decision.claims),
    }


def claims_json(claims: dict[str, Any]) -> str:
    """Claims as compact JSON text that jsonb accepts."""
    text = json.dumps(claims, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
        clean = "\\u0000" not in text
    except UnicodeEncodeError:
        clean = False
    if clean:
        return text
    return json.dumps(_pg_json(claims), ensure_ascii=False, separators=(",", ":"))


def _error_row(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "reason": ValidatorError.reason,
        "detail": type(exc).__name__,
        "allowed_roles": [],
        "issuer": None,
        "subject": None,
        "token_id": None,
        "expires_at": None,
        "kid": None,
        "alg": None,
        "key_cache": None,
        "max_sessions": None,
        "claims": None,
    }


def cached_jwks(row: dict[str, Any]) -> CachedJwks:
    """One oauth.jwks_cache row (as JWKS_CACHE_QUERY returns it)."""
    return CachedJwks(
        issuer=str(row["issuer"]),
        jwks_uri=str(row["jwks_uri"]),
        discovered=bool(row["discovered"]),
        jwks=str(row["jwks"]),
        etag=row.get("etag"),
        max_age=None if row.get("max_age") is None else float(row["max_age"]),
        fetched_at=float(row["fetched_at"]),
    )


def explain_rows(
    decision: Decision, notes: list[str] | None = None
) -> list[dict[str, Any]]:
    """The trail of a decision as rows of oauth.explain(), then one ``note`` row per
    message the validator would have logged, ending with the verdict."""
    rows = [
        {
            "step": number,
            "name": check.name,
            "outcome": check.outcome,
            "input": _pg_text(check.input),
            "detail": _pg_text(check.info),
        }
        for number, check in enumerate(decision.trail, start=1)
    ]
    rows.extend(
        {
            "step": len(rows) + number,
            "name": "note",
            "outcome": "info",
            "input": "",
            "detail": _pg_text(note),
        }
        for number, note in enumerate(notes or [], start=1)
    )
    rows.append(
        {
            "step": len(rows) + 1,
            "name": "decision",
            "outcome": "pass" if decision.ok else "fail",
            "input": _pg_text(
                f"allowed roles: {', '.join(decision.allowed_roles) or 'none'}"
            ),
            "detail": _pg_text(f"{decision.reason}: {decision.detail}"),
        }
    )
    return rows


# the payload or the signature, as long as the log-hygiene test looks for
_SECRET_SEGMENT_CHARS = 16


def written_into(token: str | bytes, statement: str | None) -> bool:
    """Whether ``statement`` holds the token's payload or signature as text."""
    if not statement:
        return False
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    return any(
        len(part) >= _SECRET_SEGMENT_CHARS and part in statement
        for part in text.split(".")[1:3]
    )


def statement_refusal_rows() -> list[dict[str, Any]]:
    """oauth.explain()'s answer to a token written into the statement text."""
    detail = (
        "token_in_statement: the token is part of the statement text, which "
        "log_statement, log_min_duration_statement, log_min_error_statement, "
        "auto_explain and pgaudit can write to the server log; pass it as a bind "
        "parameter ($1) with statement logging off for the transaction, or use "
        "pg-oauth explain --dsn"
    )
    return [
        {
            "step": 1,
            "name": "statement",
            "outcome": "fail",
            "input": "the token's payload or signature is in the statement text",
            "detail": "not checked",
        },
        {
            "step": 2,
            "name": "decision",
            "outcome": "fail",
            "input": "allowed roles: none",
            "detail": detail,
        },
    ]


class Adapter:
    def __init__(self, plpy: Any) -> None:
        self.plpy = plpy
        # the C worker calls warmup() between requests: it does the refreshing
        self.keys = KeyStore(refresh_on_login=False, kid_refetch_gate=self._kid_refetch_gate)
        self.config: Config | None = None
        self._state: ConfigState | None = None  # oauth.config_state as self.config has it
        self._counter: int | None = None  # the change counter self.config was checked at
        self._patterns: PatternCache = {}  # compiled role_map patterns, across loads
        self._plans: dict[str, Any] = {}
        # columns added after 1.0 that the installed schema lacks (LATER_COLUMNS)
        self._missing: frozenset[str] = frozenset()
        self._reported_key_changes = 0
        # while oauth.explain() runs: what would have been logged (None: log it)
        self._notes: list[str] | None = None

    def validate(
        self,
        token: str | bytes,
        requested_role: str,
        database: str,
        client_addr: str | None,
        ssl: bool,
        config_version: int | None,
    ) -> dict[str, Any]:
        """One row for oauth.validate(); never raises."""
        try:
            config = self._config(config_version)
            decision = validate(
                token, requested_role, database, client_addr, ssl, config, self.keys
            )
            return decision_row(decision)
        except Exception as exc:  # noqa: BLE001 - fail closed, never raise into the worker
            self._warn(f"pg_oauth: validator error: {type(exc).__name__}")
            return _error_row(exc)
        finally:
            self._after_fetches()

    def explain(
        self,
        token: str | bytes,
        requested_role: str,
        database: str,
        client_addr: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows for oauth.explain(): every check with its input and outcome, then the verdict.

        The same validation a login gets, plus one row per role_map rule and the
        checks the backend makes on the role itself. It logs nothing (a message
        would carry the caller's statement into the server log): what it would
        have warned about becomes ``note`` rows. The keys are the document the
        workers stored in oauth.jwks_cache; only when none is stored for the
        token's issuer does it fetch, as a worker without keys would.
        """
        if self._token_in_statement(token):
            return statement_refusal_rows()
        self._require_config_database()
        notes: list[str] = []
        self._notes = notes
        # a store of its own per call: nothing a previous call fetched lingers
        keys = self.keys.sibling(
            refresh_on_login=False,
            kid_refetch_gate=self._kid_refetch_gate,
            held_keys_only=True,
        )
        try:
            config = self._config(None, seed=False)
            self._seed_keys(config, keys)
            decision = validate(
                token,
                requested_role,
                database,
                client_addr,
                True,
                config,
                keys,
                explain=True,
            )
            decision = self._role_checks(decision, requested_role)
        except Exception as exc:  # noqa: BLE001 - explain reports, never raises
            decision = Decision(
                ok=False, reason=ValidatorError.reason, detail=type(exc).__name__
            )
        finally:
            self._after_fetches(keys)
            self._notes = None
        return explain_rows(decision, notes)

    def refresh_keys_now(self, issuers: list[str] | None) -> str:
        """Drop the keys held for ``issuers`` (None: every issuer) and fetch them
        again: a committed oauth.refresh_keys() asked for it. Never raises; a summary.

        Persisted documents fetched before the request are invisible
        (JWKS_CACHE_QUERY), so seeding afterwards adopts only newer ones, e.g.
        what another worker fetched when this one's fetch failed.
        """
        names = None if issuers is None else set(issuers)
        if names is None:
            self.keys.forget()
        else:
            for name in names:
                self.keys.forget(name)
        try:
            config = self._config(None, seed=False)
        except Exception as exc:  # noqa: BLE001 - the keys are dropped all the same
            self._warn(
                f"pg_oauth: loading configuration failed: {type(exc).__name__}: {exc}"
            )
            return f"configuration unavailable ({type(exc).__name__})"
        targets = [
            config.issuers[name]
            for name in sorted(config.issuers)
            if config.issuers[name].enabled and (names is None or name in names)
        ]
        try:
            failed = self._fetch_keys(targets)
            self._seed_keys(config)
        finally:
            self._after_fetches()
        key_count = sum(len(self.keys.keys(i.issuer)) for i in targets)
        summary = f"{len(targets)} issuers, {key_count} keys"
        return summary + (f", {failed} issuers without keys" if failed else "")

    def warmup(self) -> str:
        """Load configuration, adopt newer persisted keys, fetch keys that are missing
        or due; a one-line summary."""
        try:
            config = self._config(None, seed=False)
        except Exception as exc:  # noqa: BLE001 - warmup reports, never raises
            self._warn(
                f"pg_oauth: loading configuration failed: {type(exc).__name__}: {exc}"
            )
            return f"configuration unavailable ({type(exc).__name__})"
        try:
            self._seed_keys(config)
            failed = self._fetch_keys(self.keys.refresh_due(config))
        finally:
            self._after_fetches()
        enabled = [i for i in config.issuers.values() if i.enabled]
        key_count = sum(len(self.keys.keys(i.issuer)) for i in enabled)
        summary = f"{len(enabled)} issuers, {key_count} keys"
        return summary + (f", {failed} issuers without fresh keys" if failed else "")

    def _fetch_keys(self, issuers: list[IssuerConfig]) -> int:
        """Fetch each issuer's keys, warning of those that fail; how many failed."""
        failed = 0
        for issuer in issuers:
            try:
                self.keys.refresh(issuer)
            except Exception as exc:  # noqa: BLE001 - one issuer must not stop the others
                failed += 1
                detail = getattr(exc, "detail", type(exc).__name__)
                self._warn(f"pg_oauth: keys of issuer {issuer.issuer!a}: {detail}")
        return failed

    # -- configuration ------------------------------------------------------

    def _config(self, config_version: int | None, seed: bool = True) -> Config:
        """The configuration, brought up to date first when it changed.

        ``config_version``: the shared-memory change counter the worker read before
        its transaction (None: read it here; NULL on a standby, where nothing moves
        it). While it has not moved since the last check, no query at all; warm-up
        and logins share this one check. When it moved, oauth.config_state says what
        changed, and only that is read again (new revocations by id). ``seed``: adopt
        persisted keys when issuers were loaded (callers that seed anyway say False).
        """
        counter = self._change_counter() if config_version is None else config_version
        if self.config is not None and counter is not None and counter == self._counter:
            return self.config
        state = ConfigState.from_row(self._execute("state", STATE_QUERY)[0])
        previous, old = self.config, self._state
        if previous is None or old is None:
            config, changes = self._load(state), "read in full"
        elif state == old and (counter is None or self._counter is None):
            config, changes = previous, ""  # a standby, or no counter: nothing changed
        elif state == old or not state.counted_since(old):
            # the counter moved with no trigger to say why (they were disabled or
            # skipped; config_guard.c saw it), a statement may have changed rows
            # behind the triggers, or one of them did not run
            config, changes = self._load(state), "read in full"
        else:
            config, changes = self._catch_up(previous, old, state)
        self.config, self._state, self._counter = config, state, counter
        if config is previous:
            return config
        if previous is None or config.rules is not previous.rules:
            for note in config.skipped_rules:
                self._warn(f"pg_oauth: {note}")
        if previous is None or config.issuers is not previous.issuers:
            self.keys.prune(config)
            # a new issuer may already have keys another process fetched
            if seed:
                self._seed_keys(config)
        self._announce(config, state, changes, first=previous is None)
        return config

    def _change_counter(self) -> int | None:
        try:
            value = self._execute("counter", COUNTER_QUERY)[0]["counter"]
        except Exception:  # noqa: BLE001 - unknown: compare oauth.config_state every time
            return None
        return None if value is None else int(value)

    def _load(self, state: ConfigState) -> Config:
        """Everything, from scratch (a worker's first load, a re-created extension)."""
        self._missing = frozenset(
            str(row["name"]) for row in self._execute("missing_columns", MISSING_COLUMNS_QUERY)
        )
        rules, skipped = Config.rules_from_rows(
            self._execute("rules", RULES_QUERY), self._fresh_patterns()
        )
        return Config(
            issuers=Config.issuers_from_rows(self._table_query("issuers", ISSUERS_QUERY)),
            rules=rules,
            version=state.version,
            skipped_rules=skipped,
            revocations=Revocations.from_rows(
                self._table_query("revocations", REVOCATIONS_QUERY)
            ),
        )

    def _table_query(
        self,
        name: str,
        query: str,
        args: list[Any] | None = None,
        types: list[str] | None = None,
    ) -> Any:
        """_execute of a query over a table that gained columns after 1.0, as the
        installed schema has it (LATER_COLUMNS; a plan of its own per variant)."""
        missing = self._missing
        if missing:
            name = name + "/without:" + ",".join(sorted(missing))
        return self._execute(name, query_for(query, missing), args, types)

    def _catch_up(
        self, config: Config, old: ConfigState, state: ConfigState
    ) -> tuple[Config, str]:
        """``config`` with what changed between ``old`` and ``state`` read again; and
        a note of what that was. Added revocations are added in place, last, once
        everything that may fail has been read."""
        notes: list[str] = []
        issuers = rules = revocations = None
        if state.issuers_changes != old.issuers_changes:
            issuers = Config.issuers_from_rows(self._table_query("issuers", ISSUERS_QUERY))
            notes.append("issuers")
        if state.role_map_changes != old.role_map_changes:
            rules = Config.rules_from_rows(
                self._execute("rules", RULES_QUERY), self._fresh_patterns()
            )
            notes.append("role_map")
        if state.revocations_rewrites != old.revocations_rewrites:
            revocations = Revocations.from_rows(
                self._table_query("revocations", REVOCATIONS_QUERY)
            )
            notes.append("revocations")
        else:
            added = config.revocations.add_rows(
                self._table_query(
                    "revocations_since",
                    REVOCATIONS_SINCE_QUERY,
                    [config.revocations.highest_id],
                    [INT8],
                )
            )
            if added:
                notes.append(f"{added} revocation{'s' if added != 1 else ''} added")
        updated = config.updated(state.version, issuers, rules, revocations)
        return updated, ", ".join(notes) or "no rows changed"

    def _fresh_patterns(self) -> PatternCache:
        """The compiled patterns to reuse; the ones no rule uses any more go with the
        next load (the cache holds what the last load used, plus new ones)."""
        used = {rule.pattern for rule in self.config.rules} if self.config else set()
        self._patterns = {p: c for p, c in self._patterns.items() if p in used}
        return self._patterns

    def _announce(self, config: Config, state: ConfigState, changes: str, first: bool) -> None:
        """One LOG line per configuration change for all workers; DEBUG1 otherwise."""
        if self._notes is not None:  # oauth.explain says nothing in the caller's session
            return
        message = (
            f"pg_oauth: configuration version {state.version} loaded ({changes}): "
            f"{len(config.issuers)} issuers, {len(config.rules)} role_map rules, "
            f"{len(config.revocations)} revocations"
        )
        if first:
            self._message("debug1", message)
            return
        try:
            self._execute(
                "log_config",
                LOG_CONFIG_QUERY,
                [state.table_id, state.version, message],
                [INT8, INT8, TEXT],
            )
        except Exception:  # noqa: BLE001 - an older library: the plain message
            self._message("log", message)

    def _token_in_statement(self, token: str | bytes) -> bool:
        try:
            with self.plpy.subtransaction():
                row = self._execute("current_query", CURRENT_QUERY_QUERY)[0]
        except Exception:  # noqa: BLE001 - cannot tell: check the token
            return False
        return written_into(token, row["query"])

    def _require_config_database(self) -> None:
        """Configuration lives in pg_oauth.database only: anywhere else explain would
        read rows no worker reads, so it refuses and names the right database."""
        try:
            with self.plpy.subtransaction():
                row = self._execute("config_database", CONFIG_DATABASE_QUERY)[0]
        except Exception:  # noqa: BLE001 - cannot tell: the dry run reports what it can
            return
        if not row["here"]:
            self.plpy.error(
                "pg_oauth configuration lives in database "
                f"\"{row['config_database'] or 'postgres'}\" (pg_oauth.database); "
                "run oauth.explain there",
                hint="In this database the session functions work: oauth.claims(), "
                "oauth.claim(), oauth.session().",
                sqlstate="55000",  # object_not_in_prerequisite_state, as the triggers say
            )

    # -- keys in oauth.jwks_cache, fetch statistics --------------------------------

    def _seed_keys(self, config: Config, keys: KeyStore | None = None) -> int:
        """Adopt documents from oauth.jwks_cache newer than the ones held; how many."""
        keys = self.keys if keys is None else keys
        adopted = 0
        try:
            with self.plpy.subtransaction():
                rows = [dict(r) for r in self._execute("jwks_cache", JWKS_CACHE_QUERY)]
        except Exception as exc:  # noqa: BLE001 - a cold start is slower, not wrong
            self._warn(
                f"pg_oauth: reading oauth.jwks_cache failed: {type(exc).__name__}"
            )
            return 0
        for row in rows:
            issuer = config.issuers.get(str(row.get("issuer")))
            if issuer is None:
                continue
            try:
                if keys.seed(issuer, cached_jwks(row)):
                    adopted += 1
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the others
                self._warn(
                    f"pg_oauth: oauth.jwks_cache row of {issuer.issuer!a} unusable: "
                    f"{type(exc).__name__}"
                )
        return adopted

    def _after_fetches(self, keys: KeyStore | None = None) -> None:
        """Report the HTTP requests just made and persist newly fetched keys."""
        keys = self.keys if keys is None else keys
        with contextlib.suppress(Exception):
            for event in keys.drain_events():
                self._record_fetch(event.issuer, event.ok)
        with contextlib.suppress(Exception):
            for issuer, note in keys.drain_notes():
                self._warn(f"pg_oauth: keys of issuer {issuer!a}: {note}")
        # explain's own store starts empty each call: only the workers' changes count
        if keys is self.keys and keys.key_changes != self._reported_key_changes:
            self._reported_key_changes = keys.key_changes
            self._keys_changed()
        with contextlib.suppress(Exception):
            dirty = keys.take_dirty()
            if dirty and not self._in_recovery():
                for snapshot in dirty:
                    self._persist(snapshot)

    def _record_fetch(self, issuer: str, ok: bool) -> None:
        # the C function may not exist (older install): then this is a no-op
        try:
            with self.plpy.subtransaction():
                self._execute(
                    "record_fetch",
                    RECORD_FETCH_QUERY,
                    [issuer, ok],
                    RECORD_FETCH_TYPES,
                )
        except Exception:  # noqa: BLE001, S110 - statistics never decide anything
            pass

    def _kid_refetch_gate(self, issuer: str, cooldown: float) -> bool:
        """One unknown-kid refetch per cooldown per issuer across all workers."""
        try:
            with self.plpy.subtransaction():
                rows = self._execute(
                    "kid_refetch", KID_REFETCH_QUERY, [issuer, cooldown], KID_REFETCH_TYPES
                )
            return bool(rows[0]["allowed"])
        except Exception:  # noqa: BLE001 - no shared gate (older install): local cooldown only
            return True

    def _keys_changed(self) -> None:
        """Tell the backends' decision cache that a key set changed."""
        try:
            with self.plpy.subtransaction():
                self._execute("keys_changed", KEYS_CHANGED_QUERY)
        except Exception:  # noqa: BLE001, S110 - then cached decisions live until exp
            pass

    def _in_recovery(self) -> bool:
        try:
            with self.plpy.subtransaction():
                rows = self._execute("recovery", RECOVERY_QUERY)
            return bool(rows[0]["standby"])
        except Exception:  # noqa: BLE001 - unknown: do not write
            return True

    def _persist(self, snapshot: CachedJwks) -> None:
        try:
            with self.plpy.subtransaction():
                previous = self._execute("lock_timeout", LOCK_TIMEOUT_QUERY)[0][
                    "previous"
                ]
                self._execute(
                    "persist",
                    PERSIST_QUERY,
                    [
                        snapshot.issuer,
                        snapshot.jwks_uri,
                        snapshot.discovered,
                        snapshot.jwks,
                        snapshot.etag,
                        snapshot.max_age,
                        snapshot.fetched_at,
                    ],
                    PERSIST_TYPES,
                )
                self._execute(
                    "restore_lock_timeout",
                    RESTORE_LOCK_TIMEOUT_QUERY,
                    [previous],
                    [TEXT],
                )
        except Exception as exc:  # noqa: BLE001 - the keys still work from memory
            self._log(
                f"pg_oauth: keys of issuer {snapshot.issuer!a} not stored in "
                f"oauth.jwks_cache: {type(exc).__name__}"
            )

    # -- explain: what the backend checks after the validator ---------------------

    def _role_checks(self, decision: Decision, role: str) -> Decision:
        rows = self._execute("role", ROLE_QUERY, [role], [TEXT])
        given = f"role {role!a}"
        if not len(rows):
            check, reason, detail = (
                Check("role", FAIL, f"role {role!a} does not exist", given),
                "unknown_role",
                f"role {role!a} does not exist",
            )
        else:
            row = rows[0]
            refused = list(zip(row["refused"] or [], row["refused_via"] or [], strict=True))
            if not row["rolcanlogin"]:
                detail = f"role {role!a} is not permitted to log in (NOLOGIN)"
                check, reason = Check("role", FAIL, detail, given), "role_cannot_login"
            elif refused:
                privilege, via = refused[0]
                how = (
                    f'role "{role}" has {privilege}'
                    if via == role
                    else f'role "{role}" is a member of "{via}", which has {privilege}'
                )
                detail = f"{how}: privilege {privilege} is not allowed on token logins"
                reason = (
                    "superuser_forbidden"
                    if privilege == "superuser"
                    else "privilege_forbidden"
                )
                check = Check("role", FAIL, detail, given)
            else:
                check = Check("role", PASS, "role exists and may log in", given)
                reason, detail = decision.reason, decision.detail
        trail = [*decision.trail, check]
        if not decision.ok or check.outcome == PASS:
            return replace(decision, trail=trail)
        return replace(decision, ok=False, reason=reason, detail=detail, trail=trail)

    # -- plumbing --------------------------------------------------------------------

    def _execute(
        self,
        name: str,
        query: str,
        args: list[Any] | None = None,
        types: list[str] | None = None,
    ) -> Any:
        plan = self._plans.get(name)
        if plan is None:
            plan = self.plpy.prepare(query, types or [])
            self._plans[name] = plan
        return self.plpy.execute(plan, args or [])

    def _warn(self, message: str) -> None:
        if self._notes is not None:  # oauth.explain: a row, not a message
            self._notes.append(message)
            return
        self._message("warning", message)

    def _log(self, message: str) -> None:
        if self._notes is not None:  # oauth.explain: routine lines are not its business
            return
        self._message("log", message)

    def _message(self, level: str, message: str) -> None:
        """A server-log line without the PL/Python CONTEXT lines (oauth._log); plpy's
        own functions when that is not there. Never raises: logging must never turn
        a decision into an error."""
        try:
            self._execute("log", LOG_QUERY, [level, message], [TEXT, TEXT])
            return
        except Exception:  # noqa: BLE001, S110 - an older library: plpy below
            pass
        with contextlib.suppress(Exception):
            {"warning": self.plpy.warning, "log": self.plpy.log}.get(
                level, self.plpy.debug
            )(message)
