"""Configuration and key changes take effect on the next login, without restart or reload."""

from __future__ import annotations

import time


def test_mapping_inserted_while_running_applies_to_next_login(cluster, issuer, refused):
    token = issuer.mint({"groups": ["dba", "analysts"]}, sub="carol@example.com")
    assert refused("carol", token) == "role_not_allowed"
    cluster.sql(
        "INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
        "VALUES (%s, 'sub', '([a-z]+)@example\\.com', '\\1')", (issuer.issuer,))
    try:
        with cluster.token_connect("carol", token) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "carol"
    finally:
        cluster.sql("DELETE FROM oauth.role_map WHERE pattern LIKE '([a-z]+)@%%'")
    # and the removal applies at once too
    assert refused("carol", token) == "role_not_allowed"


def test_rolled_back_change_does_not_apply(cluster, issuer, refused):
    token = issuer.mint(sub="carol")
    with cluster.admin() as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                     "VALUES (%s, 'sub', 'carol', 'carol')", (issuer.issuer,))
        conn.rollback()
    assert refused("carol", token) == "role_not_allowed"


def test_database_and_cidr_limits(cluster, issuer, refused):
    cluster.sql("CREATE DATABASE appdb")
    cluster.sql(
        "INSERT INTO oauth.role_map (issuer, claim, pattern, role, databases) "
        "VALUES (%s, 'team', 'blue', 'carol', '{appdb}')", (issuer.issuer,))
    cluster.sql(
        "INSERT INTO oauth.role_map (issuer, claim, pattern, role, client_cidrs) "
        "VALUES (%s, 'team', 'red', 'carol', '{10.0.0.0/8}')", (issuer.issuer,))
    try:
        blue = issuer.mint({"team": "blue"}, sub="someone")
        with cluster.token_connect("carol", blue, dbname="appdb") as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == \
                ("carol", "appdb")
        assert refused("carol", blue) == "database_not_allowed"
        red = issuer.mint({"team": "red"}, sub="someone")
        assert refused("carol", red) == "client_not_allowed"
    finally:
        cluster.sql("DELETE FROM oauth.role_map WHERE claim = 'team'")


def test_disabled_issuer_is_untrusted(cluster, issuer, refused):
    token = issuer.mint(sub="alice")
    cluster.sql("UPDATE oauth.issuers SET enabled = false WHERE issuer = %s", (issuer.issuer,))
    try:
        assert refused("alice", token) == "untrusted_issuer"
    finally:
        cluster.sql("UPDATE oauth.issuers SET enabled = true WHERE issuer = %s", (issuer.issuer,))
    cluster.token_connect("alice", token).close()


def test_rotated_key_works_without_restart(cluster, issuer):
    # the workers fetched the JWKS at start; the issuer now publishes a new key
    new_kid = issuer.rotate("RS256")
    time.sleep(1.2)  # past the issuer's jwks_cooldown (1 s in these tests)
    token = issuer.mint(sub="alice", kid=new_kid)
    with cluster.token_connect("alice", token) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "alice"


def test_bad_role_map_pattern_rejected_at_insert(cluster, issuer):
    import psycopg
    import pytest

    with pytest.raises(psycopg.Error, match="invalid pattern"):
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, 'sub', '(unclosed', 'x')", (issuer.issuer,))
    with pytest.raises(psycopg.Error, match="group"):
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, 'sub', 'abc', '\\1')", (issuer.issuer,))
