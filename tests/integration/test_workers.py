"""The validator workers failing, stalling, dying: logins are refused with a reason,
the server keeps running, and token logins come back on their own."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest
from conftest import CLUSTERS, attempt, make_cluster, refusal, setup_oauth
from pgcluster import Cluster


@pytest.fixture(scope="module")
def wcluster(issuer):
    """A cluster of its own: these tests stall, terminate and kill its workers."""
    c = make_cluster(issuer, **{"pg_oauth.timeout": "'1500ms'"})
    yield c
    issuer.set_delay(0)
    c.stop()


def answer_promptly_again(cluster, issuer) -> None:
    """Undo a test's slow issuer: no delay, the suite's cooldown and timeout, reloaded."""
    issuer.set_delay(0)
    cluster.sql("UPDATE oauth.issuers SET jwks_cooldown = '1 second', "
                "http_timeout = '5 seconds'")
    cluster.reload()


def busy_worker_pid(cluster, timeout=10.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = cluster.sql("SELECT pid FROM oauth.workers() WHERE state = 'busy'")
        if rows:
            return rows[0][0]
        time.sleep(0.02)
    raise TimeoutError("no worker became busy")


def test_all_workers_stuck_refused_within_timeout(wcluster, issuer):
    wcluster.sql("UPDATE oauth.issuers SET jwks_cooldown = '0', http_timeout = '8 seconds'")
    issuer.set_delay(5)
    try:
        # two unknown kids: each sends one worker to the (slow) issuer
        results: list[str] = []
        threads = [threading.Thread(target=lambda k=k: results.append(
            attempt(wcluster, "alice", issuer.mint(sub="alice", kid=f"stuck-{k}"))))
            for k in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        # both workers are stuck; a perfectly good token waits for none of them forever
        start = time.time()
        reason = attempt(wcluster, "alice", issuer.mint(sub="alice"))
        elapsed = time.time() - start
        for t in threads:
            t.join()
        assert reason == "validator_timeout"
        assert elapsed < 5, "refused by pg_oauth.timeout, not by the issuer's answer"
        assert results == ["validator_timeout", "validator_timeout"]
        # the server is up all along
        assert wcluster.sql("SELECT 1") == [(1,)]
    finally:
        answer_promptly_again(wcluster, issuer)
    # once the issuer answers again the workers come back by themselves
    deadline = time.time() + 20
    while attempt(wcluster, "alice", issuer.mint(sub="alice")) != "ok":
        assert time.time() < deadline, "token logins did not recover"
        time.sleep(0.5)


def test_sigterm_to_busy_worker_fails_that_login_only(wcluster, issuer):
    wcluster.sql("UPDATE oauth.issuers SET http_timeout = '8 seconds', jwks_cooldown = '0'")
    wcluster.sql("ALTER SYSTEM SET pg_oauth.timeout = '6s'")
    wcluster.reload()
    new_kid = issuer.rotate("ES256")
    issuer.set_delay(2)
    try:
        result: list[str] = []
        # a valid token under a new key: the worker has to fetch the (slow) JWKS
        t = threading.Thread(target=lambda: result.append(
            attempt(wcluster, "alice", issuer.mint(sub="alice", alg="ES256", kid=new_kid))))
        t.start()
        pid = busy_worker_pid(wcluster)
        wcluster.sql("SELECT pg_terminate_backend(%s)", (pid,))
        t.join()
        assert result == ["validator_unavailable"]
    finally:
        wcluster.sql("ALTER SYSTEM RESET pg_oauth.timeout")
        answer_promptly_again(wcluster, issuer)
    assert wcluster.is_alive()
    wcluster.wait_for_workers()
    assert attempt(wcluster, "alice", issuer.mint(sub="alice", alg="ES256", kid=new_kid)) == "ok"
    log = wcluster.log_text()
    assert ("the validator worker exited while checking this token" in log
            or "the validator worker was terminated while checking this token" in log)


def test_sigkill_of_a_worker_cluster_recovers(wcluster, issuer):
    pid = wcluster.sql("SELECT pid FROM oauth.workers() WHERE pid IS NOT NULL")[0][0]
    os.kill(pid, signal.SIGKILL)
    # the postmaster resets shared memory and restarts everything, workers included;
    # until it has noticed, the old workers may still be listed
    deadline = time.time() + 60
    while True:
        try:
            rows = wcluster.wait_for_workers(timeout=2)
            if pid not in [r[1] for r in rows]:
                break
        except (TimeoutError, psycopg.Error):
            pass
        assert time.time() < deadline, "cluster did not recover"
        time.sleep(0.2)
    deadline = time.time() + 30
    while (reason := attempt(wcluster, "alice", issuer.mint(sub="alice"))) != "ok":
        assert time.time() < deadline, f"token logins did not come back: {reason}"
        time.sleep(0.2)


def test_no_workers_refused_quickly(wcluster, issuer):
    wcluster.restart({"pg_oauth.workers": 0})
    try:
        start = time.time()
        assert attempt(wcluster, "alice", issuer.mint(sub="alice")) == "validator_unavailable"
        assert time.time() - start < 1.4, "refused at once, not after pg_oauth.timeout"
        assert wcluster.sql("SELECT 1") == [(1,)]
    finally:
        wcluster.restart({"pg_oauth.workers": 2})
        wcluster.wait_for_workers()


def test_validator_database_missing_refused_quickly(wcluster, issuer):
    wcluster.restart({"pg_oauth.database": "'no_such_db'"})
    try:
        time.sleep(1.5)  # the workers try, fail and are restarted in a loop
        start = time.time()
        assert attempt(wcluster, "alice", issuer.mint(sub="alice")) == "validator_unavailable"
        assert time.time() - start < 1.4
        assert wcluster.sql("SELECT 1") == [(1,)]
    finally:
        wcluster.restart({"pg_oauth.database": "'postgres'"})
        wcluster.wait_for_workers()
    assert attempt(wcluster, "alice", issuer.mint(sub="alice")) == "ok"


def test_extension_not_installed_yet_then_installed(issuer, tmp_path):
    """The DBA's order of work: preload, restart, then CREATE EXTENSION — no restart after.
    Meanwhile the log and the refusals say what to do (oauth.workers() does not exist yet)."""
    c = Cluster().init().start()
    CLUSTERS.append(c)
    waiting = [f'pg_oauth validator {i} waiting: extension pg_oauth is not installed in '
               'database "postgres" (pg_oauth.database); run CREATE EXTENSION pg_oauth '
               'CASCADE there' for i in range(2)]
    try:
        deadline = time.time() + 30
        while not all(line in c.log_text() for line in waiting):
            assert time.time() < deadline, c.log_text()
            time.sleep(0.1)
        time.sleep(2.5)  # the workers check again every second
        rows = c.sql("SELECT count(*) FROM pg_extension WHERE extname = 'pg_oauth'")
        assert rows == [(0,)]
        with pytest.raises(psycopg.OperationalError) as excinfo:
            c.token_connect("alice", issuer.mint(sub="alice")).close()
        assert refusal(excinfo) == "validator_unavailable"
        assert ("HINT:  Run CREATE EXTENSION pg_oauth CASCADE in the database named by "
                "pg_oauth.database (the server log names it).") in str(excinfo.value)
        assert "oauth.workers()" not in str(excinfo.value)
        setup_oauth(c, issuer.issuer)
        c.wait_for_workers(timeout=10)
        assert attempt(c, "alice", issuer.mint(sub="alice")) == "ok"
        log = c.log_text()
        for i, line in enumerate(waiting):
            assert log.count(line) == 1, "once per wait, not every second"
            assert (f'pg_oauth validator {i} ready: extension pg_oauth found in database '
                    '"postgres"') in log
    finally:
        c.stop()


def auth_waiting_pids() -> list[int]:
    """Backends still in authentication (their process title says so)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                         check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "postgres:" in line and line.rstrip().endswith("authentication")]


def test_backends_killed_while_waiting_free_their_slots(wcluster, issuer):
    """More waiting logins than queue slots are terminated mid-wait: none may leak."""
    wcluster.sql("UPDATE oauth.issuers SET jwks_cooldown = '0', http_timeout = '8 seconds'")
    wcluster.sql("ALTER SYSTEM SET pg_oauth.timeout = '20s'")
    wcluster.reload()
    issuer.set_delay(6)
    try:
        results: list[str] = []

        def login(k: int) -> None:
            try:
                wcluster.token_connect("alice", issuer.mint(sub="alice", kid=f"leak-{k}")).close()
                results.append("ok")
            except psycopg.OperationalError as e:
                # killed mid-wait: the connection just closes
                results.append("refused" if "JWT authentication failed" in str(e) else "closed")

        threads = [threading.Thread(target=login, args=(k,)) for k in range(24)]
        for t in threads:
            t.start()
        deadline = time.time() + 15
        while len(auth_waiting_pids()) < 20 and time.time() < deadline:
            time.sleep(0.1)
        pids = auth_waiting_pids()
        assert len(pids) >= 16, "more waiting logins than the 16 queue slots"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        for t in threads:
            t.join()
        assert len(results) == 24 and "ok" not in results
    finally:
        wcluster.sql("ALTER SYSTEM RESET pg_oauth.timeout")
        answer_promptly_again(wcluster, issuer)
    assert wcluster.is_alive()
    # the two requests the workers were already fetching keys for finish on their own
    deadline = time.time() + 30
    while wcluster.sql("SELECT count(*) FROM oauth.workers() WHERE state = 'idle'")[0][0] < 2:
        assert time.time() < deadline, "workers stayed busy"
        time.sleep(0.2)
    # every slot came back: a burst of logins still gets through
    ok: list[str] = []
    burst = [threading.Thread(target=lambda: ok.append(
        attempt(wcluster, "alice", issuer.mint(sub="alice")))) for _ in range(20)]
    for t in burst:
        t.start()
    for t in burst:
        t.join()
    assert ok == ["ok"] * 20
