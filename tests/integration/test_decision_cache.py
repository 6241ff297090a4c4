"""The decision cache: a token presented again is admitted without a worker, and
nothing that would change the decision is missed (config, revocation, keys, expiry)."""

from __future__ import annotations

import hashlib
import os
import time


def audit_lines(cluster, token_id: str) -> list[str]:
    return [line for line in cluster.log_text().splitlines()
            if "pg_oauth audit:" in line and f'token_id="{token_id}"' in line]


def login(cluster, user, token) -> None:
    cluster.token_connect(user, token).close()


def test_repeated_token_is_admitted_from_the_cache(cluster, issuer):
    cluster.sql("SELECT oauth.stats_reset()")
    token = issuer.mint(sub="alice", jti="cache-1")
    for _ in range(3):
        login(cluster, "alice", token)
    lines = audit_lines(cluster, "cache-1")
    assert len(lines) == 3
    assert "cache=hit" not in lines[0]
    assert all("cache=hit" in line for line in lines[1:])
    # claims are the same for a cached login
    with cluster.token_connect("alice", token) as conn:
        assert conn.execute("SELECT oauth.claim('jti'), oauth.claim('sub')").fetchone() == \
            ("cache-1", "alice")
    hits = cluster.sql("SELECT decision_cache_hits FROM oauth.stats WHERE issuer = %s",
                       (issuer.issuer,))
    assert hits == [(3,)]


def test_cache_is_per_role_database_and_client(cluster, issuer, refused):
    token = issuer.mint(sub="alice", jti="cache-2")
    login(cluster, "alice", token)
    # same token, other role: decided afresh (and refused)
    assert refused("bob", token) == "role_not_allowed"


def test_config_change_invalidates(cluster, issuer, refused):
    token = issuer.mint({"team": "cachers"}, sub="carol-cache", jti="cache-3")
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'team', 'cachers', 'carol')", (issuer.issuer,))
    login(cluster, "carol", token)
    login(cluster, "carol", token)
    assert "cache=hit" in audit_lines(cluster, "cache-3")[-1]
    cluster.sql("DELETE FROM oauth.role_map WHERE pattern = 'cachers'")
    assert refused("carol", token) == "role_not_allowed"


def test_expired_token_is_not_admitted_from_the_cache(cluster, issuer, refused):
    token = issuer.mint(sub="alice", jti="cache-4", lifetime=2)
    login(cluster, "alice", token)
    time.sleep(2.5)
    # the validator allows leeway (30 s); the cache never does, so a worker decides
    login(cluster, "alice", token)
    assert "cache=hit" not in audit_lines(cluster, "cache-4")[-1]


def test_revoked_token_is_not_admitted_from_the_cache(cluster, issuer, refused):
    token = issuer.mint(sub="alice", jti="cache-5")
    login(cluster, "alice", token)
    login(cluster, "alice", token)
    cluster.sql("SELECT oauth.revoke(token_id => 'cache-5')")
    try:
        assert refused("alice", token) == "revoked"
    finally:
        cluster.sql("DELETE FROM oauth.revocations WHERE token_id = 'cache-5'")


def test_cache_can_be_turned_off(cluster, issuer):
    cluster.sql("ALTER SYSTEM SET pg_oauth.decision_cache = off")
    cluster.reload()
    try:
        token = issuer.mint(sub="alice", jti="cache-6")
        login(cluster, "alice", token)
        login(cluster, "alice", token)
        assert not any("cache=hit" in line for line in audit_lines(cluster, "cache-6"))
    finally:
        cluster.sql("ALTER SYSTEM RESET pg_oauth.decision_cache")
        cluster.reload()


def test_token_hash_is_sha256(cluster):
    """The cache keys on the extension's own SHA-256: it must agree with hashlib on
    every padding case (lengths around the 55/56/64-byte block edges) and beyond."""
    lengths = [*range(130), 1000, 8192, 65537]
    samples = [os.urandom(n) for n in lengths] + [b"abc", b"a" * 1_000_000]
    rows = cluster.sql("SELECT oauth._sha256(d) FROM unnest(%s::bytea[]) WITH ORDINALITY "
                       "AS t(d, n) ORDER BY n", (samples,))
    assert [bytes(r[0]) for r in rows] == [hashlib.sha256(s).digest() for s in samples]
    assert bytes(rows[len(lengths)][0]).hex() == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
