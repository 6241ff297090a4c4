"""role_map patterns run on RE2, in time linear in the claim value (issue 19, item 7):
a pattern with nested quantifiers and a value the user controls hold no worker."""

from __future__ import annotations

import threading

import psycopg
import pytest
from conftest import attempt


@pytest.fixture
def pathological_rule(cluster, issuer):
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'email', '([a-z]+)*@corp\\.com', 'carol')", (issuer.issuer,))
    yield
    cluster.sql("DELETE FROM oauth.role_map WHERE role = 'carol'")


def test_nested_quantifiers_and_a_long_value_hold_no_worker(cluster, issuer,
                                                             pathological_rule):
    # Python's backtracking took 0.5 s at 24 characters, doubling with each more:
    # 60 would have held the worker past pg_oauth.timeout, days in fact
    evil = issuer.mint({"email": "a" * 60 + "!"}, sub="mallory")
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        f"evil{i}", attempt(cluster, "carol", evil))) for i in range(4)]
    for t in threads:
        t.start()
    # other logins go through meanwhile
    assert attempt(cluster, "alice", issuer.mint(sub="alice")) == "ok"
    for t in threads:
        t.join(60)
    assert set(results.values()) == {"role_not_allowed"}, results
    # the rule itself works
    assert attempt(cluster, "carol", issuer.mint({"email": "carol@corp.com"},
                                                 sub="mallory")) == "ok"


@pytest.mark.parametrize("pattern", ["(a)\\1", "(?=admin)[a-z]+", "a++"])
def test_patterns_re2_cannot_run_are_refused_when_written(cluster, issuer, pattern):
    with pytest.raises(psycopg.Error) as excinfo:
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, 'sub', %s, 'alice')", (issuer.issuer, pattern))
    assert "not supported by RE2 (" in str(excinfo.value) and "b'" not in str(excinfo.value)
    assert "linear time" in str(excinfo.value)
