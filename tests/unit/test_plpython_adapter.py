"""The PL/Python adapter, with a small stand-in for the ``plpy`` module.

The fake stands for what PL/Python hands to functions (prepare/execute/log),
not for PostgreSQL; the real thing is exercised by tests/integration.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from unit_support import AUD, ISS, NOW, issuer_row, rule_row

from pyhook.dev_issuer import DevIssuer
from pyhook.plpython_adapter import ISSUERS_QUERY, RULES_QUERY, VERSION_QUERY, Adapter


class FakePlan:
    def __init__(self, query: str) -> None:
        self.query = query


class FakePlpy:
    """What PL/Python provides: prepare, execute, and the log functions."""

    def __init__(
        self, issuers: list[dict[str, Any]], rules: list[dict[str, Any]]
    ) -> None:
        self.issuers, self.rules, self.version = issuers, rules, 1
        self.prepared: list[str] = []
        self.executed: list[str] = []
        self.warnings: list[str] = []
        self.logs: list[str] = []
        self.fail_with: Exception | None = None

    def prepare(self, query: str, argtypes: list[str] | None = None) -> FakePlan:
        self.prepared.append(query)
        return FakePlan(query)

    def execute(
        self, plan: FakePlan, args: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        assert isinstance(plan, FakePlan), "queries must go through prepared plans"
        if self.fail_with is not None:
            raise self.fail_with
        self.executed.append(plan.query)
        if plan.query == ISSUERS_QUERY:
            return [dict(r) for r in self.issuers]
        if plan.query == RULES_QUERY:
            return [dict(r) for r in self.rules]
        if plan.query == VERSION_QUERY:
            return [{"version": self.version}]
        raise AssertionError(plan.query)

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def log(self, message: str) -> None:
        self.logs.append(message)


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
    assert "jwks::text AS jwks" in ISSUERS_QUERY
    assert (
        "extract(epoch FROM max_token_lifetime)::float8 AS max_token_lifetime"
        in ISSUERS_QUERY
    )
    assert "max_sessions_per_subject FROM oauth.issuers" in ISSUERS_QUERY
    assert RULES_QUERY.endswith("max_sessions FROM oauth.role_map ORDER BY id")
    assert "client_cidrs::text[] AS client_cidrs" in RULES_QUERY
    assert VERSION_QUERY == "SELECT version FROM oauth.config_state"


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


def test_config_is_cached_per_version(plpy: FakePlpy, token: str) -> None:
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, 1)
    assert sorted(plpy.executed) == sorted([ISSUERS_QUERY, RULES_QUERY])
    plpy.executed.clear()
    for _ in range(3):
        assert adapter.validate(token, "alice", "app", None, True, 1)["ok"]
    assert plpy.executed == []  # same version: no query at all
    # a new version reloads: bob is now the only mapped role
    plpy.rules = [rule_row(2, "alice", "bob")]
    row = adapter.validate(token, "bob", "app", None, True, 2)
    assert row["ok"] and row["allowed_roles"] == ["bob"]
    assert sorted(plpy.executed) == sorted([ISSUERS_QUERY, RULES_QUERY])
    # plans were prepared once and reused
    assert sorted(plpy.prepared) == sorted([ISSUERS_QUERY, RULES_QUERY])


def test_unknown_version_reads_config_state(plpy: FakePlpy, token: str) -> None:
    adapter = Adapter(plpy)
    adapter.validate(token, "alice", "app", None, True, None)
    assert plpy.executed.count(VERSION_QUERY) == 1 and ISSUERS_QUERY in plpy.executed
    plpy.executed.clear()
    adapter.validate(token, "alice", "app", None, True, None)
    assert plpy.executed == [VERSION_QUERY]  # unchanged: no reload
    plpy.version = 5
    plpy.issuers = [dict(plpy.issuers[0], enabled=False)]
    plpy.executed.clear()
    row = adapter.validate(token, "alice", "app", None, True, None)
    assert row["reason"] == "untrusted_issuer"
    assert plpy.executed[0] == VERSION_QUERY and ISSUERS_QUERY in plpy.executed
    assert plpy.prepared.count(VERSION_QUERY) == 1


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
    assert VERSION_QUERY in plpy.executed


def test_warmup_fetches_remote_keys_and_logs_failures(
    plpy: FakePlpy, dev: DevIssuer
) -> None:
    server = DevIssuer(dev.key_dir).start()
    try:
        plpy.issuers = [
            issuer_row(issuer=server.issuer, jwks=None, jwks_cooldown=0.0),
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
        plpy.rules = [rule_row(1, "alice", "alice", issuer=server.issuer)]
        plpy.version = 2
        assert adapter.validate(token, "alice", "app", None, True, None)["ok"]
        assert server.jwks_requests == 1
    finally:
        server.stop()


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
    from pyhook.plpython_adapter import claims_json

    assert (
        claims_json({"a": "b\\u0000c", "n": [1, 2.5]})
        == '{"a":"b\\\\u0000c","n":[1,2.5]}'
    )
    assert json.loads(claims_json({"a": "\x00"})) == {"a": "\ufffd"}
