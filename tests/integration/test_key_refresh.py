"""oauth.refresh_keys(): the issuer withdrew a key, and tokens it signed stop working
at once in every worker and in the decision cache; oauth.explain decides with the keys
the workers hold."""

from __future__ import annotations

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


def explain(cluster: Cluster, token: str, role: str = "alice") -> list[tuple]:
    return cluster.sql("SELECT name, outcome, input, detail FROM oauth.explain(%s, %s)",
                       (token, role))  # fmt: skip


def verdict(cluster: Cluster, token: str, role: str = "alice") -> str:
    """'ok' or the reason explain gives."""
    name, outcome, _, detail = explain(cluster, token, role)[-1]
    assert name == "decision"
    return "ok" if outcome == "pass" else detail.split(":", 1)[0]


@pytest.fixture(scope="module")
def own() -> Iterator[RecordingIssuer]:
    """An issuer of this module's own: its keys are withdrawn here."""
    with issuer_of_its_own("refresh") as issuer:
        yield issuer


@pytest.fixture(scope="module")
def kc(own: RecordingIssuer) -> Iterator[Cluster]:
    """Three workers, each with its own key store."""
    cluster = make_cluster(own, **{"pg_oauth.workers": 3})
    # an unknown kid may always be refetched: no test depends on the cooldown's clock
    cluster.sql("UPDATE oauth.issuers SET jwks_cooldown = '0 seconds'")
    cluster.wait_for_workers()
    yield cluster
    cluster.stop()


def stored(cluster: Cluster) -> str:
    rows = cluster.sql("SELECT jwks::text FROM oauth.jwks_cache")
    return rows[0][0] if rows else ""


def test_refresh_keys_stops_a_withdrawn_key_at_once(kc, own):
    old_kid = own.current_kid("RS256")
    cached = own.mint(sub="alice", kid=old_kid)
    assert attempt(kc, "alice", cached) == "ok"
    assert attempt(kc, "alice", cached) == "ok"  # from the decision cache
    own.rotate("RS256", retire=True)  # the issuer withdraws the key

    # nothing fetched since: the workers still hold it, and explain says the same
    assert attempt(kc, "alice", cached) == "ok"
    for _ in range(3):
        assert attempt(kc, "alice", own.mint(sub="alice", kid=old_kid)) == "ok"
    assert verdict(kc, own.mint(sub="alice", kid=old_kid)) == "ok"

    assert kc.sql("SELECT oauth.refresh_keys()") == [(1,)]
    # the very next logins, from the cache or not, are decided with fresh keys
    assert attempt(kc, "alice", cached) == "unknown_key"
    for _ in range(3):
        assert attempt(kc, "alice", own.mint(sub="alice", kid=old_kid)) == "unknown_key"
    assert verdict(kc, cached) == "unknown_key"
    assert attempt(kc, "alice", own.mint(sub="alice")) == "ok"  # the new key
    assert old_kid not in until(lambda: stored(kc), 15, "keys stored again")
    assert "dropped the keys of every issuer and fetched them again" in kc.log_text()


@pytest.mark.parametrize("statement", ["DELETE FROM oauth.jwks_cache",
                                       "TRUNCATE oauth.jwks_cache"])  # fmt: skip
def test_emptying_the_key_cache_by_hand_does_the_same(kc, own, statement):
    old_kid = own.current_kid("ES256")
    cached = own.mint(sub="bob", kid=old_kid)
    assert attempt(kc, "bob", cached) == "ok"
    assert attempt(kc, "bob", cached) == "ok"
    assert old_kid in until(lambda: stored(kc), 15, "keys stored")
    own.rotate("ES256", retire=True)
    assert attempt(kc, "bob", cached) == "ok"

    kc.sql(statement)
    assert attempt(kc, "bob", cached) == "unknown_key"
    assert attempt(kc, "bob", own.mint(sub="bob", kid=old_kid)) == "unknown_key"
    assert verdict(kc, cached, "bob") == "unknown_key"
    assert attempt(kc, "bob", own.mint(sub="bob", alg="ES256")) == "ok"


def test_refresh_keys_of_one_issuer(kc, own):
    old_kid = own.current_kid("EdDSA")
    cached = own.mint(sub="alice", kid=old_kid)
    assert attempt(kc, "alice", cached) == "ok"
    own.rotate("EdDSA", retire=True)
    assert kc.sql("SELECT oauth.refresh_keys(%s)", (own.issuer,)) == [(1,)]
    assert attempt(kc, "alice", cached) == "unknown_key"
    assert verdict(kc, cached) == "unknown_key"

    with pytest.raises(psycopg.errors.UndefinedObject, match="is not in oauth.issuers"):
        kc.sql("SELECT oauth.refresh_keys('https://not-configured.example')")
    kc.sql("CREATE DATABASE app_refresh")
    kc.sql("CREATE EXTENSION pg_oauth CASCADE", dbname="app_refresh")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                       match='lives in database "postgres"'):  # fmt: skip
        kc.sql("SELECT oauth.refresh_keys()", dbname="app_refresh")
    # a role with a real password (pgcluster's pg_hba line for scram_user)
    kc.sql("CREATE ROLE scram_user LOGIN PASSWORD 'not-a-superuser'")
    dsn = kc.admin_dsn().replace("user=postgres", "user=scram_user")
    with psycopg.connect(dsn.replace("admin-break-glass", "not-a-superuser")) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):  # fmt: skip
        conn.execute("SELECT oauth.refresh_keys()")


def test_explain_uses_the_keys_the_workers_hold(kc, own):
    """It neither fetches a fresher document nor keeps a staler one of its own."""
    assert attempt(kc, "alice", own.mint(sub="alice")) == "ok"
    until(lambda: stored(kc), 15, "keys stored")
    new_kid = own.rotate("RS256")  # published; no worker has fetched it yet
    token = own.mint(sub="alice", kid=new_kid)
    requests = own.jwks_requests
    rows = explain(kc, token)
    assert rows[-1][1] == "fail" and rows[-1][3].startswith("unknown_key")
    key = next(r for r in rows if r[0] == "key")
    assert "from oauth.jwks_cache" in key[2] and "not refetched here" in key[3]
    assert own.jwks_requests == requests  # explain fetched nothing

    # a login refetches for the unknown kid and stores the document: explain follows
    assert attempt(kc, "alice", token) == "ok"
    until(lambda: new_kid in stored(kc), 15, "the new document stored")
    assert verdict(kc, token) == "ok"


def test_refresh_while_the_issuer_is_down_fails_closed(kc, own):
    token = own.mint(sub="alice")
    assert attempt(kc, "alice", token) == "ok"
    own.set_broken(True)
    try:
        kc.sql("SELECT oauth.refresh_keys()")
        assert attempt(kc, "alice", token) == "jwks_unavailable"
        assert verdict(kc, own.mint(sub="alice")) == "jwks_unavailable"
    finally:
        own.set_broken(False)
    # the next login fetches (no keys held: no cooldown to wait for)
    assert attempt(kc, "alice", token) == "ok"
    assert verdict(kc, token) == "ok"


def test_refresh_keys_on_a_standby(kc, own):
    """A standby's workers hold keys of their own: the call refreshes them there (it
    cannot delete the replicated rows, and hides those fetched before it)."""
    standby = make_standby(kc)
    try:
        old_kid = own.current_kid("RS256")
        token = own.mint(sub="alice", kid=old_kid)
        assert attempt(standby, "alice", token) == "ok"
        own.rotate("RS256", retire=True)
        assert attempt(standby, "alice", token) == "ok"
        assert standby.sql("SELECT oauth.refresh_keys()") == [(1,)]
        assert attempt(standby, "alice", token) == "unknown_key"
        assert verdict(standby, token) == "unknown_key"
        assert attempt(standby, "alice", own.mint(sub="alice")) == "ok"
    finally:
        standby.stop()
        kc.sql("SELECT oauth.refresh_keys()")  # the primary's workers too, for what follows
