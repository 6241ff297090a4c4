"""A streaming hot standby refuses what its primary refuses, within seconds of replay,
and a promoted standby carries on with what was committed before the switch.

Replay fires no trigger and moves no shared-memory counter on the standby: its workers
must notice replayed configuration (oauth.config_state) and replayed keys
(oauth.jwks_cache) themselves, and its own housekeeper must end the live sessions a
replayed revocation covers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import (
    RecordingIssuer,
    attempt,
    issuer_of_its_own,
    make_cluster,
    make_standby,
    until,
)
from pgcluster import Cluster

# what "within a few seconds of replay" means here
FOLLOW = 8.0


@pytest.fixture(scope="module")
def own() -> Iterator[RecordingIssuer]:
    """An issuer of this module's own: its keys are withdrawn and it goes down here."""
    with issuer_of_its_own("standby") as issuer:
        yield issuer


@pytest.fixture(scope="module")
def pair(own: RecordingIssuer) -> Iterator[tuple[Cluster, Cluster]]:
    primary = make_cluster(own)
    primary.sql("UPDATE oauth.issuers SET jwks_cooldown = '0 seconds'")
    primary.sql("CREATE ROLE dave LOGIN; CREATE ROLE erin LOGIN")
    standby = make_standby(primary)
    yield primary, standby
    standby.stop()
    primary.stop()


def replayed(primary: Cluster, standby: Cluster) -> None:
    """Wait until the standby has replayed everything the primary has written."""
    lsn = primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
    until(lambda: standby.sql(
        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0],
        timeout=30, what="replay on the standby")


def session_ended(conn: psycopg.Connection) -> bool:
    """Whether the server ended this session (its next statement fails)."""
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


def follows(standby: Cluster, user: str, token: str, want: str) -> None:
    """The standby's answer for this login becomes want within FOLLOW seconds."""
    seen: list[str] = []

    def check() -> bool:
        seen.append(attempt(standby, user, token))
        return seen[-1] == want

    try:
        until(check, timeout=FOLLOW, what=f"{user}: {want}")
    except AssertionError:
        raise AssertionError(f"{user} on the standby: {seen[-3:]}, want {want}") from None


def test_a_replayed_revocation_refuses_the_subject_on_the_standby(pair, own) -> None:
    primary, standby = pair
    seen = own.mint(sub="bob")  # a token the standby admitted (and may have cached)
    assert attempt(standby, "bob", seen) == "ok"
    assert attempt(standby, "bob", seen) == "ok"
    primary.sql("SELECT oauth.revoke(subject => 'bob', issuer => %s, reason => 'test')",
                (own.issuer,))
    replayed(primary, standby)
    follows(standby, "bob", seen, "revoked")
    follows(standby, "bob", own.mint(sub="bob"), "revoked")
    assert attempt(primary, "bob", own.mint(sub="bob")) == "revoked"
    assert attempt(standby, "alice", own.mint(sub="alice")) == "ok"


def test_a_replayed_revocation_ends_live_sessions_on_the_standby(pair, own) -> None:
    primary, standby = pair
    conn = standby.token_connect("alice", own.mint(sub="alice", jti="standby-live"))
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        primary.sql("SELECT oauth.revoke(token_id => 'standby-live', reason => 'test')")
        replayed(primary, standby)
        until(lambda: session_ended(conn), timeout=FOLLOW,
              what="the standby's session of a revoked token ends")
    finally:
        conn.close()


def test_a_replayed_issued_before_revocation_spares_fresh_sessions(pair, own) -> None:
    """The standby's housekeeper ends only the sessions of tokens issued before the
    replayed revocation's issued_before; a fresh token's session and logins go on."""
    primary, standby = pair
    cutoff = int(time.time()) - 30
    old = standby.token_connect("alice", own.mint(sub="alice", now=cutoff - 60))
    fresh_token = own.mint(sub="alice", now=cutoff)
    fresh = standby.token_connect("alice", fresh_token)
    try:
        primary.sql("SELECT oauth.revoke(subject => 'alice', issued_before => to_timestamp(%s), "
                    "reason => 'test')", (cutoff,))
        replayed(primary, standby)
        until(lambda: session_ended(old), timeout=FOLLOW,
              what="the standby's session of an older token ends")
        assert fresh.execute("SELECT current_user").fetchone() == ("alice",)
        assert attempt(standby, "alice", fresh_token) == "ok"
    finally:
        old.close()
        fresh.close()
        primary.sql("DELETE FROM oauth.revocations WHERE subject = 'alice'")


def test_replayed_rules_and_issuers_apply_on_the_standby(pair, own) -> None:
    primary, standby = pair
    dave = own.mint(sub="dave")
    assert attempt(standby, "dave", dave) == "role_not_allowed"
    primary.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'sub', 'dave', 'dave')", (own.issuer,))
    replayed(primary, standby)
    follows(standby, "dave", dave, "ok")
    primary.sql("DELETE FROM oauth.role_map WHERE pattern = 'dave'")
    replayed(primary, standby)
    follows(standby, "dave", own.mint(sub="dave"), "role_not_allowed")

    primary.sql("UPDATE oauth.issuers SET enabled = false WHERE issuer = %s", (own.issuer,))
    try:
        replayed(primary, standby)
        follows(standby, "alice", own.mint(sub="alice"), "untrusted_issuer")
    finally:
        primary.sql("UPDATE oauth.issuers SET enabled = true WHERE issuer = %s", (own.issuer,))
    replayed(primary, standby)
    follows(standby, "alice", own.mint(sub="alice"), "ok")


def test_a_key_withdrawn_on_the_primary_is_withdrawn_on_the_standby(pair, own) -> None:
    primary, standby = pair
    old = own.mint(sub="alice", kid=own.current_kid("RS256"))
    assert attempt(standby, "alice", old) == "ok"
    assert attempt(primary, "alice", old) == "ok"
    own.rotate("RS256", retire=True)
    primary.sql("SELECT oauth.refresh_keys()")
    assert attempt(primary, "alice", old) == "unknown_key"
    replayed(primary, standby)
    # the standby's own workers still hold the old key in memory: they must follow the
    # keys the primary persisted (oauth.jwks_cache), not wait for their own refresh
    follows(standby, "alice", old, "unknown_key")
    assert attempt(standby, "alice", own.mint(sub="alice")) == "ok"


def test_check_setup_on_the_standby_says_whether_workers_follow(pair, own) -> None:
    primary, standby = pair
    primary.sql("SELECT oauth.revoke(token_id => 'check-follow', reason => 'test')")
    replayed(primary, standby)

    def following() -> list:
        return standby.sql(
            "SELECT severity, check_name, finding FROM oauth.check_setup() "
            "WHERE check_name LIKE 'standby%%'")

    rows = until(lambda: [r for r in following() if r[1] == "standby_follows_primary"],
                 timeout=FOLLOW, what="check_setup's standby finding")
    assert rows[0][0] == "info", rows
    assert "configuration version" in rows[0][2], rows
    assert primary.sql("SELECT count(*) FROM oauth.check_setup() "
                       "WHERE check_name LIKE 'standby%%'") == [(0,)]


def test_a_promoted_standby_keeps_what_was_committed_before(own) -> None:
    """Failover: revocations and keys committed before the promotion hold on the new
    primary, even while the IdP is unreachable; its workers take over and say so;
    live sessions keep their expiry; oauth.revoke works there."""
    primary = make_cluster(own)
    standby = None
    live = None
    try:
        standby = make_standby(primary)

        # a key the primary fetched and persisted; the standby never fetched it itself
        own.rotate("RS256")
        fresh = own.mint(sub="alice", kid=own.current_kid("RS256"))
        assert attempt(primary, "alice", fresh) == "ok"
        primary.sql("SELECT oauth.revoke(subject => 'bob', issuer => %s, reason => 't')",
                    (own.issuer,))
        replayed(primary, standby)
        expires = int(time.time()) + 600
        live = standby.token_connect("alice", own.mint(sub="alice", exp=expires,
                                                       jti="failover-live"))
        offset = len(standby.log_text())

        primary.stop()
        own.set_broken(True)  # the IdP is unreachable from here on
        assert standby.pg_ctl("promote", "-w").returncode == 0
        until(lambda: not standby.sql("SELECT pg_is_in_recovery()")[0][0], timeout=30,
              what="promotion")
        until(lambda: "now a primary" in standby.log_text()[offset:], timeout=30,
              what="the workers say they took over")

        follows(standby, "alice", fresh, "ok")
        assert attempt(standby, "bob", own.mint(sub="bob")) == "revoked"
        jti, left = live.execute(
            "SELECT oauth.claim('jti'), extract(epoch FROM (oauth.session()).expires_at)"
        ).fetchone()
        assert (jti, int(left)) == ("failover-live", expires)  # the session keeps its expiry
        # revocation works on the new primary, and ends the live session
        standby.sql("SELECT oauth.revoke(token_id => 'failover-live', reason => 't')")

        until(lambda: session_ended(live), timeout=FOLLOW,
              what="the live session ends on the new primary")
    finally:
        own.set_broken(False)
        if live is not None:
            live.close()
        if standby is not None:
            standby.stop()
        primary.stop()
