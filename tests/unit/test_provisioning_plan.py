"""Provisioning's pure half: the name a token's role gets, the group roles its groups
give, and every refusal (docs/provisioning.md). The SQL half runs in
tests/integration/test_provisioning.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from unit_support import ISS, assert_refused, rule_row

from pyhook.config import Config
from pyhook.decision import Decision
from pyhook.errors import ValidationError
from pyhook.provisioning import (
    ProvisioningPlan,
    groups_overflowed,
    name_problem,
    policies_from_rows,
    policy_row_problem,
)

Check = Callable[..., Decision]
Mint = Callable[..., str]


def policy_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "issuer": ISS, "role_claim": "email", "role_pattern": r"([a-z0-9._-]+)@example\.com",
        "role_name": r"\1", "lowercase": True, "groups_claim": "groups", "max_groups": 200,
        "enabled": True,
    }  # fmt: skip
    row.update(overrides)
    return row


def group_row(id: int, pattern: str, role: str) -> dict[str, Any]:
    return {"id": id, "issuer": ISS, "group_pattern": pattern, "role": role}


GROUPS = [group_row(1, "sales", "sales_reader"), group_row(2, r"db-([a-z_]+)", r"team_\1")]


@pytest.fixture
def provisioned(config: Callable[..., Config]) -> Callable[..., Config]:
    def _config(
        policy: dict[str, Any] | None = None,
        groups: list[dict[str, Any]] | None = None,
        rules: list[dict[str, Any]] | None = None,
    ) -> Config:
        cfg = config(rules=rules if rules is not None else [rule_row(1, "nobody", "nobody")])
        policies, skipped = policies_from_rows(
            [policy or policy_row()], GROUPS if groups is None else groups
        )
        assert not skipped
        cfg.provisioning = policies
        return cfg

    return _config


def plan_of(decision: Decision) -> ProvisioningPlan:
    assert decision.ok, decision.detail
    assert isinstance(decision.provisioning, ProvisioningPlan)
    return decision.provisioning


def test_first_login_names_the_role_and_its_groups(
    mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": "Alice.Smith@example.com",
                  "groups": ["sales", "db-ops", "db-Bad", "other"]})  # fmt: skip
    decision = check(token, "alice.smith", cfg=provisioned())
    plan = plan_of(decision)
    assert decision.allowed_roles == ["alice.smith"]
    assert (plan.role, plan.subject, plan.issuer) == ("alice.smith", "u-1", ISS)
    # db-Bad does not match [a-z_]+: it gives nothing; other matches no rule
    assert plan.groups == ("sales_reader", "team_ops") and plan.token_groups == 4
    assert not plan.mapped


def test_no_groups_claim_means_no_group_roles(
    mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": "alice@example.com"})
    plan = plan_of(check(token, "alice", cfg=provisioned()))
    assert plan.groups == ()  # every managed membership goes
    plan = plan_of(check(token, "alice", cfg=provisioned(policy_row(groups_claim=None))))
    assert plan.groups is None  # memberships are not synced at all


def test_case_is_kept_when_asked(mint: Mint, check: Check, provisioned: Callable[..., Config]) -> None:
    token = mint({"sub": "u-1", "email": "Alice@example.com"})
    cfg = provisioned(policy_row(lowercase=False, role_pattern=r"([A-Za-z]+)@example\.com"))
    assert plan_of(check(token, "Alice", cfg=cfg)).role == "Alice"
    assert_refused(check(token, "alice", cfg=cfg), "role_not_allowed")


def test_a_role_other_than_the_named_one_is_not_provisioned(
    mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": "alice@example.com"})
    cfg = provisioned(rules=[rule_row(1, "u-1", "reporting")])
    decision = check(token, "reporting", cfg=cfg)
    assert decision.ok and decision.provisioning is None
    assert decision.allowed_roles == ["reporting"]
    assert_refused(check(token, "bob", cfg=cfg), "role_not_allowed")


def test_a_role_role_map_admits_too_is_marked_mapped(
    mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": "alice@example.com"})
    plan = plan_of(check(token, "alice", cfg=provisioned(rules=[rule_row(1, "u-1", "alice")])))
    assert plan.mapped


def test_authenticate_without_a_role_takes_the_provisioned_one(
    mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": "alice@example.com"})
    assert plan_of(check(token, "", cfg=provisioned())).role == "alice"


@pytest.mark.parametrize(
    ("email", "why"),
    [
        ("pg_monitor@example.com", "reserved for PostgreSQL"),
        ("public@example.com", "reserved word"),
        ("all@example.com", "reserved word"),
        ("a" * 64 + "@example.com", "64 bytes long"),
        ("-dash@example.com", "characters"),
    ],
)
def test_names_that_may_not_become_roles(
    email: str, why: str, mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": email})
    role = email.split("@")[0]
    decision = check(token, role, cfg=provisioned(policy_row(role_pattern=r"(.+)@example\.com")))
    assert_refused(decision, "provisioning_forbidden", token)
    assert why in decision.detail


def test_odd_characters_never_make_a_name() -> None:
    for name in ['a"b', "a b", "a;b", "a\x00b", "é", "a\nb", "+grp", "@file", "/re", ".x", "a,b"]:
        assert name_problem(name) is not None, name
    for name in ["alice", "alice.smith", "alice@example.com", "a+b", "x_1-2", "A" * 63]:
        assert name_problem(name) is None, name


def test_too_many_groups_are_refused(
    mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": "alice@example.com",
                  "groups": [f"g{i}" for i in range(1_000)]})  # fmt: skip
    decision = check(token, "alice", cfg=provisioned())
    assert_refused(decision, "provisioning_forbidden", token)
    assert "1000 groups" in decision.detail
    cfg = provisioned(policy_row(max_groups=1_000))
    assert plan_of(check(token, "alice", cfg=cfg)).groups == ()


def test_ten_thousand_groups_are_counted_before_they_are_matched(
    provisioned: Callable[..., Config],
) -> None:
    # such a token is larger than any token pg_oauth reads (too_large): the planner
    # itself refuses the count before matching a single group
    from unit_support import NOW, no_network

    from pyhook.jwks_cache import KeyStore
    from pyhook.validator import _Validation

    cfg = provisioned()
    claims = {"sub": "u-1", "email": "alice@example.com",
              "groups": [f"group-{i}" for i in range(10_000)]}  # fmt: skip
    run = _Validation(cfg, KeyStore(fetch=no_network), NOW)
    with pytest.raises(ValidationError) as refused:
        run._provisioning_plan(cfg.provisioning[ISS], claims, "alice", set())
    assert refused.value.reason == "provisioning_forbidden"
    assert "10000 groups" in refused.value.detail


def test_overflowing_groups_are_refused(
    mint: Mint, check: Check, provisioned: Callable[..., Config]
) -> None:
    token = mint({"sub": "u-1", "email": "alice@example.com",
                  "_claim_names": {"groups": "src1"},
                  "_claim_sources": {"src1": {"endpoint": "https://graph.example/x"}}})  # fmt: skip
    decision = check(token, "alice", cfg=provisioned())
    assert_refused(decision, "provisioning_forbidden", token)
    assert "overflowed" in decision.detail
    assert groups_overflowed({"hasgroups": True}, "groups")
    assert not groups_overflowed({"hasgroups": True, "groups": []}, "groups")


def test_rows_are_checked_when_written() -> None:
    assert policy_row_problem("provisioning", policy_row()) is None
    assert "RE2" in (policy_row_problem("provisioning", policy_row(role_pattern="(a)\\1")) or "")
    assert policy_row_problem("provisioning", policy_row(role_name=r"\2")) is not None
    assert policy_row_problem("group_roles", group_row(1, "x", "y")) is None
    assert policy_row_problem("group_roles", group_row(1, "(", "y")) is not None


def test_explain_shows_the_provisioning_step(
    mint: Mint, provisioned: Callable[..., Config]
) -> None:
    from unit_support import NOW, no_network

    from pyhook.jwks_cache import KeyStore
    from pyhook.validator import validate

    token = mint({"sub": "u-1", "email": "alice@example.com", "groups": ["sales"]})
    decision = validate(token, "alice", "app", None, True, provisioned(),
                        KeyStore(fetch=no_network), now=NOW, explain=True)  # fmt: skip
    steps = [c for c in decision.trail if c.name == "provisioning"]
    assert steps and "sales_reader" in steps[0].info
