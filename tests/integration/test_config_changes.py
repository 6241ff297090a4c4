"""Configuration and key changes take effect on the next login, without restart or reload."""

from __future__ import annotations

import re
import threading
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

    with pytest.raises(psycopg.Error, match="pattern is not supported by RE2"):
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, 'sub', '(unclosed', 'x')", (issuer.issuer,))
    with pytest.raises(psycopg.Error, match="group"):
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, 'sub', 'abc', '\\1')", (issuer.issuer,))


# -- configuration loaded once per change, off the login path -----------------------------

NON_SESSION_CONTEXT = re.compile(r"^\S+ \S+ \S+ \[\d+\] CONTEXT:", re.MULTILINE)
# any load at LOG, whatever its wording; and this version's wording
ANY_LOAD = re.compile(r"LOG:  pg_oauth: configuration version .+ loaded")
LOADED = re.compile(r"\[\d+\] LOG:  pg_oauth: configuration version (\d+) loaded \(([^)]*)\)")


def new_log(cluster, offset: int) -> str:
    return cluster.log_text()[offset:]


def test_configuration_is_loaded_once_per_change_and_logged_once(cluster, issuer):
    """Logins and the workers' refreshes (every second while busy, every 5 s idle) share
    one check: no reload without a change. A change is loaded by every worker and
    logged once, at LOG, without the PL/Python CONTEXT lines."""
    cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    offset = len(cluster.log_text())
    for _ in range(3):  # a worker that is busy refreshes keys after a second
        cluster.token_connect("alice", issuer.mint(sub="alice")).close()
        time.sleep(1.1)
    assert ANY_LOAD.findall(new_log(cluster, offset)) == []

    (version,) = cluster.sql(
        "INSERT INTO oauth.revocations (subject, reason) VALUES ('nobody-at-all', 'log test') "
        "RETURNING (SELECT version + 1 FROM oauth.config_state)")[0]
    try:
        deadline = time.time() + 15
        while not ANY_LOAD.findall(new_log(cluster, offset)):
            assert time.time() < deadline, "the change was never logged"
            time.sleep(0.1)
        time.sleep(1.0)  # every worker has loaded it by now (it is woken by the change)
        for _ in range(4):
            cluster.token_connect("alice", issuer.mint(sub="alice")).close()
        text = new_log(cluster, offset)
        assert len(ANY_LOAD.findall(text)) == 1, text
        assert LOADED.findall(text) == [(str(version), "1 revocation added")]
        assert not NON_SESSION_CONTEXT.findall(text), text
    finally:
        cluster.sql("DELETE FROM oauth.revocations WHERE subject = 'nobody-at-all'")


def test_revocation_with_an_id_below_the_highest_applies(cluster, issuer, refused):
    """Workers read new revocations by id; a row whose id is not above every earlier
    one (OVERRIDING SYSTEM VALUE) makes them read the table again."""
    cluster.sql("INSERT INTO oauth.revocations (subject, reason) VALUES ('nobody-1', 'x')")
    token = issuer.mint(sub="alice", jti="low-id")
    cluster.token_connect("alice", token).close()
    low = -424242  # below every id the identity column gives
    cluster.sql("INSERT INTO oauth.revocations (id, token_id) OVERRIDING SYSTEM VALUE "
                "VALUES (%s, 'low-id')", (low,))
    try:
        assert refused("alice", issuer.mint(sub="alice", jti="low-id")) == "revoked"
    finally:
        cluster.sql("DELETE FROM oauth.revocations WHERE id = %s OR subject = 'nobody-1'",
                    (low,))
    cluster.token_connect("alice", issuer.mint(sub="alice", jti="low-id")).close()


SLOW_INSERT = (
    "INSERT INTO oauth.revocations (token_id, reason) "
    "SELECT t, 'slow' FROM (VALUES (1, 'slow-1'), (2, 'slow-2')) AS v(n, t) "
    "WHERE n = 1 OR pg_advisory_lock(424242)::text IS NOT NULL"
)


def test_revocations_committed_out_of_id_order_apply(cluster, issuer, refused):
    """A transaction takes a revocation id, another takes a higher one and commits first,
    and a worker catches up with it; the first one's row must still apply at commit."""
    with cluster.admin() as holder, cluster.admin() as slow:
        holder.execute("SELECT pg_advisory_lock(424242)")
        # the first row takes its id, the second waits for the lock
        inserting = threading.Thread(target=slow.execute, args=(SLOW_INSERT,))
        inserting.start()
        try:
            deadline = time.time() + 15
            while not cluster.sql("SELECT 1 FROM pg_stat_activity WHERE wait_event = 'advisory' "
                                  "AND query LIKE 'INSERT INTO oauth.revocations%%'"):
                assert time.time() < deadline, "the slow insert never waited"
                time.sleep(0.05)
            cluster.sql("INSERT INTO oauth.revocations (token_id, reason) VALUES ('fast', 'x')")
            assert refused("alice", issuer.mint(sub="alice", jti="fast")) == "revoked"
        finally:
            holder.execute("SELECT pg_advisory_unlock(424242)")
            inserting.join(timeout=15)
    try:
        ids = dict(cluster.sql("SELECT token_id, id FROM oauth.revocations "
                               "WHERE token_id IN ('slow-1', 'fast')"))
        assert ids["slow-1"] < ids["fast"]  # the case this test is about
        assert refused("alice", issuer.mint(sub="alice", jti="slow-1")) == "revoked"
    finally:
        cluster.sql("DELETE FROM oauth.revocations WHERE reason IN ('slow', 'x')")


def test_a_delete_the_counting_trigger_did_not_see_applies(cluster, issuer, refused):
    """With the trigger that counts revocation rewrites disabled, a DELETE moves only the
    version: the workers cannot tell what changed, so they read everything again."""
    token = issuer.mint(sub="alice", jti="uncounted")
    cluster.sql("INSERT INTO oauth.revocations (token_id) VALUES ('uncounted')")
    try:
        assert refused("alice", token) == "revoked"
        cluster.sql("ALTER TABLE oauth.revocations DISABLE TRIGGER revocations_counted")
        cluster.sql("DELETE FROM oauth.revocations WHERE token_id = 'uncounted'")
        cluster.token_connect("alice", issuer.mint(sub="alice", jti="uncounted")).close()
    finally:
        cluster.sql("ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_counted")
        cluster.sql("DELETE FROM oauth.revocations WHERE token_id = 'uncounted'")


def test_a_change_behind_the_triggers_in_a_counted_transaction_applies(
        cluster, issuer, refused):
    """One transaction changes a revocation with its triggers disabled, enables them and
    changes role_map: the counters show only the role_map change, but the ALTER TABLE
    tells the workers not to trust them, and they read everything."""
    cluster.sql("INSERT INTO oauth.revocations (token_id) VALUES ('behind-before')")
    cluster.token_connect("alice", issuer.mint(sub="alice", jti="behind-after")).close()
    time.sleep(0.5)  # every worker, woken by the insert, holds its row by now
    try:
        with cluster.admin() as conn, conn.transaction():
            conn.execute("ALTER TABLE oauth.revocations "
                         "DISABLE TRIGGER revocations_changed, "
                         "DISABLE TRIGGER revocations_counted")
            conn.execute("UPDATE oauth.revocations SET token_id = 'behind-after' "
                         "WHERE token_id = 'behind-before'")
            conn.execute("ALTER TABLE oauth.revocations "
                         "ENABLE ALWAYS TRIGGER revocations_changed, "
                         "ENABLE ALWAYS TRIGGER revocations_counted")
            conn.execute("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                         "VALUES (%s, 'sub', 'behind-nobody', 'carol')", (issuer.issuer,))
        assert refused("alice", issuer.mint(sub="alice", jti="behind-after")) == "revoked"
    finally:
        cluster.sql("DELETE FROM oauth.revocations WHERE token_id LIKE 'behind-%%'")
        cluster.sql("DELETE FROM oauth.role_map WHERE pattern = 'behind-nobody'")
