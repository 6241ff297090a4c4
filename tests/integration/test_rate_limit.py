"""Brute-force brake: refusals from one address are held back longer each time and,
past pg_oauth.rate_limit_failures, its tokens are checked one at a time after other
addresses'. No address is refused before its token is read, a token that validates is
admitted, the braked addresses are visible in oauth.rate_limits and let go by
oauth.rate_limit_reset()."""

from __future__ import annotations

import datetime
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pgwire
import psycopg
import pytest
from conftest import make_cluster, reason_of

FAILURES = 4  # pg_oauth.rate_limit_failures of this module's cluster
MAX_DELAY_MS = 200


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rcluster(issuer):
    c = make_cluster(issuer, **{"pg_oauth.rate_limit_failures": FAILURES,
                                "pg_oauth.rate_limit_window": "'60s'",
                                "pg_oauth.rate_limit_max_delay": f"'{MAX_DELAY_MS}ms'"})
    yield c
    issuer.set_delay(0)
    c.stop()


@pytest.fixture(autouse=True)
def unbraked(rcluster):
    """Every test starts with no address braked."""
    rcluster.sql("SELECT oauth.rate_limit_reset()")


def login_error(cluster, user: str, token: str,
                via: str = "127.0.0.1") -> psycopg.OperationalError | None:
    """None when the login worked (as `user`), else the refusal. via: an address or
    "local" (the Unix socket)."""
    host = str(cluster.sockdir) if via == "local" else via
    try:
        with psycopg.connect(host=host, port=cluster.port, dbname="postgres", user=user,
                             password=token, connect_timeout=20,
                             sslmode="disable" if via == "local" else "require") as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == user
        return None
    except psycopg.OperationalError as e:
        return e


def reason(error: psycopg.OperationalError | None) -> str | None:
    return None if error is None else reason_of(error)


def hint(error: psycopg.OperationalError | None) -> str:
    assert error is not None, "the login was admitted"
    lines = str(error).splitlines()
    return " ".join(line.split("HINT:", 1)[1].strip() for line in lines if "HINT:" in line)


def rate_limits(cluster) -> dict[str, tuple]:
    rows = cluster.sql("SELECT address, failures, delay_ms, one_at_a_time, "
                       "window_end - window_start, last_failure FROM oauth.rate_limits")
    return {r[0]: r[1:] for r in rows}


def send_token(cluster, user: str, token: str) -> socket.socket:
    """Over the Unix socket: startup, the password request, the token; returns the
    socket without reading the answer (close it to hang up)."""
    sock = pgwire.unix(cluster.sockdir / f".s.PGSQL.{cluster.port}")
    assert pgwire.asks_for_password(*pgwire.start(sock, user))
    sock.sendall(pgwire.password_message(token))
    return sock


def authenticating_backends(cluster) -> set[int]:
    """Pids of the server's backends still authenticating (by their process title)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == postmaster and b"authentication" in title:
            pids.add(int(proc.name))
    return pids


def rate_limited_refusals(cluster) -> int:
    rows = cluster.sql("SELECT refusals FROM oauth.stats WHERE issuer IS NULL")
    return rows[0][0].get("rate_limited", 0) if rows else 0


def expired_token(issuer) -> str:
    return issuer.mint(sub="alice", now=time.time() - 7200)


def bad_signature_token(issuer) -> str:
    return issuer.mint(sub="alice", sign_with_unpublished=True)


@pytest.mark.parametrize("via", ["127.0.0.1", "::1"])
def test_retrying_an_expired_token_does_not_lock_out_a_valid_one(rcluster, issuer, via):
    """The reviewer's case: one client retries its expired token over and over; another
    user's valid token from the same address is still admitted."""
    if via == "::1" and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    expired = expired_token(issuer)
    for _ in range(22):
        assert reason(login_error(rcluster, "alice", expired, via)) == "expired"
    assert rate_limits(rcluster)[via][:2] == (22, MAX_DELAY_MS)
    assert login_error(rcluster, "bob", issuer.mint(sub="bob"), via) is None
    assert login_error(rcluster, "alice", issuer.mint(sub="alice"), via) is None
    # admitted logins neither count nor let the address go
    assert rate_limits(rcluster)[via][0] == 22


def test_refusals_are_held_back_and_the_hint_says_how_long(rcluster, issuer):
    expired = expired_token(issuer)
    first = login_error(rcluster, "alice", expired)
    assert reason(first) == "expired"
    assert hint(first) == "Get a fresh token from your identity provider."  # not held back
    for n, delay_ms in ((2, 25), (3, 50)):
        start = time.monotonic()
        refused = login_error(rcluster, "alice", expired)
        elapsed = time.monotonic() - start
        assert reason(refused) == "expired"
        text = hint(refused)
        assert text.startswith("Get a fresh token from your identity provider. "
                               f"Refused logins from this address are held back (this one by "
                               f"{delay_ms} ms) until its count of refusals starts over in ")
        seconds = int(text.split("starts over in ", 1)[1].split(" s", 1)[0])
        assert 0 < seconds <= 60
        assert elapsed >= delay_ms / 1000  # a lower bound: it was held back that long
    refused = login_error(rcluster, "alice", expired)  # the 4th: one at a time from now on
    assert "(this one by 100 ms), and its tokens are checked one at a time," in hint(refused)


def test_a_token_that_verified_is_never_held_against_its_address(rcluster, issuer):
    """A valid token asking for a role it does not allow is no guess: no count, no delay,
    no brake hint, even from an address that is already braked."""
    valid_for_alice = issuer.mint(sub="alice")
    for _ in range(FAILURES + 2):
        refused = login_error(rcluster, "bob", valid_for_alice)
        assert reason(refused) == "role_not_allowed"
        assert "held back" not in hint(refused)
    assert rate_limits(rcluster) == {}
    bad = bad_signature_token(issuer)
    for _ in range(FAILURES + 1):
        assert reason(login_error(rcluster, "alice", bad)) == "bad_signature"
    failures = rate_limits(rcluster)["127.0.0.1"][0]
    refused = login_error(rcluster, "bob", valid_for_alice)
    assert reason(refused) == "role_not_allowed"
    assert "one at a time" not in hint(refused) and "held back" not in hint(refused)
    assert rate_limits(rcluster)["127.0.0.1"][0] == failures


def test_view_shows_braked_addresses_and_reset_lets_them_go(rcluster, issuer):
    bad = bad_signature_token(issuer)
    before = datetime.datetime.now(datetime.UTC)
    for _ in range(5):
        assert reason(login_error(rcluster, "alice", bad)) == "bad_signature"
    for _ in range(2):
        assert reason(login_error(rcluster, "alice", bad, "local")) == "bad_signature"
    view = rate_limits(rcluster)
    assert set(view) == {"127.0.0.1", "local"}
    failures, delay_ms, one_at_a_time, window, last_failure = view["127.0.0.1"]
    assert (failures, delay_ms, one_at_a_time) == (5, MAX_DELAY_MS, True)
    assert window == datetime.timedelta(seconds=60)
    assert last_failure >= before
    assert view["local"][:4] == (2, 50, False, datetime.timedelta(seconds=60))

    assert rcluster.sql("SELECT oauth.rate_limit_reset('127.0.0.1')") == [(1,)]
    assert set(rate_limits(rcluster)) == {"local"}
    # let go: its next refusal is the first again, not held back
    assert hint(login_error(rcluster, "alice", bad)) == ""
    assert rcluster.sql("SELECT oauth.rate_limit_reset('127.0.0.0/8'::inet)") == [(1,)]
    assert rcluster.sql("SELECT oauth.rate_limit_reset('local')") == [(1,)]
    assert rate_limits(rcluster) == {}

    for via in ("127.0.0.1", "local"):
        assert reason(login_error(rcluster, "alice", bad, via)) == "bad_signature"
    assert rcluster.sql("SELECT oauth.rate_limit_reset('10.0.0.1')") == [(0,)]
    assert rcluster.sql("SELECT oauth.rate_limit_reset()") == [(2,)]
    assert rate_limits(rcluster) == {}


def test_only_superusers_reset_and_stats_readers_see(rcluster, issuer):
    assert reason(login_error(rcluster, "alice", bad_signature_token(issuer))) == "bad_signature"
    with psycopg.connect(host=str(rcluster.sockdir), port=rcluster.port, dbname="postgres",
                         user="alice", password=issuer.mint(sub="alice"),
                         autocommit=True) as conn:
        for query in ("SELECT * FROM oauth.rate_limits", "SELECT oauth.rate_limit_reset()",
                      "SELECT oauth.rate_limit_reset('local')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
    rcluster.sql("CREATE ROLE watcher IN ROLE pg_read_all_stats")
    try:
        with rcluster.admin() as conn:
            conn.execute("SET ROLE watcher")
            addresses = conn.execute("SELECT address FROM oauth.rate_limits").fetchall()
            assert addresses == [("127.0.0.1",)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT oauth.rate_limit_reset('127.0.0.1'::inet)")
    finally:
        rcluster.sql("DROP ROLE watcher")


def test_flood_from_one_address_does_not_fail_valid_logins_from_another(rcluster, issuer):
    """Many concurrent clients on the Unix socket send bad-signature tokens while
    valid logins keep coming from 127.0.0.1: every valid one is admitted, and every
    bad one is checked (refused for its signature, never before its token is read)."""
    bad = bad_signature_token(issuer)
    flood: Counter[str | None] = Counter()
    lock = threading.Lock()

    def flooder() -> None:
        for _ in range(6):
            r = reason(login_error(rcluster, "alice", bad, "local"))
            with lock:
                flood[r] += 1

    threads = [threading.Thread(target=flooder) for _ in range(12)]
    for t in threads:
        t.start()
    valid: list[str | None] = []
    while any(t.is_alive() for t in threads) or len(valid) < 5:
        valid.append(reason(login_error(rcluster, "bob", issuer.mint(sub="bob"))))
    for t in threads:
        t.join()

    assert valid == [None] * len(valid)
    assert flood == {"bad_signature": 72}
    view = rate_limits(rcluster)
    assert set(view) == {"local"}
    assert view["local"][0] == 72 and view["local"][2] is True


def test_a_braked_address_gets_one_worker_and_waits_its_turn(rcluster, issuer):
    """While a token from a braked address is in a worker (stuck on a slow issuer),
    the address's next token waits for it (rate_limited when its turn does not come
    within pg_oauth.timeout); the other worker stays free for other addresses."""
    rcluster.sql("UPDATE oauth.issuers SET jwks_cooldown = '0', http_timeout = '8 seconds'")
    rcluster.sql("ALTER SYSTEM SET pg_oauth.timeout = '1500ms'")
    rcluster.reload()
    bad = bad_signature_token(issuer)
    for _ in range(FAILURES):
        assert reason(login_error(rcluster, "alice", bad, "local")) == "bad_signature"
    issuer.set_delay(4)
    try:
        stuck: list[str | None] = []
        # an unknown kid sends a worker to the (slow) issuer for the keys
        t = threading.Thread(target=lambda: stuck.append(reason(login_error(
            rcluster, "alice", issuer.mint(sub="alice", kid="stuck-kid"), "local"))))
        t.start()
        deadline = time.time() + 10
        while not rcluster.sql("SELECT 1 FROM oauth.workers() WHERE state = 'busy'"):
            assert time.time() < deadline, "no worker became busy"
            time.sleep(0.02)
        limited_before = rate_limited_refusals(rcluster)
        # a client that hangs up while waiting for the turn leaves no backend waiting
        send_token(rcluster, "bob", issuer.mint(sub="bob")).close()
        assert login_error(rcluster, "bob", issuer.mint(sub="bob")) is None
        waited = login_error(rcluster, "bob", issuer.mint(sub="bob"), "local")
        limited = rate_limited_refusals(rcluster) - limited_before
        t.join()
    finally:
        issuer.set_delay(0)
        rcluster.sql("ALTER SYSTEM RESET pg_oauth.timeout")
        rcluster.sql("UPDATE oauth.issuers SET jwks_cooldown = '1 second', "
                     "http_timeout = '5 seconds'")
        rcluster.reload()
    assert stuck == ["validator_timeout"]
    assert reason(waited) == "rate_limited"
    assert "Tokens from this address are checked one at a time" in hint(waited)
    # neither is held against the address: it did nothing wrong in them
    assert rate_limits(rcluster)["local"][0] == FAILURES
    assert limited == 1  # the client that hung up was not waited for until the timeout


def test_a_client_that_hangs_up_is_not_held_back(rcluster, issuer):
    """The delay holds a refused backend only while its client waits for the answer."""
    bad = bad_signature_token(issuer)
    for _ in range(10):
        assert reason(login_error(rcluster, "alice", bad, "local")) == "bad_signature"
    rcluster.sql("ALTER SYSTEM SET pg_oauth.rate_limit_max_delay = '10s'")
    rcluster.reload()
    try:
        sock = send_token(rcluster, "alice", bad)  # its refusal is held back 10 s
        try:
            deadline = time.time() + 10
            while rate_limits(rcluster)["local"][0] < 11:
                assert time.time() < deadline, "the token was not refused"
                time.sleep(0.02)
            assert authenticating_backends(rcluster), "the refused backend is held back"
        finally:
            sock.close()
        deadline = time.time() + 5  # half the delay: it ends on the hang-up, not the delay
        while authenticating_backends(rcluster):
            assert time.time() < deadline, "the backend waited out the delay"
            time.sleep(0.05)
    finally:
        rcluster.sql("ALTER SYSTEM RESET pg_oauth.rate_limit_max_delay")
        rcluster.reload()


def test_the_count_starts_over_after_the_window(rcluster, issuer):
    rcluster.sql("ALTER SYSTEM SET pg_oauth.rate_limit_window = '2s'")
    rcluster.reload()
    try:
        bad = bad_signature_token(issuer)
        for _ in range(FAILURES):
            assert reason(login_error(rcluster, "alice", bad)) == "bad_signature"
        assert rate_limits(rcluster)["127.0.0.1"][3] == datetime.timedelta(seconds=2)
        time.sleep(2.2)
        assert rate_limits(rcluster) == {}
        assert hint(login_error(rcluster, "alice", bad)) == ""  # the first of a new window
    finally:
        rcluster.sql("ALTER SYSTEM RESET pg_oauth.rate_limit_window")
        rcluster.reload()
