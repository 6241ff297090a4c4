"""Identities longer than 255 bytes (GitHub Actions and Kubernetes subjects, long token
ids, long issuer URLs) are matched whole: per-subject session limits, revocation of live
sessions, the sessions view, the audit table and log line, oauth.stats, the kid-refetch
gate and the decision cache never cut them."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from conftest import AUDIENCE, make_cluster, until


def wait_rows(cluster, query: str, params: tuple, count: int) -> list[tuple]:
    rows: list[tuple] = []

    def enough() -> bool:
        rows[:] = cluster.sql(query, params)
        return len(rows) >= count

    until(enough, 15)
    return rows


def actions_subject(length: int) -> str:
    """A GitHub Actions shaped subject of exactly `length` UTF-8 bytes, unique per call.

    Multibyte characters sit around byte 255, where the old shared-memory copy cut.
    """
    prefix = (f"repo:acme-platform/{uuid.uuid4().hex}-infrastructure-deployment-"
              "pipelines-for-the-payments-and-ledger-services:ref:refs/heads/"
              "release/2024-q4/hotfix-")
    subject = prefix + "x" * (240 - len(prefix.encode())) + "ünïcödé-brånch-"
    while len(subject.encode()) < length:
        subject += "segment-"
    return subject.encode()[:length].decode()


def long_token_id(length: int = 400) -> str:
    jti = f"urn:uuid:{uuid.uuid4()}:"
    return jti + "j" * (length - len(jti))


def sessions_of(cluster, subject: str) -> list[tuple]:
    return cluster.sql("SELECT pid, subject, token_id, issuer FROM oauth.sessions "
                       "WHERE subject = %s", (subject,))


def audit_lines(cluster, token_id: str) -> list[str]:
    return [line for line in cluster.log_text().splitlines()
            if "pg_oauth audit:" in line and f'token_id="{token_id}"' in line]


@pytest.fixture(scope="module")
def long_map(cluster, issuer):
    """Subjects shaped like GitHub Actions ones log in as carol."""
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'sub', 'repo:.*', 'carol')", (issuer.issuer,))
    yield
    cluster.sql("DELETE FROM oauth.role_map WHERE pattern = 'repo:.*'")


@pytest.fixture
def one_session_each(cluster, issuer, long_map):
    cluster.sql("UPDATE oauth.issuers SET max_sessions_per_subject = 1 WHERE issuer = %s",
                (issuer.issuer,))
    yield
    cluster.sql("UPDATE oauth.issuers SET max_sessions_per_subject = NULL WHERE issuer = %s",
                (issuer.issuer,))


@pytest.mark.parametrize("length", [333, 4000])
def test_session_limit_holds_for_long_subjects(cluster, issuer, refused, one_session_each,
                                               length):
    subject = actions_subject(length)
    first = cluster.token_connect("carol", issuer.mint(sub=subject))
    try:
        assert refused("carol", issuer.mint(sub=subject)) == "too_many_connections"
        assert len(sessions_of(cluster, subject)) == 1
    finally:
        first.close()
    until(lambda: not sessions_of(cluster, subject), 15)
    cluster.token_connect("carol", issuer.mint(sub=subject)).close()


def test_subjects_sharing_a_long_prefix_are_counted_apart(cluster, issuer, refused,
                                                          one_session_each):
    shared = actions_subject(300)
    a, b = shared + ":environment:production", shared + ":environment:staging"
    first_a = cluster.token_connect("carol", issuer.mint(sub=a))
    first_b = cluster.token_connect("carol", issuer.mint(sub=b))
    try:
        assert refused("carol", issuer.mint(sub=a)) == "too_many_connections"
        assert refused("carol", issuer.mint(sub=b)) == "too_many_connections"
        assert [r[1] for r in sessions_of(cluster, a)] == [a]
        assert [r[1] for r in sessions_of(cluster, b)] == [b]
    finally:
        first_a.close()
        first_b.close()


@pytest.mark.parametrize("length", [333, 4000])
def test_sessions_view_shows_the_full_identity(cluster, issuer, long_map, length):
    subject, jti = actions_subject(length), long_token_id()
    with cluster.token_connect("carol", issuer.mint(sub=subject, jti=jti)) as conn:
        rows = cluster.sql("SELECT subject, token_id, issuer FROM oauth.sessions "
                           "WHERE pid = %s", (conn.info.backend_pid,))
        assert rows == [(subject, jti, issuer.issuer)]
        assert conn.execute("SELECT subject, token_id FROM oauth.session()").fetchone() == \
            (subject, jti)


@pytest.mark.parametrize("length", [333, 4000])
def test_revoke_by_full_subject_ends_the_session_and_refuses_the_next_login(
        cluster, issuer, refused, long_map, length):
    subject = actions_subject(length)
    sibling = subject[:-1] + ("y" if subject[-1] != "y" else "z")
    conn = cluster.token_connect("carol", issuer.mint(sub=subject))
    try:
        # the view shows what to copy into oauth.revoke; a near miss ends nothing
        shown = cluster.sql("SELECT subject FROM oauth.sessions WHERE pid = %s",
                            (conn.info.backend_pid,))[0][0]
        assert cluster.sql("SELECT oauth._end_sessions(NULL, %s, NULL)", (sibling,)) == [(0,)]
        assert cluster.sql("SELECT oauth.revoke(subject => %s)", (shown,)) == [(1,)]
        with pytest.raises(psycopg.OperationalError) as e:
            conn.execute("SELECT 1")
        assert "revoked" in str(e.value) or "closed" in str(e.value)
        assert refused("carol", issuer.mint(sub=subject)) == "revoked"
    finally:
        conn.close()
        cluster.sql("DELETE FROM oauth.revocations WHERE subject = %s", (subject,))


def test_revoke_by_long_token_id(cluster, issuer, refused, long_map):
    subject, jti = actions_subject(333), long_token_id(1000)
    token = issuer.mint(sub=subject, jti=jti)
    conn = cluster.token_connect("carol", token)
    try:
        assert cluster.sql("SELECT oauth.revoke(token_id => %s)", (jti,)) == [(1,)]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert refused("carol", token) == "revoked"
    finally:
        conn.close()
        cluster.sql("DELETE FROM oauth.revocations WHERE token_id = %s", (jti,))


@pytest.mark.parametrize("length", [333, 4000])
def test_audit_row_and_log_line_hold_the_full_identity(cluster, issuer, refused, long_map,
                                                       length):
    subject, jti, refused_jti = actions_subject(length), long_token_id(), long_token_id()
    cluster.token_connect("carol", issuer.mint(sub=subject, jti=jti)).close()
    # refused after the signature verified: the identity is audited too
    assert refused("alice", issuer.mint(sub=subject, jti=refused_jti)) == "role_not_allowed"
    rows = wait_rows(cluster, "SELECT outcome, issuer, subject, token_id FROM oauth.audit_log "
                     "WHERE token_id IN (%s, %s) ORDER BY id", (jti, refused_jti), 2)
    assert rows == [("ok", issuer.issuer, subject, jti),
                    ("refused", issuer.issuer, subject, refused_jti)]
    for token_id in (jti, refused_jti):
        lines = audit_lines(cluster, token_id)
        assert len(lines) == 1
        assert f'subject="{subject}" token_id="{token_id}"' in lines[0]


@pytest.mark.parametrize("length", [333, 4000])
def test_decision_cache_path_matches_whole_identities(cluster, issuer, refused,
                                                      one_session_each, length):
    subject, jti = actions_subject(length), long_token_id()
    token = issuer.mint(sub=subject, jti=jti)
    first = cluster.token_connect("carol", token)
    try:
        # the same token again: its decision may come from the cache, the limit holds
        assert refused("carol", token) == "too_many_connections"
    finally:
        first.close()
    until(lambda: not sessions_of(cluster, subject), 15)
    with cluster.token_connect("carol", token) as again:
        assert cluster.sql("SELECT subject, token_id FROM oauth.sessions WHERE pid = %s",
                           (again.info.backend_pid,)) == [(subject, jti)]
    lines = audit_lines(cluster, jti)
    assert len(lines) == 3
    assert all(f'subject="{subject}"' in line for line in lines)
    if length < 1000:
        # small enough for a cache entry: the second and third attempts used it
        assert "cache=hit" not in lines[0]
        assert all("cache=hit" in line for line in lines[1:])


def test_long_issuer(cluster, issuer, refused):
    """An issuer URL past 255 bytes (static keys): sessions, limits, revocation, stats."""
    cluster.sql("SELECT oauth.stats_reset()")  # 32 issuer rows: make room
    base = f"https://login.example.com/tenants/{uuid.uuid4().hex}/" + "p" * 300
    long_iss, sibling = base + "/v2.0", base + "/v3.0"
    for url in (long_iss, sibling):
        cluster.sql("INSERT INTO oauth.issuers (issuer, audiences, jwks, "
                    "max_sessions_per_subject) VALUES (%s, %s, %s, 1)",
                    (url, [AUDIENCE], json.dumps(issuer.jwks())))
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, 'sub', 'alice', 'alice')", (url,))
    try:
        first = cluster.token_connect("alice", issuer.mint({"iss": long_iss}, sub="alice"))
        other = cluster.token_connect("alice", issuer.mint({"iss": sibling}, sub="alice"))
        try:
            assert refused("alice", issuer.mint({"iss": long_iss}, sub="alice")) == \
                "too_many_connections"
            assert cluster.sql("SELECT issuer FROM oauth.sessions WHERE pid = %s",
                               (first.info.backend_pid,)) == [(long_iss,)]
            assert cluster.sql("SELECT oauth._end_sessions(%s, NULL, NULL)",
                               (long_iss,)) == [(1,)]
            with pytest.raises(psycopg.OperationalError):
                first.execute("SELECT 1")
            assert other.execute("SELECT current_user").fetchone() == ("alice",)
        finally:
            first.close()
            other.close()
        stats = dict(cluster.sql("SELECT issuer, successes FROM oauth.stats "
                                 "WHERE issuer IN (%s, %s)", (long_iss, sibling)))
        assert stats == {long_iss: 1, sibling: 1}
        # the kid-refetch gate keeps one slot per whole issuer
        gate = "SELECT oauth._kid_refetch_allowed(%s, 3600)"
        assert cluster.sql(gate, (long_iss,)) == [(True,)]
        assert cluster.sql(gate, (sibling,)) == [(True,)]
        assert cluster.sql(gate, (long_iss,)) == [(False,)]
    finally:
        for url in (long_iss, sibling):
            cluster.sql("DELETE FROM oauth.role_map WHERE issuer = %s", (url,))
            cluster.sql("DELETE FROM oauth.issuers WHERE issuer = %s", (url,))


@pytest.fixture(scope="module")
def small_memory(issuer):
    """A server whose identity memory (1 MB) holds only a few 30 kB identities."""
    c = make_cluster(issuer, **{"pg_oauth.identity_memory": "'1MB'",
                                "pg_oauth.max_token_bytes": 65530})
    c.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
          "VALUES (%s, 'sub', 'repo:.*', 'carol')", (issuer.issuer,))
    c.sql("UPDATE oauth.issuers SET max_sessions_per_subject = 1")
    yield c
    c.stop()


def test_full_identity_memory_still_matches_by_hash(small_memory, issuer, refused):
    c = small_memory
    subjects: list[str] = []
    conns: list[psycopg.Connection] = []
    try:
        # fill the memory: the text of later sessions is not kept ...
        while len(subjects) < 40:
            subject = actions_subject(30000)
            conns.append(c.token_connect("carol", issuer.mint(sub=subject)))
            subjects.append(subject)
            shown = c.sql("SELECT subject FROM oauth.sessions WHERE pid = %s",
                          (conns[-1].info.backend_pid,))
            assert len(shown) == 1 and shown[0][0] in (subject, None)
            if shown[0][0] is None:
                break
        else:
            pytest.fail("40 sessions of 30 kB identities fit into 1 MB")
        assert len(subjects) > 2
        # ... the ones kept are whole and readable from any backend ...
        assert [r[0] for r in c.sql("SELECT subject FROM oauth.sessions "
                                    "WHERE subject IS NOT NULL ORDER BY login_time")] == \
            subjects[:-1]
        # ... and the last one is still limited and revocable by its whole subject
        assert refused("carol", issuer.mint(sub=subjects[-1]), target=c) == \
            "too_many_connections"
        assert c.sql("SELECT oauth.revoke(subject => %s)", (subjects[-1],)) == [(1,)]
        with pytest.raises(psycopg.OperationalError):
            conns[-1].execute("SELECT 1")
        assert refused("carol", issuer.mint(sub=subjects[-1]), target=c) == "revoked"
        until(lambda: "identities could not be kept" in c.log_text(), 15)
    finally:
        for conn in conns:
            conn.close()
    # once sessions end their memory is reused
    until(lambda: c.sql("SELECT count(*) FROM oauth.sessions") == [(0,)], 15)
    subject = actions_subject(30000)
    with c.token_connect("carol", issuer.mint(sub=subject)) as conn:
        assert c.sql("SELECT subject FROM oauth.sessions WHERE pid = %s",
                     (conn.info.backend_pid,)) == [(subject,)]
    assert c.is_alive()
    assert c.log_text().count("identities could not be kept") == 1
