"""The PL/Python adapter, with a small stand-in for the ``plpy`` module.

The fake stands for what PL/Python hands to functions (prepare/execute/log),
not for PostgreSQL; the real thing is exercised by tests/integration.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from pg_oauth_dev.dev_issuer import DevIssuer
from unit_support import AUD, ISS, NOW, Documents, issuer_row, no_network, rule_row

from pyhook import sql_queries
from pyhook.jwks_cache import KeyStore
from pyhook.plpython_adapter import Adapter
from pyhook.sql_queries import (
    CONFIG_DATABASE_QUERY,
    COUNTER_QUERY,
    GROUP_ROLES_QUERY,
    ISSUERS_QUERY,
    JWKS_CACHE_QUERY,
    KID_REFETCH_TYPES,
    LOCK_TIMEOUT_QUERY,
    LOG_CONFIG_QUERY,
    LOG_QUERY,
    MISSING_COLUMNS_QUERY,
    PERSIST_QUERY,
    PERSIST_TYPES,
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
    TRACKING_TRIGGERS,
    query_for,
)

# what loading the whole configuration reads (the schema's later columns first; the
# provisioning policies last, when their tables exist)
CONFIG_QUERIES = [STATE_QUERY, MISSING_COLUMNS_QUERY, ISSUERS_QUERY, RULES_QUERY, REVOCATIONS_QUERY,
                  JWKS_CACHE_QUERY, PROVISIONING_PRESENT_QUERY]
# the tables' queries: what a configuration change may read again
TABLE_QUERIES = {ISSUERS_QUERY, RULES_QUERY, REVOCATIONS_QUERY, REVOCATIONS_SINCE_QUERY}


class FakePlan:
    def __init__(self, query: str, types: list[str]) -> None:
        self.query = query
        self.types = types


class FakeSpiError(Exception):
    pass


class FakePlpy:
    """What PL/Python provides: prepare, execute, subtransactions, the log functions.

    The "tables" are plain lists; PERSIST_QUERY upserts into ``jwks_cache`` the
    way the SQL does (never replacing a newer row).
    """

    def __init__(
        self, issuers: list[dict[str, Any]], rules: list[dict[str, Any]]
    ) -> None:
        self.issuers, self.rules = issuers, rules
        self.revocations: list[dict[str, Any]] = []
        # oauth.config_state, and the shared-memory counter (None: a standby)
        self.state = {"table_id": 16400, "version": 1, "changes_counted": 0,
                      "issuers_changes": 0, "role_map_changes": 0,
                      "revocations_rewrites": 0, "structure": 0,
                      "tracking": len(TRACKING_TRIGGERS)}  # fmt: skip
        self.counter: int | None = 1
        self.log_functions_exist = True
        self.debug: list[str] = []  # DEBUG1 lines through oauth._log
        self.config_logs: list[tuple[int, int, str]] = []  # oauth._log_config_applied
        self.jwks_cache: list[dict[str, Any]] = []
        self.roles: dict[str, dict[str, Any]] = {
            "alice": {"rolcanlogin": True, "refused": [], "refused_via": []},
            "bob": {"rolcanlogin": True, "refused": [], "refused_via": []},
        }
        self.standby = False
        self.missing_columns: list[str] = []  # columns the installed schema lacks
        self.config_database = True
        # oauth.provisioning's rows (None: a 1.0 schema without the table)
        self.provisioning: list[dict[str, Any]] | None = None
        self.group_roles: list[dict[str, Any]] = []
        self.record_fetch_exists = True
        self.recorded: list[tuple[str, bool]] = []
        self.prepared: list[str] = []
        self.executed: list[str] = []
        self.warnings: list[str] = []
        self.logs: list[str] = []
        self.fail_with: Exception | None = None
        self.subtransactions = 0
        self.depth = 0  # open subtransactions

    def change(self, table: str, rows: list[dict[str, Any]] | None = None,
               added: dict[str, Any] | None = None) -> None:
        """A committed configuration change, with what the triggers do: the version,
        the table's counter, the shared-memory counter. ``added``: one revocation
        inserted (with the next id), else the table's rows replaced by ``rows``."""
        self.state["version"] += 1
        self.state["changes_counted"] += 1
        if self.counter is not None:
            self.counter += 1
        if added is not None:
            next_id = max((r["id"] for r in self.revocations), default=0) + 1
            self.revocations.append(revocation_row(next_id, **added))
            return
        assert rows is not None
        setattr(self, table, rows)
        column = {"issuers": "issuers_changes", "rules": "role_map_changes",
                  "revocations": "revocations_rewrites"}[table]  # fmt: skip
        self.state[column] += 1

    def prepare(self, query: str, argtypes: list[str] | None = None) -> FakePlan:
        if query == RECORD_FETCH_QUERY and not self.record_fetch_exists:
            raise FakeSpiError("function oauth._record_jwks_fetch does not exist")
        if query in (LOG_QUERY, LOG_CONFIG_QUERY) and not self.log_functions_exist:
            raise FakeSpiError("function oauth._log does not exist")
        self.prepared.append(query)
        return FakePlan(query, list(argtypes or []))

    @contextlib.contextmanager
    def subtransaction(self) -> Iterator[None]:
        self.subtransactions += 1
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def execute(
        self, plan: FakePlan, args: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        assert isinstance(plan, FakePlan), "queries must go through prepared plans"
        args = list(args or [])
        assert len(args) == len(plan.types), (plan.query, args)
        if self.fail_with is not None:
            raise self.fail_with
        self.executed.append(plan.query)
        missing = frozenset(self.missing_columns)
        if plan.query == MISSING_COLUMNS_QUERY:
            return [{"name": name} for name in sorted(missing)]
        if plan.query == query_for(ISSUERS_QUERY, missing):
            return [dict(r) for r in self.issuers]
        if plan.query == RULES_QUERY:
            return [dict(r) for r in self.rules]
        if plan.query == query_for(REVOCATIONS_QUERY, missing):
            return [dict(r) for r in self.revocations]
        if plan.query == query_for(REVOCATIONS_SINCE_QUERY, missing):
            return [dict(r) for r in self.revocations if r["id"] > args[0]]
        if plan.query == JWKS_CACHE_QUERY:
            return [dict(r) for r in self.jwks_cache]
        if plan.query == COUNTER_QUERY:
            return [{"counter": self.counter}]
        if plan.query == STATE_QUERY:
            return [dict(self.state)]
        if plan.query == LOG_QUERY:
            {"warning": self.warnings, "log": self.logs, "debug1": self.debug}[
                args[0]
            ].append(args[1])
            return [{}]
        if plan.query == LOG_CONFIG_QUERY:
            self.config_logs.append((args[0], args[1], args[2]))
            return [{"first": True}]
        if plan.query == RECOVERY_QUERY:
            return [{"standby": self.standby}]
        if plan.query == CONFIG_DATABASE_QUERY:
            return [{"here": self.config_database, "config_database": "cfg"}]
        if plan.query == RECORD_FETCH_QUERY:
            assert self.depth > 0, "statistics must run in a subtransaction"
            self.recorded.append((args[0], args[1]))
            return [{}]
        if plan.query in (LOCK_TIMEOUT_QUERY, RESTORE_LOCK_TIMEOUT_QUERY):
            assert self.depth > 0
            return [{"previous": "0", "now": "100ms"}]
        if plan.query == PERSIST_QUERY:
            assert self.depth > 0, "writes must run in a subtransaction"
            assert not self.standby
            self._upsert(args)
            return []
        if plan.query == PROVISIONING_PRESENT_QUERY:
            return [{"present": self.provisioning is not None}]
        if plan.query == PROVISIONING_QUERY:
            return [dict(r) for r in self.provisioning or []]
        if plan.query == GROUP_ROLES_QUERY:
            return [dict(r) for r in self.group_roles]
        if plan.query == ROLE_QUERY:
            role = self.roles.get(args[0])
            return [] if role is None else [dict(role)]
        raise AssertionError(plan.query)

    def _upsert(self, args: list[Any]) -> None:
        names = ["issuer", "jwks_uri", "discovered", "jwks", "etag", "max_age"]
        row = dict(zip(names, args[:6], strict=True), fetched_at=args[6])
        for i, old in enumerate(self.jwks_cache):
            if old["issuer"] == row["issuer"]:
                if old["fetched_at"] < row["fetched_at"]:
                    self.jwks_cache[i] = row
                return
        self.jwks_cache.append(row)

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def error(self, message: str, **fields: str) -> None:
        raise FakeSpiError(message)

    def log(self, message: str) -> None:
        self.logs.append(message)


def revocation_row(rid: int, **columns: Any) -> dict[str, Any]:
    row = {"id": rid, "issuer": None, "subject": None, "token_id": None,
           "reason": None, "expires_at": None}  # fmt: skip
    row.update(columns)
    return row


@pytest.fixture
def plpy(static_jwks: str) -> FakePlpy:
    return FakePlpy([issuer_row(jwks=static_jwks)], [rule_row(1, "(alice|bob)", r"\1")])


@pytest.fixture
def token(dev: DevIssuer) -> str:
    return dev.mint({"iss": ISS, "jti": "t-1", "note": "zürich"}, aud=AUD)


COLUMNS = {
    "ok",
    "reason",
    "detail",
    "allowed_roles",
    "issuer",
    "subject",
    "token_id",
    "expires_at",
    "kid",
    "alg",
    "key_cache",
    "max_sessions",
    "claims",
}


def test_queries_are_the_documented_ones() -> None:
    assert "jwks::pg_catalog.text AS jwks" in ISSUERS_QUERY
    assert (
        "extract(epoch FROM max_token_lifetime)::pg_catalog.float8 AS max_token_lifetime"
        in ISSUERS_QUERY
    )
    assert "max_sessions_per_subject FROM oauth.issuers" in ISSUERS_QUERY
    assert " require_sub, " in ISSUERS_QUERY
    assert RULES_QUERY.endswith("max_sessions FROM oauth.role_map ORDER BY id")
    assert "client_cidrs::pg_catalog.text[] AS client_cidrs" in RULES_QUERY
    assert STATE_QUERY.endswith(" FROM oauth.config_state s")
    assert "WHERE id OPERATOR(pg_catalog.>) $1 AND" in REVOCATIONS_SINCE_QUERY


# grammar, not functions looked up by name
_GRAMMAR = {"extract", "coalesce", "exists", "in", "values", "operator", "conflict", "array",
            "any", "from"}  # FROM (subquery)


@pytest.mark.parametrize(
    "name", [n for n in dir(sql_queries) if n.endswith("_QUERY")]
)
def test_queries_resolve_no_name_through_search_path(name: str) -> None:
    """A superuser runs these in a database whose owner may not be one."""
    query = getattr(sql_queries, name)
    # a name before "(", except a table alias before its column list
    calls = re.findall(r"(?<!AS )\b([A-Za-z_][A-Za-z_0-9.]*)\s*\(", query)
    loose = [c for c in calls if "." not in c and c.lower() not in _GRAMMAR]
    assert not loose, f"unqualified functions in {name}: {loose}"
    casts = re.findall(r"::\s*([A-Za-z_][A-Za-z_0-9.]*)", query)
    assert all(c.startswith("pg_catalog.") for c in casts), (name, casts)


def test_prepared_parameter_types_are_qualified() -> None:
    for types in (PERSIST_TYPES, RECORD_FETCH_TYPES, KID_REFETCH_TYPES):
        assert all(t.startswith("pg_catalog.") for t in types), types


def test_accepted_row(plpy: FakePlpy, token: str) -> None:
    row = Adapter(plpy).validate(token, "alice", "app", "127.0.0.1", True, 1)
    assert set(row) == COLUMNS
    assert row["ok"] is True and row["reason"] == "ok"
    assert row["allowed_roles"] == ["alice"]
    assert (row["issuer"], row["subject"], row["token_id"]) == (ISS, "alice", "t-1")
    expires = datetime.fromisoformat(row["expires_at"])
    assert expires.utcoffset() is not None
    assert isinstance(row["claims"], str)
    assert '"note":"zürich"' in row["claims"]  # compact, not ASCII-escaped
    assert json.loads(row["claims"])["sub"] == "alice"
    assert (row["alg"], row["key_cache"], row["max_sessions"]) == ("RS256", "hit", None)


def test_a_1_0_schema_under_a_newer_library_still_logs_in(plpy: FakePlpy, token: str) -> None:
    """Between the restart that loads a newer library and ALTER EXTENSION pg_oauth
    UPDATE, the tables lack the columns added after 1.0: the workers read them as their
    defaults instead of failing every login."""
    plpy.missing_columns = ["allow_loopback_http", "issued_before"]
    row = Adapter(plpy).validate(token, "alice", "app", "127.0.0.1", True, 1)
    assert row["ok"] is True, row
    assert ISSUERS_QUERY not in plpy.prepared and REVOCATIONS_QUERY not in plpy.prepared
    read = query_for(ISSUERS_QUERY, frozenset(plpy.missing_columns))
    assert read in plpy.prepared and "false AS allow_loopback_http" in read
    assert "NULL::pg_catalog.float8 AS issued_before" in query_for(
        REVOCATIONS_QUERY, frozenset(plpy.missing_columns))


def test_refused_row_before_the_signature_has_no_claims(
    plpy: FakePlpy, dev: DevIssuer
) -> None:
    forged = dev.mint({"iss": ISS}, aud=AUD, sign_with_unpublished=True)
    row = Adapter(plpy).validate(forged, "alice", "app", None, True, 1)
    assert (row["ok"], row["reason"]) == (False, "bad_signature")
    assert (
        row["claims"] is None and row["subject"] is None and row["expires_at"] is None
    )
    assert forged.split(".")[2] not in row["detail"]


def test_refused_row_after_the_signature_keeps_identity(
    plpy: FakePlpy, token: str
) -> None:
    row = Adapter(plpy).validate(token, "bob", "app", None, True, 1)
    assert (row["reason"], row["allowed_roles"], row["subject"]) == (
        "role_not_allowed",
        ["alice"],
        "alice",
    )
    assert row["claims"] is not None


def test_config_is_checked_against_the_counter(plpy: FakePlpy, token: str) -> None:
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, 1)
    assert sorted(plpy.executed) == sorted([*CONFIG_QUERIES, LOG_QUERY])  # DEBUG1 line
    plpy.executed.clear()
    for _ in range(3):
        assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert plpy.executed == []  # the counter has not moved: no query at all
    # a change: only the table that changed is read again; bob is now the only role
    plpy.change("rules", [rule_row(2, "alice", "bob")])
    row = adapter.validate(token, "bob", "app", None, True, 2)
    assert row["ok"] and row["allowed_roles"] == ["bob"]
    assert plpy.executed == [STATE_QUERY, RULES_QUERY, REVOCATIONS_SINCE_QUERY, LOG_CONFIG_QUERY]
    # plans were prepared once and reused
    assert sorted(set(plpy.prepared)) == sorted(plpy.prepared)


def test_warmup_and_logins_share_one_check(plpy: FakePlpy, token: str) -> None:
    """Warm-up (which reads the counter itself) and a login (handed the counter by
    the worker) must not take each other's configuration for another version."""
    adapter = Adapter(plpy)
    adapter.warmup()
    plpy.executed.clear()
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert plpy.executed == []
    adapter.warmup()
    assert not TABLE_QUERIES & set(plpy.executed)
    assert plpy.executed.count(STATE_QUERY) == 0  # only the counter was read


def test_a_change_no_trigger_counted_reads_everything(plpy: FakePlpy, token: str) -> None:
    """The counter moved but oauth.config_state did not (triggers disabled: only
    config_guard.c saw the change), or the version moved without the counting
    triggers: the configuration is read again in full."""
    plpy.revocations = [revocation_row(1, subject="nobody")]
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, 1)
    plpy.executed.clear()
    adapter.validate(token, "alice", "app", None, True, 1)  # nothing moved: no query
    assert plpy.executed == []
    plpy.revocations.append(revocation_row(2, token_id="t-1"))  # no trigger ran
    plpy.counter = 2
    plpy.executed.clear()
    assert adapter.validate(token, "alice", "app", None, True, 2)["reason"] == "revoked"
    assert set(CONFIG_QUERIES) - {JWKS_CACHE_QUERY} <= set(plpy.executed)
    # a DELETE with the counting trigger disabled: the version moved alone
    plpy.revocations = [revocation_row(1, subject="nobody")]
    plpy.state["version"] += 1
    plpy.counter = 3
    plpy.executed.clear()
    assert adapter.validate(token, "alice", "app", None, True, 3)["ok"]
    assert REVOCATIONS_QUERY in plpy.executed and RULES_QUERY in plpy.executed


def test_a_new_revocation_is_read_by_id(plpy: FakePlpy, token: str) -> None:
    plpy.revocations = [revocation_row(i, subject=f"s{i}") for i in (1, 2, 5)]
    adapter = Adapter(plpy)
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    plpy.change("revocations", added={"token_id": "t-1", "reason": "leaked"})
    plpy.executed.clear()
    row = adapter.validate(token, "alice", "app", None, True, 2)
    assert (row["reason"], row["token_id"]) == ("revoked", "t-1")
    assert plpy.executed == [STATE_QUERY, REVOCATIONS_SINCE_QUERY, LOG_CONFIG_QUERY]
    assert len(adapter.config.revocations) == 4  # type: ignore[union-attr]
    # the next one reads from the highest id on
    plpy.change("revocations", added={"subject": "bob"})
    adapter.validate(token, "alice", "app", None, True, 3)
    assert len(adapter.config.revocations) == 5  # type: ignore[union-attr]


def test_deleted_revocations_read_the_table_again(plpy: FakePlpy, token: str) -> None:
    plpy.revocations = [revocation_row(1, token_id="t-1")]
    adapter = Adapter(plpy)
    assert adapter.validate(token, "alice", "app", None, True, 1)["reason"] == "revoked"
    plpy.change("revocations", [])
    plpy.executed.clear()
    assert adapter.validate(token, "alice", "app", None, True, 2)["ok"]
    assert REVOCATIONS_QUERY in plpy.executed
    assert not {ISSUERS_QUERY, RULES_QUERY} & set(plpy.executed)


def test_a_new_issuer_is_read_with_its_persisted_keys(
    plpy: FakePlpy, dev: DevIssuer
) -> None:
    adapter = Adapter(plpy)
    adapter.warmup()
    other = "https://other.example.com"
    plpy.change("issuers", [*plpy.issuers, issuer_row(issuer=other, jwks=None,
                                                      jwks_uri="https://other.example.com/k")])
    plpy.executed.clear()
    adapter.validate(dev.mint({"iss": ISS}, aud=AUD), "alice", "app", None, True, 2)
    assert plpy.executed.count(ISSUERS_QUERY) == 1
    assert JWKS_CACHE_QUERY in plpy.executed and RULES_QUERY not in plpy.executed
    assert set(adapter.config.issuers) == {ISS, other}  # type: ignore[union-attr]


def test_unchanged_patterns_are_not_compiled_again(plpy: FakePlpy, token: str) -> None:
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, 1)
    regex = adapter.config.rules[0].regex  # type: ignore[union-attr]
    plpy.change("rules", [*plpy.rules, rule_row(2, "carol", "carol")])
    adapter.validate(token, "alice", "app", None, True, 2)
    assert adapter.config.rules[0].regex is regex  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "untrusted",
    [{"structure": 1},  # a statement config_guard.c noted: DDL, COPY, TRUNCATE, a drop
     {"tracking": len(TRACKING_TRIGGERS) - 1}],  # a trigger keeping the counters is off
)  # fmt: skip
def test_counters_not_to_be_trusted_read_everything(
    plpy: FakePlpy, token: str, untrusted: dict[str, int]
) -> None:
    """A revocation changed behind the triggers' back, in a transaction whose other
    change the triggers did count: nothing in the counters says revocations changed."""
    plpy.revocations = [revocation_row(1, token_id="someone-else")]
    adapter = Adapter(plpy)
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    plpy.revocations[0]["token_id"] = "t-1"  # UPDATE with the triggers disabled
    plpy.change("rules", list(plpy.rules))  # and a counted change
    plpy.state.update(untrusted)
    plpy.executed.clear()
    assert adapter.validate(token, "alice", "app", None, True, 2)["reason"] == "revoked"
    assert REVOCATIONS_QUERY in plpy.executed and ISSUERS_QUERY in plpy.executed
    # once trusted again (tracking back), counted changes are read incrementally
    plpy.state["tracking"] = len(TRACKING_TRIGGERS)
    plpy.change("revocations", added={"subject": "mallory"})
    plpy.executed.clear()
    adapter.validate(token, "alice", "app", None, True, 3)
    if "tracking" in untrusted:  # the last load saw a trigger off: read in full once more
        assert REVOCATIONS_QUERY in plpy.executed
    else:
        assert plpy.executed[:2] == [STATE_QUERY, REVOCATIONS_SINCE_QUERY]


def test_a_recreated_extension_is_read_in_full(plpy: FakePlpy, token: str) -> None:
    plpy.revocations = [revocation_row(7, token_id="t-1")]
    adapter = Adapter(plpy)
    assert adapter.validate(token, "alice", "app", None, True, 1)["reason"] == "revoked"
    # DROP and CREATE EXTENSION: a new table whose version starts over
    plpy.revocations = []
    plpy.state = dict(plpy.state, table_id=16999, version=1)
    plpy.counter = 2
    plpy.executed.clear()
    assert adapter.validate(token, "alice", "app", None, True, 2)["ok"]
    assert set(CONFIG_QUERIES) <= set(plpy.executed)


def test_a_standby_compares_the_table_each_time(plpy: FakePlpy, token: str) -> None:
    """On a standby the worker passes no counter (replayed changes do not move it)."""
    plpy.counter = None
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, None)
    assert plpy.executed.count(COUNTER_QUERY) == 1 and ISSUERS_QUERY in plpy.executed
    plpy.executed.clear()
    adapter.validate(token, "alice", "app", None, True, None)
    assert plpy.executed == [COUNTER_QUERY, STATE_QUERY]  # unchanged: nothing read
    plpy.issuers = [dict(plpy.issuers[0], enabled=False)]
    plpy.state["version"] += 1  # replayed: the counter stays
    plpy.state["issuers_changes"] += 1
    plpy.executed.clear()
    row = adapter.validate(token, "alice", "app", None, True, None)
    assert row["reason"] == "untrusted_issuer"
    assert plpy.executed[:2] == [COUNTER_QUERY, STATE_QUERY] and ISSUERS_QUERY in plpy.executed


def test_loads_are_logged_once_per_change_without_context(
    plpy: FakePlpy, token: str
) -> None:
    """The first load of a worker is DEBUG1; a change goes to
    oauth._log_config_applied, which writes one LOG line for all workers; nothing
    goes through plpy.log (it adds PL/Python CONTEXT lines)."""
    adapter = Adapter(plpy)
    adapter.warmup()
    adapter.validate(token, "alice", "app", None, True, 1)
    adapter.warmup()
    assert len(plpy.debug) == 1 and "configuration version 1 loaded" in plpy.debug[0]
    assert plpy.config_logs == [] and plpy.logs == []
    plpy.change("revocations", added={"subject": "mallory"})
    adapter.validate(token, "alice", "app", None, True, 2)
    adapter.warmup()
    assert [(t, v) for t, v, _ in plpy.config_logs] == [(16400, 2)]
    assert "1 revocation added" in plpy.config_logs[0][2]
    assert "1 revocations" in plpy.config_logs[0][2]
    assert plpy.logs == []


def test_messages_without_the_log_functions_use_plpy(plpy: FakePlpy, token: str) -> None:
    plpy.log_functions_exist = False
    plpy.rules.append(rule_row(9, "(unclosed", "x"))
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, 1)
    assert any("rule id 9" in w for w in plpy.warnings)
    plpy.change("rules", list(plpy.rules))
    adapter.validate(token, "alice", "app", None, True, 2)
    assert any("configuration version 2 loaded" in m for m in plpy.logs)


def test_warmup_and_explain_read_persisted_keys_once(plpy: FakePlpy, token: str) -> None:
    """Loading new issuers adopts persisted keys; warm-up and explain adopt them
    anyway, so a reload there must not read oauth.jwks_cache a second time."""
    adapter = Adapter(plpy)
    adapter.warmup()
    assert plpy.executed.count(JWKS_CACHE_QUERY) == 1
    plpy.change("issuers", [dict(plpy.issuers[0])])
    plpy.executed.clear()
    adapter.explain(token, "alice", "app")
    assert ISSUERS_QUERY in plpy.executed
    assert plpy.executed.count(JWKS_CACHE_QUERY) == 1
    plpy.change("issuers", [dict(plpy.issuers[0])])
    plpy.executed.clear()
    adapter.validate(token, "alice", "app", None, True, 7)  # a login's reload seeds too
    assert plpy.executed.count(JWKS_CACHE_QUERY) == 1


def test_errors_become_validator_error_rows(plpy: FakePlpy, token: str) -> None:
    plpy.fail_with = RuntimeError(f"database says no to {token}")
    row = Adapter(plpy).validate(token, "alice", "app", None, True, 1)
    assert (row["ok"], row["reason"], row["detail"]) == (
        False,
        "validator_error",
        "RuntimeError",
    )
    assert set(row) == COLUMNS
    assert all(token not in w for w in plpy.warnings)


def test_strings_postgres_cannot_store_are_replaced(
    plpy: FakePlpy, dev: DevIssuer
) -> None:
    token = dev.mint(
        {"iss": ISS, "nul": "a\x00b", "lone": "\ud800", "k\x00": 1}, aud=AUD
    )
    row = Adapter(plpy).validate(token, "alice", "app", None, True, 1)
    assert row["ok"]
    assert "\x00" not in row["claims"] and "\\u0000" not in row["claims"]
    assert json.loads(row["claims"])["nul"] == "a\ufffdb"
    row["claims"].encode("utf-8")  # no lone surrogates left


def test_broken_rules_are_logged_once_per_load(plpy: FakePlpy, token: str) -> None:
    plpy.rules.append(rule_row(9, "(unclosed", "x"))
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, 1)
    adapter.validate(token, "alice", "app", None, True, 1)
    assert len([w for w in plpy.warnings if "rule id 9" in w]) == 1


def test_warmup_loads_keys_and_summarises(plpy: FakePlpy) -> None:
    adapter = Adapter(plpy)
    summary = adapter.warmup()
    assert summary == f"1 issuers, {len(adapter.keys.keys(ISS))} keys"
    assert len(adapter.keys.keys(ISS)) >= 3
    assert COUNTER_QUERY in plpy.executed


def test_warmup_fetches_remote_keys_and_logs_failures(
    plpy: FakePlpy, dev: DevIssuer
) -> None:
    server = DevIssuer(dev.key_dir).start()
    try:
        plpy.issuers = [
            issuer_row(issuer=server.issuer, jwks=None, jwks_cooldown=0.0,
                       allow_loopback_http=True),
            issuer_row(
                issuer="https://unreachable.invalid", jwks_uri="http://10.0.0.1/k"
            ),
        ]
        adapter = Adapter(plpy)
        summary = adapter.warmup()
        assert (
            summary.startswith("2 issuers, ")
            and "1 issuers without fresh keys" in summary
        )
        assert server.jwks_requests == 1
        assert any("plain http is refused" in w for w in plpy.warnings)
        # keys are fresh: a second warmup fetches nothing
        adapter.warmup()
        assert server.jwks_requests == 1
        # and the login path needs no network either
        token = server.mint(aud=AUD, sub="alice")
        plpy.change("rules", [rule_row(1, "alice", "alice", issuer=server.issuer)])
        assert adapter.validate(token, "alice", "app", None, True, None)["ok"]
        assert server.jwks_requests == 1
    finally:
        server.stop()


def test_skipped_keys_are_logged_once_and_explained(
    plpy: FakePlpy, dev: DevIssuer, token: str
) -> None:
    evil = {"kty": "OKP", "crv": "Ed25519", "x": "AQ" + "A" * 41, "kid": "evil"}
    plpy.issuers = [issuer_row(jwks=json.dumps({"keys": [evil, *dev.jwks()["keys"]]}))]
    adapter = Adapter(plpy)
    adapter.warmup()
    note = "key kid 'evil' skipped: Ed25519 public key is a small-order point"
    assert plpy.warnings == [f"pg_oauth: keys of issuer {ISS!a}: {note}"]
    adapter.warmup()
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert len(plpy.warnings) == 1  # not again for the same keys
    rows = adapter.explain(token, "alice", "app")
    key_row = next(r for r in rows if r["name"] == "key")
    assert note in key_row["input"]


def test_warmup_never_raises(plpy: FakePlpy) -> None:
    plpy.fail_with = RuntimeError("no table")
    assert "unavailable" in Adapter(plpy).warmup()
    assert plpy.warnings


def test_now_is_the_wall_clock(plpy: FakePlpy, dev: DevIssuer) -> None:
    old = dev.mint({"iss": ISS}, aud=AUD, now=NOW)  # issued in 2023
    assert (
        Adapter(plpy).validate(old, "alice", "app", None, True, 1)["reason"]
        == "expired"
    )


def test_claims_json_is_untouched_when_clean() -> None:
    from pyhook.sql_rows import claims_json

    assert (
        claims_json({"a": "b\\u0000c", "n": [1, 2.5]})
        == '{"a":"b\\\\u0000c","n":[1,2.5]}'
    )
    assert json.loads(claims_json({"a": "\x00"})) == {"a": "\ufffd"}


# -- revocations, oauth.jwks_cache, fetch statistics, explain ---------------------------

JWKS_URL = "https://idp.example.com/keys"


def remote_plpy(dev: DevIssuer) -> FakePlpy:
    return FakePlpy(
        [issuer_row(jwks_uri=JWKS_URL, jwks_cooldown=0.0)],
        [rule_row(1, "(alice|bob)", r"\1")],
    )


def remote_adapter(plpy: FakePlpy, docs: Any) -> Adapter:
    adapter = Adapter(plpy)
    adapter.keys = KeyStore(fetch=docs)
    return adapter


def test_revocations_are_cached_with_the_configuration(
    plpy: FakePlpy, token: str
) -> None:
    plpy.revocations = [
        {"id": 1, "issuer": None, "subject": None, "token_id": "t-1",
         "reason": "leaked", "expires_at": None},
    ]  # fmt: skip
    adapter = Adapter(plpy)
    row = adapter.validate(token, "alice", "app", None, True, 1)
    assert (row["reason"], row["token_id"]) == ("revoked", "t-1")
    assert "leaked" in row["detail"]
    plpy.executed.clear()
    adapter.validate(token, "alice", "app", None, True, 1)
    assert plpy.executed == []  # no query per login
    plpy.change("revocations", [])
    assert adapter.validate(token, "alice", "app", None, True, 2)["ok"]


def test_fetched_keys_are_reported_and_stored(dev: DevIssuer, token: str) -> None:
    plpy = remote_plpy(dev)
    docs = Documents({JWKS_URL: dev.jwks()})
    adapter = remote_adapter(plpy, docs)
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert plpy.recorded == [(ISS, True)]
    assert len(plpy.jwks_cache) == 1
    stored = plpy.jwks_cache[0]
    assert (stored["issuer"], stored["jwks_uri"], stored["discovered"]) == (
        ISS,
        JWKS_URL,
        False,
    )
    assert '"d"' not in stored["jwks"]
    # steady state: nothing executed, nothing recorded, nothing written
    plpy.executed.clear()
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert plpy.executed == [] and plpy.recorded == [(ISS, True)]


def test_failed_fetches_are_reported(dev: DevIssuer, token: str) -> None:
    plpy = remote_plpy(dev)
    adapter = remote_adapter(plpy, Documents())
    assert adapter.validate(token, "alice", "app", None, True, 1)["reason"] == (
        "jwks_unavailable"
    )
    assert plpy.recorded == [(ISS, False)] and plpy.jwks_cache == []


def test_a_missing_statistics_function_changes_nothing(
    dev: DevIssuer, token: str
) -> None:
    plpy = remote_plpy(dev)
    plpy.record_fetch_exists = False
    adapter = remote_adapter(plpy, Documents({JWKS_URL: dev.jwks()}))
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert plpy.recorded == [] and len(plpy.jwks_cache) == 1
    assert plpy.warnings == []


def test_a_standby_never_writes(dev: DevIssuer, token: str) -> None:
    plpy = remote_plpy(dev)
    plpy.standby = True
    adapter = remote_adapter(plpy, Documents({JWKS_URL: dev.jwks()}))
    assert adapter.validate(token, "alice", "app", None, True, None)["ok"]
    assert PERSIST_QUERY not in plpy.executed and plpy.jwks_cache == []
    assert plpy.recorded == [(ISS, True)]


def test_a_new_process_starts_warm_from_the_table(dev: DevIssuer, token: str) -> None:
    plpy = remote_plpy(dev)
    first = remote_adapter(plpy, Documents({JWKS_URL: dev.jwks()}))
    assert first.warmup() == "1 issuers, 10 keys"
    assert len(plpy.jwks_cache) == 1
    # a restarted worker, a standby, or an explain session: no network at all
    second = remote_adapter(plpy, no_network)
    assert second.warmup() == "1 issuers, 10 keys"
    assert second.validate(token, "alice", "app", None, True, None)["ok"]
    assert (
        second.validate(token, "alice", "app", None, True, None)["key_cache"] == "hit"
    )


def test_warmup_adopts_keys_another_process_fetched(
    dev: DevIssuer, tmp_path: Any
) -> None:
    plpy = remote_plpy(dev)
    first = remote_adapter(plpy, Documents({JWKS_URL: dev.jwks()}))
    second = remote_adapter(plpy, Documents({JWKS_URL: dev.jwks()}))
    first.warmup()
    second.warmup()
    rotated = DevIssuer(str(tmp_path))
    new_kid = rotated.rotate("ES256")
    first.keys = KeyStore(fetch=Documents({JWKS_URL: rotated.jwks()}))
    first.keys.refresh(first.config.issuers[ISS])  # type: ignore[union-attr]
    first._after_fetches()
    assert new_kid in plpy.jwks_cache[0]["jwks"]
    second.keys._fetch = no_network  # the worker must not need the network for it
    second.warmup()
    assert any(k.kid == new_kid for k in second.keys.keys(ISS))


def test_a_failing_write_is_logged_not_raised(dev: DevIssuer, token: str) -> None:
    plpy = remote_plpy(dev)
    adapter = remote_adapter(plpy, Documents({JWKS_URL: dev.jwks()}))
    original = plpy.execute

    def execute(plan: FakePlan, args: list[Any] | None = None) -> Any:
        if plan.query == PERSIST_QUERY:
            raise FakeSpiError("canceling statement due to lock timeout")
        return original(plan, args)

    plpy.execute = execute  # type: ignore[method-assign]
    assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert any("not stored in oauth.jwks_cache" in m for m in plpy.logs)


def test_explain_rows(plpy: FakePlpy, token: str) -> None:
    rows = Adapter(plpy).explain(token, "alice", "app", "10.0.0.5")
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert set(rows[0]) == {"step", "name", "outcome", "input", "detail"}
    names = [r["name"] for r in rows]
    assert names[:3] == ["header", "issuer", "algorithm"]
    assert "rule 1" in names and names[-2:] == ["role", "decision"]
    assert rows[-1]["outcome"] == "pass"
    assert rows[-1]["detail"] == "ok: role 'alice' allowed"
    text = json.dumps(rows)
    assert token.split(".")[2] not in text and token not in text


@pytest.mark.parametrize(
    ("role", "attributes", "reason"),
    [
        ("alice", {"rolcanlogin": True, "refused": ["superuser"], "refused_via": ["alice"]},
         "superuser_forbidden"),
        ("alice", {"rolcanlogin": True, "refused": ["pg_execute_server_program"],
                   "refused_via": ["ops"]}, "privilege_forbidden"),
        ("alice", {"rolcanlogin": False, "refused": [], "refused_via": []},
         "role_cannot_login"),
        ("alice", None, "unknown_role"),
    ],
)
def test_explain_checks_the_role_like_the_backend(
    plpy: FakePlpy, token: str, role: str, attributes: Any, reason: str
) -> None:
    if attributes is None:
        del plpy.roles[role]
    else:
        plpy.roles[role] = attributes
    rows = Adapter(plpy).explain(token, role, "app")
    assert rows[-2]["name"] == "role" and rows[-2]["outcome"] == "fail"
    assert rows[-1]["outcome"] == "fail" and rows[-1]["detail"].startswith(reason)


def test_explain_of_a_refused_token_keeps_the_validator_reason(
    plpy: FakePlpy, token: str
) -> None:
    rows = Adapter(plpy).explain(token, "bob", "app")
    assert rows[-1]["detail"].startswith("role_not_allowed: ")
    assert rows[-2] == dict(rows[-2], name="role", outcome="pass")


def test_explain_never_raises(plpy: FakePlpy, token: str) -> None:
    plpy.fail_with = RuntimeError("no table")
    rows = Adapter(plpy).explain(token, "alice", "app")
    assert rows == [
        {"step": 1, "name": "decision", "outcome": "fail", "input": "allowed roles: none",
         "detail": "validator_error: RuntimeError"},
    ]  # fmt: skip


def test_explain_outside_the_configuration_database_names_it(
    plpy: FakePlpy, token: str
) -> None:
    plpy.config_database = False
    with pytest.raises(FakeSpiError, match='lives in database "cfg"'):
        Adapter(plpy).explain(token, "alice", "app")
    assert ISSUERS_QUERY not in plpy.executed
