"""Audit: one log line and one oauth.audit_log row per attempt; counters in oauth.stats;
the same on a streaming standby (log line only there)."""

from __future__ import annotations

import math
import re
import time

import psycopg
import pytest
from conftest import make_standby


def wait_rows(cluster, query, params=None, count=1, timeout=15.0):
    deadline = time.time() + timeout
    rows: list = []
    while time.time() < deadline:
        rows = cluster.sql(query, params)
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise TimeoutError(f"{query}: {rows}")


def attempts(cluster, issuer, refused) -> dict[str, str]:
    """One attempt per refusal class, plus a success; returns jti per case."""
    cases = {}
    ok = issuer.mint(sub="alice", jti="audit-ok")
    cluster.token_connect("alice", ok).close()
    cases["ok"] = "audit-ok"
    assert refused("alice", issuer.mint(sub="alice", lifetime=-300, jti="audit-exp")) == "expired"
    assert refused("bob", issuer.mint(sub="alice", jti="audit-role")) == "role_not_allowed"
    assert refused("alice", issuer.mint({"iss": "https://nope.example"}, sub="alice")) == \
        "untrusted_issuer"
    assert refused("alice", "not-a-token") == "malformed"
    assert refused("alice", issuer.mint(sub="alice"), sslmode="disable") == "ssl_required"
    return cases


def test_audit_line_and_row_per_attempt(cluster, issuer, refused):
    cluster.sql("SELECT oauth.stats_reset()")
    start = cluster.sql("SELECT now()")[0][0]
    attempts(cluster, issuer, refused)

    rows = wait_rows(cluster,
                     "SELECT outcome, reason, issuer, subject, token_id, kid, alg, role, "
                     "database, host(client_addr), ssl, elapsed_ms FROM oauth.audit_log "
                     "WHERE at >= %s ORDER BY id", (start,), count=6)
    by_reason = {r[1]: r for r in rows}
    ok = by_reason["ok"]
    assert ok[0] == "ok" and ok[2:5] == (issuer.issuer, "alice", "audit-ok")
    assert ok[6] == "RS256" and ok[5] and ok[7:11] == ("alice", "postgres", "127.0.0.1", True)
    assert ok[11] > 0
    # a refusal after the signature verified names the identity ...
    role = by_reason["role_not_allowed"]
    assert role[0] == "refused" and role[3:5] == ("alice", "audit-role") and role[7] == "bob"
    assert by_reason["expired"][4] == "audit-exp"
    # ... one before it (or without a token at all) does not
    for reason in ("untrusted_issuer", "malformed", "ssl_required"):
        assert by_reason[reason][0] == "refused"
        assert by_reason[reason][2] is None and by_reason[reason][3] is None
    assert by_reason["ssl_required"][10] is False

    log = cluster.log_text()
    for reason in ("ok", "expired", "role_not_allowed", "untrusted_issuer", "malformed",
                   "ssl_required"):
        outcome = "ok" if reason == "ok" else "refused"
        assert f"pg_oauth audit: outcome={outcome} reason={reason} " in log, reason
    assert 'subject="alice" token_id="audit-ok"' in log


def test_stats_counters_move(cluster, issuer, refused):
    cluster.sql("SELECT oauth.stats_reset()")
    for _ in range(3):
        cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    assert refused("alice", issuer.mint(sub="alice", lifetime=-300)) == "expired"
    assert refused("alice", issuer.mint(sub="alice", aud="other")) == "audience_mismatch"
    assert refused("alice", "x.y") == "malformed"
    rows = cluster.sql("SELECT issuer, attempts, successes, refusals, key_cache_hits, "
                       "validation_p50_ms, validation_p99_ms, queue_wait_p50_ms FROM oauth.stats")
    stats = {r[0]: r for r in rows}
    mine = stats[issuer.issuer]
    # exp and aud are checked after the signature, so those refusals carry the issuer
    assert mine[1] == 5 and mine[2] == 3
    assert mine[3] == {"expired": 1, "audience_mismatch": 1}
    assert mine[4] >= 5
    assert mine[5] is not None and mine[6] >= mine[5] and mine[7] is not None
    assert stats[None][3] == {"malformed": 1}
    cluster.sql("SELECT oauth.stats_reset()")
    assert cluster.sql("SELECT count(*) FROM oauth.stats") == [(0,)]


def test_audit_rows_never_hold_the_token(cluster, issuer):
    token = issuer.mint(sub="alice", jti="audit-secret")
    cluster.token_connect("alice", token).close()
    wait_rows(cluster, "SELECT 1 FROM oauth.audit_log WHERE token_id = 'audit-secret'")
    dump = cluster.sql("SELECT string_agg(t::text, ' ') FROM oauth.audit_log t")[0][0]
    signature = token.split(".")[2]
    assert signature not in dump and token.split(".")[1] not in dump


@pytest.fixture(scope="module")
def standby(cluster):
    s = make_standby(cluster)
    yield s
    s.stop()


def test_standby_validates_logs_but_writes_no_rows(cluster, standby, issuer):
    token = issuer.mint(sub="alice", jti="standby-login")
    with standby.token_connect("alice", token) as conn:
        assert conn.execute("SELECT current_user, pg_is_in_recovery(), oauth.claim('jti')"
                            ).fetchone() == ("alice", True, "standby-login")
    assert 'token_id="standby-login"' in standby.log_text()
    stats = standby.sql("SELECT attempts, successes FROM oauth.stats WHERE issuer = %s",
                        (issuer.issuer,))
    assert stats and stats[0][1] >= 1
    time.sleep(1.5)  # the housekeepers run every 0.5 s
    assert cluster.sql("SELECT count(*) FROM oauth.audit_log WHERE token_id = 'standby-login'") \
        == [(0,)]
    # a mapping added on the primary replicates and applies on the standby too
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'sub', 'carol-standby', 'carol')", (issuer.issuer,))
    try:
        carol = issuer.mint(sub="carol-standby")
        deadline = time.time() + 15
        while True:
            try:
                standby.token_connect("carol", carol).close()
                break
            except psycopg.OperationalError:
                assert time.time() < deadline, "mapping did not reach the standby"
                time.sleep(0.3)
    finally:
        cluster.sql("DELETE FROM oauth.role_map WHERE pattern = 'carol-standby'")


def test_audit_retention(cluster):
    cluster.sql("INSERT INTO oauth.audit_log (at, outcome, reason) VALUES "
                "(now() - interval '3 days', 'refused', 'expired'), "
                "(now() - interval '1 hour', 'refused', 'expired')")
    cluster.sql("ALTER SYSTEM SET pg_oauth.audit_retention = '2d'")
    cluster.reload()
    try:
        deadline = time.time() + 15
        while cluster.sql("SELECT count(*) FROM oauth.audit_log "
                          "WHERE at < now() - interval '2 days'") != [(0,)]:
            assert time.time() < deadline, "old audit rows were not trimmed"
            time.sleep(0.2)
        assert cluster.sql("SELECT count(*) FROM oauth.audit_log "
                           "WHERE at BETWEEN now() - interval '2 hours' "
                           "AND now() - interval '30 minutes'") == [(1,)]
    finally:
        cluster.sql("ALTER SYSTEM RESET pg_oauth.audit_retention")
        cluster.reload()


def test_audit_retention_deletes_in_batches(cluster, issuer):
    """A retention pass deletes 10 000 rows per transaction, oldest first, and writes the
    audit rows of logins made meanwhile; a pass of more than one batch is logged."""
    offset = len(cluster.log_text())
    cluster.sql("INSERT INTO oauth.audit_log (at, outcome, reason, subject) "
                "SELECT now() - interval '3 days' - g * interval '1 second', 'refused', "
                "'expired', 'retention-batch' FROM generate_series(1, 25000) g")
    cluster.sql("ALTER SYSTEM SET pg_oauth.audit_retention = '2d'")
    cluster.reload()
    try:
        deadline = time.time() + 60
        logged = None
        while logged is None:
            assert time.time() < deadline, "no retention pass was logged"
            cluster.token_connect("alice", issuer.mint(sub="alice", jti="during-retention")).close()
            logged = re.search(r"LOG:  pg_oauth: audit retention deleted (\d+) rows older than "
                               r".* in (\d+) transactions", cluster.log_text()[offset:])
            time.sleep(0.1)
        assert int(logged.group(1)) >= 25000 and int(logged.group(2)) >= 3
        assert cluster.sql("SELECT count(*) FROM oauth.audit_log "
                           "WHERE subject = 'retention-batch'") == [(0,)]
        wait_rows(cluster, "SELECT 1 FROM oauth.audit_log WHERE token_id = 'during-retention'")
    finally:
        cluster.sql("ALTER SYSTEM RESET pg_oauth.audit_retention")
        cluster.reload()


def test_monitoring_role_reads_the_views(cluster, issuer):
    """oauth.sessions and oauth.stats are granted to pg_read_all_stats: a member must be
    able to read them (a view's functions run with the reader's privileges)."""
    cluster.sql("DROP ROLE IF EXISTS monitor")
    cluster.sql("CREATE ROLE monitor NOLOGIN IN ROLE pg_read_all_stats")
    try:
        with cluster.token_connect("alice", issuer.mint(sub="alice")), cluster.admin() as conn:
            conn.execute("SET ROLE monitor")
            assert conn.execute("SELECT count(*) FROM oauth.sessions "
                                "WHERE role = 'alice'").fetchone()[0] >= 1
            assert conn.execute("SELECT count(*) FROM oauth.stats").fetchone()[0] >= 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM oauth.audit_log")
    finally:
        cluster.sql("DROP ROLE monitor")


# oauth.stats_histogram's bounds: 2^k microseconds, 64 us to about 8.4 s, then +Inf
HISTOGRAM_BOUNDS = [2**k / 1e6 for k in range(6, 24)] + [math.inf]


def histograms(cluster) -> dict[tuple[str | None, str], list[tuple[float, int, float, int]]]:
    """(issuer, phase) -> its rows (le_seconds, count, sum_seconds, total), by bound."""
    found: dict = {}
    for issuer, phase, le, count, total_sum, total in cluster.sql(
            "SELECT issuer, phase, le_seconds, count, sum_seconds, total "
            "FROM oauth.stats_histogram ORDER BY issuer, phase, le_seconds"):
        found.setdefault((issuer, phase), []).append((le, count, total_sum, total))
    return found


def test_stats_histogram_counts_every_attempt_exactly(cluster, issuer, refused):
    """Per issuer and phase, cumulative counts at the fixed bounds up to +Inf (the
    total), the exact sum; the login phase holds every attempt with the audit's
    elapsed_ms: bucket for bucket, and to the microsecond in the sum."""
    cluster.sql("SELECT oauth.stats_reset()")
    assert cluster.sql("SELECT count(*) FROM oauth.stats_histogram") == [(0,)]
    start = cluster.sql("SELECT now()")[0][0]
    for _ in range(3):
        cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    again = issuer.mint(sub="alice")
    cluster.token_connect("alice", again).close()
    cluster.token_connect("alice", again).close()  # from the decision cache: no worker
    assert refused("alice", issuer.mint(sub="alice", lifetime=-300)) == "expired"
    assert refused("alice", "x.y") == "malformed"
    attempts = {i: a for i, a in cluster.sql("SELECT issuer, attempts FROM oauth.stats")}
    assert attempts[issuer.issuer] == 6

    found = histograms(cluster)
    assert {phase for _, phase in found} == {"validation", "queue_wait", "login"}
    for (iss, phase), rows in found.items():
        assert [r[0] for r in rows] == HISTOGRAM_BOUNDS, (iss, phase)
        counts = [r[1] for r in rows]
        assert counts == sorted(counts), (iss, phase, counts)
        assert {(r[2], r[3]) for r in rows} == {(rows[0][2], counts[-1])}, (iss, phase)
        # the sum lies within what the buckets allow
        lower = upper = 0.0
        for i, (le, count, _, _) in enumerate(rows):
            n = count - (rows[i - 1][1] if i else 0)
            if n:
                lower += n * (rows[i - 1][0] if i else 0.0)
                upper += n * le
        assert lower - 1e-9 <= rows[0][2] <= upper + 1e-9, (iss, phase, rows)
    mine = {phase: rows for (iss, phase), rows in found.items() if iss == issuer.issuer}
    # a worker decided five (four first-seen tokens, one expired), the cache one
    assert mine["validation"][-1][1] == 5 and mine["validation"][0][2] > 0
    assert mine["queue_wait"][-1][1] == 5
    assert mine["login"][-1][1] == attempts[issuer.issuer]
    assert found[(None, "login")][-1][1] == attempts[None]

    # every attempt is audited with the same elapsed time the login phase counted
    audited = wait_rows(cluster, "SELECT round(elapsed_ms * 1000)::int8 FROM oauth.audit_log "
                        "WHERE at >= %s", (start,), count=sum(attempts.values()))  # fmt: skip
    assert len(audited) == sum(attempts.values())
    elapsed_us = [us for (us,) in audited]
    logins = [rows for (_, phase), rows in found.items() if phase == "login"]
    assert round(sum(rows[0][2] for rows in logins) * 1e6) == sum(elapsed_us)
    for i, le in enumerate(HISTOGRAM_BOUNDS):
        below = sum(1 for us in elapsed_us if us < le * 1e6)
        assert sum(rows[i][1] for rows in logins) == below, (le, elapsed_us)

    cluster.sql("SELECT oauth.stats_reset()")
    assert cluster.sql("SELECT count(*) FROM oauth.stats_histogram") == [(0,)]


def test_stats_histogram_is_for_pg_read_all_stats_only(cluster, issuer):
    cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    cluster.sql("DROP ROLE IF EXISTS hist_reader; DROP ROLE IF EXISTS hist_nobody")
    cluster.sql("CREATE ROLE hist_reader NOLOGIN IN ROLE pg_read_all_stats; "
                "CREATE ROLE hist_nobody NOLOGIN")
    try:
        with cluster.admin() as conn:
            conn.execute("SET ROLE hist_reader")
            assert conn.execute("SELECT count(*) FROM oauth.stats_histogram "
                                "WHERE phase = 'login'").fetchone()[0] >= 19
            conn.execute("RESET ROLE")
            conn.execute("SET ROLE hist_nobody")
            for query in ("SELECT * FROM oauth.stats_histogram",
                          "SELECT * FROM oauth._stats_histogram()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(query)
    finally:
        cluster.sql("DROP ROLE hist_reader; DROP ROLE hist_nobody")
