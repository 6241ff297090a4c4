"""Large configurations: literal role_map patterns found by value, revocations that grow."""

from __future__ import annotations

import itertools
import random
import re
from typing import Any

import pytest
from unit_support import ISS, NOW, issuer_row, rule_row

from pyhook.config import (
    CompiledPattern,
    Config,
    Revocation,
    Revocations,
    RoleRule,
    literal_values,
)
from pyhook.validator import _matching_rules, _rule_roles


@pytest.mark.parametrize(
    ("pattern", "values"),
    [
        ("alice", {"alice"}),
        ("", {""}),
        (r"alice@example\.com", {"alice@example.com"}),
        ("(alice|bob)", {"alice", "bob"}),
        ("alice|bob", {"alice", "bob"}),
        ("^(?:dba|ops)$", {"dba", "ops"}),
        ("^team-1$", {"team-1"}),
        ("(a|)", {"a", ""}),
        ("^a|b$", {"a", "b"}),
        (r"a\$b\(c\)", {"a$b(c)"}),
        ("grüppe/ä", {"grüppe/ä"}),
        (r"\é", {"é"}),
    ],
)
def test_literal_patterns(pattern: str, values: set[str]) -> None:
    assert literal_values(pattern) == values
    assert all(re.fullmatch(pattern, v) for v in values)


@pytest.mark.parametrize(
    "pattern",
    [
        "a.c", "a*", "a+", "a?", "a{2}", "[ab]", r"\d", r"a\.\d", r"\w+", "(a)(b)",
        "(a|(b))", "(?i)alice", "(?P<n>a)", "(?=a)a", "a$|b", r"\Aa\Z", "a\\",
        "(a|b)c", "c(a|b)", r"(a)\1", "((a))", "a{", "}",
    ],
)  # fmt: skip
def test_patterns_that_need_the_regex_engine(pattern: str) -> None:
    assert literal_values(pattern) is None


def test_literal_reading_never_misses_a_value() -> None:
    """Whatever the pattern, a value it fully matches is among the values read off it
    (when it reads as literal): checked over every short pattern of these characters."""
    alphabet = ["a", "b", "|", "(", ")", "^", "$", "\\", ".", "?", ":", "*"]
    values = ["", "a", "b", "ab", "ba", "aa", "a|b", "(a)", "a$", "^a", "a.", ".", "?", ":"]
    checked = 0
    for length in range(1, 6):
        for chars in itertools.product(alphabet, repeat=length):
            pattern = "".join(chars)
            try:
                regex = re.compile(pattern)
            except re.error:
                continue
            literals = literal_values(pattern)
            if literals is None:
                continue
            checked += 1
            for value in values:
                assert (regex.fullmatch(value) is not None) == (value in literals), (
                    pattern, value)  # fmt: skip
    assert checked > 1000


def test_compiled_pattern_checks_what_it_read() -> None:
    assert CompiledPattern.compile("(alice|bob)").literals == {"alice", "bob"}
    assert CompiledPattern.compile("ali.e").literals is None


def random_rules(rng: random.Random, count: int) -> list[dict[str, Any]]:
    patterns = ["alice", "(alice|bob)", "bob", "dba", "(dba|ops)", "[a-z]+", ".*", "a.*",
                "(ops)", "team-(.+)", r"alice@example\.com", "carol|", "^(?:dba)$", "d(ba)"]  # fmt: skip
    claims = ["sub", "groups", "email", "realm.roles"]
    roles = ["r1", "r2", r"\1", "r3"]
    rows = []
    for i in range(count):
        pattern = rng.choice(patterns)
        role = rng.choice(roles)
        if role == r"\1" and re.compile(pattern).groups == 0:
            role = "r4"
        rows.append(rule_row(i + 1, pattern, role, claim=rng.choice(claims)))
    return rows


def test_matching_by_value_finds_what_matching_every_rule_finds() -> None:
    rng = random.Random(11)
    values = ["alice", "bob", "dba", "ops", "team-x", "alice@example.com", "carol", "", "Dba"]
    for _ in range(200):
        config = Config.from_rows([issuer_row()], random_rules(rng, rng.randint(1, 30)))
        claims = {
            "sub": rng.choice(values),
            "groups": rng.sample(values, rng.randint(0, 4)),
            "realm": {"roles": rng.sample(values, 2)},
        }
        if rng.random() < 0.5:
            claims["email"] = rng.choice(values)
        expected = [
            (rule, roles)
            for rule in config.rules_for(ISS)
            if (roles := _rule_roles(rule, claims))
        ]
        assert _matching_rules(config.claim_rules(ISS), claims) == expected


def test_rules_are_grouped_by_issuer_and_claim() -> None:
    config = Config.from_rows(
        [issuer_row(), issuer_row(issuer="https://other.example.com")],
        [rule_row(1, "(alice|bob)", r"\1"), rule_row(2, "dba", "admin", claim="groups"),
         rule_row(3, "[a-z]+", "reader", claim="groups"),
         rule_row(4, "alice", "x", issuer="https://other.example.com")],
    )  # fmt: skip
    groups = {g.claim: g for g in config.claim_rules(ISS)}
    assert set(groups) == {"sub", "groups"}
    assert set(groups["sub"].by_value) == {"alice", "bob"} and groups["sub"].others == ()
    assert [r.id for r in groups["groups"].others] == [3]
    assert [r.id for r in groups["groups"].by_value["dba"]] == [2]
    assert config.claim_rules("https://nobody.example.com") == ()


def test_patterns_are_compiled_once_per_cache() -> None:
    cache: dict[str, CompiledPattern] = {}
    first = RoleRule.from_row(rule_row(1, "(a|b)", r"\1"), cache)
    second = RoleRule.from_row(rule_row(2, "(a|b)", "x"), cache)
    assert first.regex is second.regex and list(cache) == ["(a|b)"]


def test_revocations_grow_and_keep_id_order() -> None:
    revocations = Revocations.from_rows(
        [{"id": 3, "subject": "alice"}, {"id": 9, "token_id": "t-1"}]
    )
    assert (len(revocations), revocations.highest_id) == (2, 9)
    assert revocations.add_rows([{"id": 12, "issuer": ISS, "subject": "alice"}]) == 1
    assert (len(revocations), revocations.highest_id) == (3, 12)
    found = revocations.covering(ISS, "alice", "t-1", NOW)
    assert found == Revocation(id=3, subject="alice")
    assert revocations.covering(ISS, "bob", None, NOW) is None
    assert revocations.covering("https://x", "alice", None, NOW).id == 3  # type: ignore[union-attr]


def test_a_revocation_row_that_cannot_be_read_adds_nothing() -> None:
    revocations = Revocations.from_rows([{"id": 1, "subject": "a"}])
    with pytest.raises(ValueError):
        revocations.add_rows([{"id": 2, "subject": "b"}, {"id": "x", "subject": "c"}])
    assert (len(revocations), revocations.highest_id) == (1, 1)


def test_an_updated_config_shares_what_did_not_change() -> None:
    config = Config.from_rows([issuer_row()], [rule_row(1, "alice", "alice")], 1,
                              [{"id": 1, "subject": "mallory"}])  # fmt: skip
    rules = Config.rules_from_rows([rule_row(2, "bob", "bob")])
    updated = config.updated(2, rules=rules)
    assert updated.version == 2 and updated.issuers is config.issuers
    assert updated.revocations is config.revocations
    assert [r.id for r in updated.rules_for(ISS)] == [2]
    assert [r.id for r in config.rules_for(ISS)] == [1]  # the original is untouched
