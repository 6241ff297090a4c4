"""The PL/Python entry point: oauth.validate(), oauth.warmup() and oauth.explain() call this.

``plpy`` is the module PL/Python hands to functions; nothing here imports from
PostgreSQL. One Adapter lives per process (in PL/Python's GD) and keeps the
prepared plans, the configuration (per version, revocations included) and the
key store. In steady state a login runs no query at all. The statements it runs
are in ``sql_queries``, the rows it reads and returns in ``sql_rows``.

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
from dataclasses import replace
from typing import Any

from pyhook.config import Config, IssuerConfig, PatternCache, Revocations
from pyhook.decision import FAIL, PASS, Check, Decision
from pyhook.errors import ProvisioningForbidden, ProvisioningUnavailable, ValidatorError
from pyhook.jwks_cache import CachedJwks, KeyStore
from pyhook.provisioning import ProvisioningPlan, policies_from_rows
from pyhook.sql_queries import (
    CONFIG_DATABASE_QUERY,
    COUNTER_QUERY,
    CURRENT_QUERY_QUERY,
    GROUP_ROLES_QUERY,
    INT8,
    ISSUERS_QUERY,
    JWKS_CACHE_QUERY,
    KEYS_CHANGED_QUERY,
    KID_REFETCH_QUERY,
    KID_REFETCH_TYPES,
    LOCK_TIMEOUT_QUERY,
    LOG_CONFIG_QUERY,
    LOG_QUERY,
    MISSING_COLUMNS_QUERY,
    PERSIST_QUERY,
    PERSIST_TYPES,
    PROVISION_QUERY,
    PROVISION_TYPES,
    PROVISIONING_PRESENT_QUERY,
    PROVISIONING_QUERY,
    RECORD_FETCH_QUERY,
    RECORD_FETCH_TYPES,
    RECOVERY_QUERY,
    RESTORE_LOCK_TIMEOUT_QUERY,
    REVOCATIONS_QUERY,
    REVOCATIONS_SINCE_QUERY,
    ROLE_QUERY,
    RULES_QUERY,
    STATE_QUERY,
    TEXT,
    query_for,
)
from pyhook.sql_rows import (
    ConfigState,
    cached_jwks,
    decision_row,
    error_row,
    explain_rows,
    statement_refusal_rows,
)
from pyhook.validator import validate

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
        # whether self.config carries the provisioning policies of its last full read
        self._policies_read = False

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
                token, requested_role, database, client_addr, ssl, config, self.keys,
                trail=False,
            )
            if decision.ok and decision.provisioning is not None:
                decision = self._provision(decision, explain=False)
            return decision_row(decision)
        except Exception as exc:  # noqa: BLE001 - fail closed, never raise into the worker
            self._warn(f"pg_oauth: validator error: {type(exc).__name__}")
            return error_row(exc)
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
            created = False
            if decision.ok and decision.provisioning is not None:
                decision = self._provision(decision, explain=True)
                created = any(
                    c.name == "provisioning" and c.info.startswith("would create role")
                    for c in decision.trail
                )
            if not created:
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
        """The configuration tables (below) and the provisioning policies."""
        return self._with_provisioning(self._config_tables(config_version, seed))

    def _config_tables(self, config_version: int | None, seed: bool = True) -> Config:
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

    def _with_provisioning(self, config: Config) -> Config:
        """``config`` with the provisioning policies, read after each full read of the
        configuration: a change to oauth.provisioning or oauth.group_roles is counted
        by no table's counter, which makes the next read a full one. A configuration
        brought up to date in place (Config.updated) keeps the policies it had. None
        before the 1.1 tables exist."""
        if self._policies_read:
            return config
        policies: dict[str, Any] = {}
        skipped: list[str] = []
        if self._execute("provisioning_present", PROVISIONING_PRESENT_QUERY)[0]["present"]:
            policies, skipped = policies_from_rows(
                self._execute("provisioning", PROVISIONING_QUERY),
                self._execute("group_roles", GROUP_ROLES_QUERY),
            )
        for note in skipped:
            self._warn(f"pg_oauth: {note}")
        config.provisioning = policies
        self._policies_read = True
        return config

    def _provision(self, decision: Decision, explain: bool) -> Decision:
        """Make the login's role what the token says (oauth._provision): create it,
        sync its group memberships. On a standby nothing can be written: a role that
        is missing, disabled or would lose a membership is refused
        (provisioning_unavailable); one that would only gain memberships logs in
        with those it has. ``explain``: say what would be done, do nothing."""
        plan: ProvisioningPlan = decision.provisioning
        standby = self._in_recovery()
        apply = not (explain or standby)
        try:
            with self.plpy.subtransaction():
                rows = self._execute(
                    "provision",
                    PROVISION_QUERY,
                    [
                        plan.issuer,
                        plan.subject,
                        plan.role,
                        None if plan.groups is None else list(plan.groups),
                        plan.mapped,
                        apply,
                    ],
                    PROVISION_TYPES,
                )
            steps = [(str(r["action"]), str(r["target"]), str(r["detail"])) for r in rows]
        except Exception as exc:  # noqa: BLE001 - fail closed with what PostgreSQL said
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return _refused(
                decision,
                ProvisioningUnavailable(
                    f"role {plan.role!a} could not be provisioned: {message[:300]}"
                ),
            )
        for action, target, detail in steps:
            if action == "refuse":
                return _refused(decision, ProvisioningForbidden(detail))
        steps += [("skip", "", note) for note in plan.skipped]
        for _action, _target, detail in (s for s in steps if s[0] == "skip"):
            self._warn(f"pg_oauth: provisioning of role {plan.role!a}: {detail}")
        changes = [s for s in steps if s[0] in ("create", "enable", "join", "grant", "revoke")]
        if standby and not explain:
            blocking = [s for s in changes if s[0] != "grant"]
            if blocking:
                what = "; ".join(f"{a} {t}" for a, t, _d in blocking)
                return _refused(
                    decision,
                    ProvisioningUnavailable(
                        f"role {plan.role!a} needs changes a hot standby cannot make ({what}): "
                        "they are made at its next login on the primary"
                    ),
                )
            if changes:
                self._log(
                    f"pg_oauth: on this standby role {plan.role!a} logs in without the "
                    f"memberships its token's groups give ({', '.join(t for _a, t, _d in changes)}); "
                    "they are granted at its next login on the primary"
                )
        if not explain:
            return decision
        verb = {"create": "would create role", "enable": "would enable role",
                "join": "would join", "grant": "would grant", "revoke": "would revoke",
                "skip": "would not grant", "keep": "keeps"}
        trail = [
            *decision.trail,
            *(
                Check("provisioning", FAIL if action == "skip" else PASS,
                      f"{verb.get(action, action)} {target}: {detail}",
                      f"role {plan.role!a}" + (" (on a standby: nothing is written)" if standby else ""))
                for action, target, detail in steps
            ),
        ]
        return replace(decision, trail=trail)

    def _change_counter(self) -> int | None:
        try:
            value = self._execute("counter", COUNTER_QUERY)[0]["counter"]
        except Exception:  # noqa: BLE001 - unknown: compare oauth.config_state every time
            return None
        return None if value is None else int(value)

    def _load(self, state: ConfigState) -> Config:
        """Everything, from scratch (a worker's first load, a re-created extension)."""
        self._policies_read = False
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


def _refused(decision: Decision, exc: ProvisioningForbidden | ProvisioningUnavailable) -> Decision:
    """``decision`` turned into a refusal for a provisioning reason."""
    trail = [*decision.trail, Check("provisioning", FAIL, exc.detail)]
    return replace(
        decision, ok=False, reason=exc.reason, detail=exc.detail, allowed_roles=[],
        trail=trail, provisioning=None,
    )
