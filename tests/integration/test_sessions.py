"""Life under the token: claims in RLS, the sessions view, sessions ended at expiry
or by revocation, per-subject connection limits."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from conftest import until
from pgcluster import ADMIN_PASSWORD


def live_pids(cluster) -> set[int]:
    return {r[0] for r in cluster.sql("SELECT pid FROM oauth.sessions")}


@pytest.fixture
def expiry_mode(cluster):
    def set_mode(mode: str, grace: int = 0) -> None:
        cluster.sql(f"ALTER SYSTEM SET pg_oauth.session_expiry = '{mode}'")
        cluster.sql(f"ALTER SYSTEM SET pg_oauth.session_expiry_grace = {grace}")
        cluster.reload()

    yield set_mode
    cluster.sql("ALTER SYSTEM RESET pg_oauth.session_expiry")
    cluster.sql("ALTER SYSTEM RESET pg_oauth.session_expiry_grace")
    cluster.reload()


def test_rls_recipe_tenants_see_only_their_rows(cluster, issuer):
    """docs/rls.md, as written there."""
    cluster.sql("""
        CREATE TABLE tenant_notes (tenant_id text NOT NULL, note text NOT NULL);
        INSERT INTO tenant_notes VALUES ('acme', 'acme plan'), ('acme', 'acme budget'),
                                        ('globex', 'globex plan');
        ALTER TABLE tenant_notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON tenant_notes
            USING (tenant_id = (SELECT oauth.claim('tenant_id')));
        GRANT SELECT ON tenant_notes TO alice, bob, scram_reader;
    """.replace("scram_reader", "carol"))
    with cluster.token_connect("alice", issuer.mint({"tenant_id": "acme"}, sub="alice")) as a:
        assert sorted(r[0] for r in a.execute("SELECT note FROM tenant_notes")) == \
            ["acme budget", "acme plan"]
    with cluster.token_connect("bob", issuer.mint({"tenant_id": "globex"}, sub="bob")) as b:
        assert [r[0] for r in b.execute("SELECT note FROM tenant_notes")] == ["globex plan"]
    # a session that did not log in with a token sees nothing
    cluster.sql("CREATE ROLE scram_user LOGIN PASSWORD 'scram-pw'; "
                "GRANT SELECT ON tenant_notes TO scram_user")
    with psycopg.connect(f"host=127.0.0.1 port={cluster.port} dbname=postgres "
                         "user=scram_user password=scram-pw sslmode=disable") as s:
        assert s.execute("SELECT oauth.claims()").fetchone()[0] is None
        assert s.execute("SELECT count(*) FROM tenant_notes").fetchone()[0] == 0
    assert ADMIN_PASSWORD  # the admin (superuser) bypasses RLS, as PostgreSQL intends


def test_sessions_view_lists_live_token_sessions(cluster, issuer):
    token = issuer.mint(sub="alice", jti="view-check-1")
    with cluster.token_connect("alice", token) as conn:
        pid = conn.info.backend_pid
        rows = cluster.sql("SELECT role, database, issuer, subject, token_id, expires_at, "
                           "host(client_addr), login_time, state FROM oauth.sessions "
                           "WHERE pid = %s", (pid,))
        assert len(rows) == 1
        role, db, iss, sub, jti, exp, addr, login, state = rows[0]
        assert (role, db, iss, sub, jti, addr, state) == \
            ("alice", "postgres", issuer.issuer, "alice", "view-check-1", "127.0.0.1", "live")
        assert exp is not None and login is not None
    until(lambda: pid not in live_pids(cluster), 15)
    # sessions that did not log in with a token are not listed
    assert all(r[0] != "postgres" for r in cluster.sql("SELECT role FROM oauth.sessions"))


def test_session_expiry_always_ends_a_busy_session(cluster, issuer, expiry_mode):
    expiry_mode("always")
    conn = cluster.token_connect("alice", issuer.mint(sub="alice", lifetime=2))
    with pytest.raises(psycopg.OperationalError) as e:
        conn.execute("SELECT pg_sleep(30)")
    assert "session ended: its token expired" in str(e.value)
    conn.close()


def test_session_expiry_idle_waits_for_an_idle_moment(cluster, issuer, expiry_mode):
    expiry_mode("idle")
    idle = cluster.token_connect("alice", issuer.mint(sub="alice", lifetime=2))
    busy = cluster.token_connect("bob", issuer.mint(sub="bob", lifetime=2))
    idle_pid, busy_pid = idle.info.backend_pid, busy.info.backend_pid
    result: list = []
    worker = threading.Thread(
        target=lambda: result.append(busy.execute("SELECT pg_sleep(5), 'done'").fetchone()))
    worker.start()
    # the idle session goes shortly after its token expires ...
    until(lambda: idle_pid not in live_pids(cluster), 15)
    # ... while the busy one finishes its query first
    assert busy_pid in live_pids(cluster)
    worker.join()
    assert result and result[0][1] == "done"
    until(lambda: busy_pid not in live_pids(cluster), 15)
    with pytest.raises(psycopg.OperationalError) as e:
        idle.execute("SELECT 1")
    assert "session ended" in str(e.value) or "closed" in str(e.value)
    idle.close()
    busy.close()


def test_session_expiry_grace(cluster, issuer, expiry_mode):
    expiry_mode("always", grace=60)
    with cluster.token_connect("alice", issuer.mint(sub="alice", lifetime=1)) as conn:
        time.sleep(2.5)
        assert conn.execute("SELECT current_user").fetchone()[0] == "alice"


def test_session_expiry_off_by_default(cluster, issuer):
    with cluster.token_connect("alice", issuer.mint(sub="alice", lifetime=1)) as conn:
        time.sleep(2.5)
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_revoke_subject_ends_live_sessions_and_refuses_next_login(cluster, issuer, refused):
    a1 = cluster.token_connect("bob", issuer.mint(sub="bob"))
    a2 = cluster.token_connect("bob", issuer.mint(sub="bob"))
    other = cluster.token_connect("alice", issuer.mint(sub="alice"))
    try:
        assert cluster.sql("SELECT oauth.revoke(subject => 'bob', reason => 'laptop stolen')") \
            == [(2,)]
        for conn in (a1, a2):
            with pytest.raises(psycopg.OperationalError) as e:
                conn.execute("SELECT 1")
            assert "revoked" in str(e.value) or "closed" in str(e.value)
        assert other.execute("SELECT current_user").fetchone()[0] == "alice"
        assert refused("bob", issuer.mint(sub="bob")) == "revoked"
    finally:
        for conn in (a1, a2, other):
            conn.close()
        cluster.sql("DELETE FROM oauth.revocations WHERE subject = 'bob'")
    cluster.token_connect("bob", issuer.mint(sub="bob")).close()


def test_revoke_token_id(cluster, issuer, refused):
    token = issuer.mint(sub="alice", jti="revoke-me")
    conn = cluster.token_connect("alice", token)
    try:
        assert cluster.sql("SELECT oauth.revoke(token_id => 'revoke-me')") == [(1,)]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert refused("alice", token) == "revoked"
        # another token of the same subject is fine
        cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    finally:
        conn.close()
        cluster.sql("DELETE FROM oauth.revocations WHERE token_id = 'revoke-me'")


def test_per_subject_session_limit(cluster, issuer, refused):
    cluster.sql("UPDATE oauth.issuers SET max_sessions_per_subject = 2")
    conns = []
    try:
        conns = [cluster.token_connect("alice", issuer.mint(sub="alice")) for _ in range(2)]
        assert refused("alice", issuer.mint(sub="alice")) == "too_many_connections"
        # another subject is not affected
        cluster.token_connect("bob", issuer.mint(sub="bob")).close()
        conns.pop().close()
        until(lambda: len(cluster.sql(
            "SELECT 1 FROM oauth.sessions WHERE subject = 'alice'")) == 1, 15)
        conns.append(cluster.token_connect("alice", issuer.mint(sub="alice")))
    finally:
        for c in conns:
            c.close()
        cluster.sql("UPDATE oauth.issuers SET max_sessions_per_subject = NULL")


def test_per_rule_session_limit(cluster, issuer, refused):
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role, max_sessions) "
                "VALUES (%s, 'team', 'ops', 'carol', 1)", (issuer.issuer,))
    try:
        first = cluster.token_connect("carol", issuer.mint({"team": "ops"}, sub="op-1"))
        assert refused("carol", issuer.mint({"team": "ops"}, sub="op-1")) == \
            "too_many_connections"
        first.close()
    finally:
        cluster.sql("DELETE FROM oauth.role_map WHERE claim = 'team'")


def _alive(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1").fetchone()
        return True
    except psycopg.Error:
        return False


@pytest.mark.parametrize("how", ["rollback_to_savepoint", "rollback"])
def test_rolled_back_revoke_ends_no_session(cluster, issuer, how):
    """Issue 19, finding 4: oauth.revoke() in a savepoint that is rolled back (or in a
    transaction that is) ends nothing: its revocation row is gone, so are its ends."""
    jti = f"rb-{how}-{time.time_ns()}"
    sess = cluster.token_connect("alice", issuer.mint(sub="alice", jti=jti))
    try:
        with cluster.admin() as admin:
            admin.execute("BEGIN")
            if how == "rollback_to_savepoint":
                admin.execute("SAVEPOINT s")
                # the return value: the live sessions it covers now, ended at commit
                assert admin.execute("SELECT oauth.revoke(token_id => %s)",
                                     (jti,)).fetchone() == (1,)
                admin.execute("ROLLBACK TO SAVEPOINT s")
                admin.execute("COMMIT")
            else:
                admin.execute("SELECT oauth.revoke(token_id => %s)", (jti,))
                admin.execute("ROLLBACK")
        time.sleep(2)
        assert _alive(sess), "a rolled-back revocation ended the session"
        assert cluster.sql("SELECT count(*) FROM oauth.revocations WHERE token_id = %s",
                           (jti,)) == [(0,)]
    finally:
        sess.close()


def test_revoke_in_a_released_savepoint_ends_the_session_at_commit(cluster, issuer):
    """A savepoint that is released passes its revocation on to the transaction."""
    jti = f"rb-release-{time.time_ns()}"
    sess = cluster.token_connect("alice", issuer.mint(sub="alice", jti=jti))
    try:
        with cluster.admin() as admin:
            admin.execute("BEGIN")
            admin.execute("SAVEPOINT outer_sp")
            admin.execute("SAVEPOINT inner_sp")
            assert admin.execute("SELECT oauth.revoke(token_id => %s)",
                                 (jti,)).fetchone() == (1,)
            admin.execute("RELEASE SAVEPOINT inner_sp")
            admin.execute("RELEASE SAVEPOINT outer_sp")
            time.sleep(1)
            assert _alive(sess), "ended before the revocation committed"
            admin.execute("COMMIT")
        until(lambda: not _alive(sess), timeout=10, what="the revoked session to end")
    finally:
        sess.close()


def test_revoke_kept_after_a_later_savepoint_rolls_back(cluster, issuer):
    """Only what came after the savepoint is undone: an earlier revoke still ends."""
    kept, undone = f"rb-kept-{time.time_ns()}", f"rb-undone-{time.time_ns()}"
    s1 = cluster.token_connect("alice", issuer.mint(sub="alice", jti=kept))
    s2 = cluster.token_connect("alice", issuer.mint(sub="alice", jti=undone))
    try:
        with cluster.admin() as admin:
            admin.execute("BEGIN")
            admin.execute("SELECT oauth.revoke(token_id => %s)", (kept,))
            admin.execute("SAVEPOINT s")
            admin.execute("SELECT oauth.revoke(token_id => %s)", (undone,))
            admin.execute("ROLLBACK TO SAVEPOINT s")
            admin.execute("COMMIT")
        until(lambda: not _alive(s1), timeout=10, what="the revoked session to end")
        time.sleep(1)
        assert _alive(s2), "the rolled-back revocation ended its session"
    finally:
        s1.close()
        s2.close()


def test_revoke_issued_before_spares_fresh_tokens(cluster, issuer, refused):
    """Issue 19, incidents: oauth.revoke(..., issued_before => t) refuses tokens issued
    before t and ends their sessions; a token issued at or after t still logs in and
    its session lives on.  A token without iat counts as issued before (fail closed)."""
    cutoff = int(time.time()) - 30
    old = issuer.mint(sub="bob", now=cutoff - 60)
    no_iat = issuer.mint(sub="bob", remove=("iat",))
    fresh = issuer.mint(sub="bob", now=cutoff)  # iat exactly at the cutoff: not before
    s_old = cluster.token_connect("bob", old)
    s_no_iat = cluster.token_connect("bob", no_iat)
    s_fresh = cluster.token_connect("bob", fresh)
    try:
        assert cluster.sql("SELECT oauth.revoke(subject => 'bob', issued_before => "
                           "to_timestamp(%s), reason => 'key leaked')", (cutoff,)) == [(2,)]
        until(lambda: not _alive(s_old) and not _alive(s_no_iat), timeout=10,
              what="the sessions of tokens issued before the cutoff to end")
        assert _alive(s_fresh), "a token issued at the cutoff lost its session"
        assert refused("bob", old) == "revoked"
        assert refused("bob", no_iat) == "revoked"
        cluster.token_connect("bob", fresh).close()
        cluster.token_connect("bob", issuer.mint(sub="bob")).close()
        assert cluster.sql("SELECT issued_before = to_timestamp(%s) FROM oauth.revocations "
                           "WHERE subject = 'bob'", (cutoff,)) == [(True,)]
    finally:
        for conn in (s_old, s_no_iat, s_fresh):
            conn.close()
        cluster.sql("DELETE FROM oauth.revocations WHERE subject = 'bob'")


def test_revoke_issuer_issued_before_now_then_fresh_token_logs_in(cluster, issuer, refused):
    """The runbook's incident step: everything of the issuer issued before now() is
    refused, a token minted afterwards (iat has whole seconds: the next second) is not."""
    before = issuer.mint(sub="alice")
    session = cluster.token_connect("alice", before)
    try:
        assert cluster.sql("SELECT oauth.revoke(issuer => %s, issued_before => now(), "
                           "reason => 'signing key leaked')", (issuer.issuer,)) == [(1,)]
        until(lambda: not _alive(session), timeout=10, what="the old session to end")
        assert refused("alice", before) == "revoked"
        time.sleep(1.1)
        cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    finally:
        session.close()
        cluster.sql("DELETE FROM oauth.revocations WHERE issuer = %s", (issuer.issuer,))


def test_revoke_keeps_its_1_0_calls(cluster, issuer, refused):
    """oauth.revoke got a last parameter: positional calls written for 1.0 still work."""
    token = issuer.mint(sub="alice", jti="positional-1")
    try:
        assert cluster.sql("SELECT oauth.revoke('positional-1', NULL, NULL, NULL, 'why')") \
            == [(0,)]
        assert refused("alice", token) == "revoked"
        assert cluster.sql("SELECT reason, issued_before FROM oauth.revocations "
                           "WHERE token_id = 'positional-1'") == [("why", None)]
    finally:
        cluster.sql("DELETE FROM oauth.revocations WHERE token_id = 'positional-1'")
