"""Brute-force brake: refusals from one address slow it down, then block it
(rate_limited, before a token is even asked for), while other addresses and
valid tokens from them are not affected."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest
from conftest import make_cluster, raw_startup, read_message, refusal


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rcluster(issuer):
    c = make_cluster(issuer, **{"pg_oauth.rate_limit_failures": 4,
                                "pg_oauth.rate_limit_window": "'60s'",
                                "pg_oauth.rate_limit_max_delay": "'200ms'"})
    yield c
    c.stop()


def reason_of(cluster, user, token, host="127.0.0.1") -> str | None:
    try:
        psycopg.connect(f"host={host} port={cluster.port} dbname=postgres user={user} "
                        "sslmode=require", password=token, connect_timeout=20).close()
        return None
    except psycopg.OperationalError as e:
        class Info:
            value = e
        return refusal(Info)


def test_refusals_slow_down_then_block_one_address(rcluster, issuer):
    bad = issuer.mint(sub="alice", aud="wrong-audience")
    timings = []
    for _ in range(3):
        start = time.monotonic()
        assert reason_of(rcluster, "alice", bad) == "audience_mismatch"
        timings.append(time.monotonic() - start)
    # 2nd refusal held back >= 25 ms, 3rd >= 50 ms (lower bounds, not speed)
    assert timings[1] >= 0.025 and timings[2] >= 0.05
    # the 4th refusal blocks the address ...
    assert reason_of(rcluster, "alice", bad) == "audience_mismatch"
    # ... so even a valid token from it is refused, before a worker sees it
    assert reason_of(rcluster, "alice", issuer.mint(sub="alice")) == "rate_limited"
    sock, first = raw_startup(rcluster.port, "alice")
    try:
        mtype, body = read_message(sock, first)
        assert mtype == b"E" and b"rate_limited" in body  # no password request first
    finally:
        sock.close()

    # another client address logs in normally
    if has_ipv6_loopback():
        assert reason_of(rcluster, "alice", issuer.mint(sub="alice"), host="::1") is None
    # and so does a client on the Unix socket
    with psycopg.connect(host=str(rcluster.sockdir), port=rcluster.port, dbname="postgres",
                         user="alice", password=issuer.mint(sub="alice")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "alice"

    stats = rcluster.sql("SELECT refusals FROM oauth.stats WHERE issuer IS NULL")
    assert stats and stats[0][0].get("rate_limited", 0) >= 2


def test_block_expires_after_the_window(rcluster, issuer):
    rcluster.sql("ALTER SYSTEM SET pg_oauth.rate_limit_window = '2s'")
    rcluster.reload()
    try:
        time.sleep(2.2)
        assert reason_of(rcluster, "alice", issuer.mint(sub="alice")) is None
    finally:
        rcluster.sql("ALTER SYSTEM RESET pg_oauth.rate_limit_window")
        rcluster.reload()
