"""Valid logins from one address while another floods the server with bad-signature
tokens: what the brute-force brake leaves of their latency, and that none is refused."""

from __future__ import annotations

import datetime
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.synchronize import Event

import pgwire
import psycopg
from login_loop import percentile, turn_order
from plan import Plan
from report import Goal, Table, ms, ratio
from resilience import refusal_reason, timed_login
from testbed import RATE_LIMIT, RS256, TOKEN_USER, Target, Testbed

Progress = Callable[[str], None]

NO_FLOOD = "none"
WAITING = "flood waiting for its refusals, brake on (as shipped)"
HANGING_UP = "flood hanging up after each token, brake on (as shipped)"
NO_TOKEN = "connections alone: hanging up at the password request, no token"
BRAKE_OFF = "flood waiting for its refusals, brake off (rate_limit_failures = 0)"
PHASES = (NO_FLOOD, WAITING, HANGING_UP, NO_TOKEN, BRAKE_OFF)
SETTLE_SECONDS = 0.3  # the flood is under way before the first valid login is timed
HANGS_UP = "sent its token and hung up"
NO_TOKEN_SENT = "hung up at the password request"


def _hang_up(path: str, user: str, token: str | None) -> str:
    """One login over the Unix socket that sends its token (if any) when asked for the
    password, and closes at once."""
    with pgwire.unix(path, timeout=20) as sock:
        mtype, body = pgwire.start(sock, user)
        if mtype != b"R":
            return pgwire.error_fields(body).get("M", "error")[:40]
        if token is None:
            return NO_TOKEN_SENT
        sock.sendall(pgwire.password_message(token))
    return HANGS_UP


def _flooder(target: Target, token: str, clients: int, phase: str, ready: Event,
             stop: Event, results: multiprocessing.Queue) -> None:
    """``clients`` threads, each logging in with ``token`` again and again until
    ``stop``: as soon as its refusal comes back, or (hanging up) as soon as the token
    is sent, or (no token) as soon as the password is asked for. Puts its outcome
    counts on ``results``."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    path = f"{target.host}/.s.PGSQL.{target.port}"

    def client() -> None:
        while not stop.is_set():
            try:
                if phase in (HANGING_UP, NO_TOKEN):
                    outcome = _hang_up(path, target.user, token if phase == HANGING_UP else None)
                else:
                    psycopg.connect(target.conninfo(), password=token,
                                    connect_timeout=20).close()
                    outcome = "admitted"
            except psycopg.Error as exc:
                outcome = refusal_reason(exc)
            except OSError as exc:
                outcome = type(exc).__name__
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()
    results.put(dict(outcomes))


class Flood:
    """A flood in a process of its own (spawned: this one runs the issuer's threads),
    so that its threads never hold up the timed client's interpreter."""

    def __init__(self, target: Target, token: str, clients: int, phase: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._results: multiprocessing.Queue = ctx.Queue()
        self._process = ctx.Process(target=_flooder, daemon=True, args=(
            target, token, clients, phase, self._ready, self._stop, self._results))
        self.started = 0.0
        self.seconds = 0.0

    def start(self) -> None:
        self._process.start()
        if not self._ready.wait(timeout=60):
            self._process.kill()
            raise RuntimeError("the flood process did not start")
        self.started = time.perf_counter()

    def stop(self) -> Counter[str]:
        """Stop (each client finishes the login it is in) and return the outcomes."""
        self._stop.set()
        try:
            outcomes: Counter[str] = Counter(self._results.get(timeout=60))
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
        self.seconds = time.perf_counter() - self.started
        return outcomes



def _checked_bad_signatures(tb: Testbed) -> int:
    """Bad-signature tokens the workers have refused so far (oauth.stats)."""
    assert tb.main is not None
    rows = tb.main.sql("SELECT refusals FROM oauth.stats WHERE issuer IS NULL")
    return int(rows[0][0].get("bad_signature", 0)) if rows else 0


def _hook_times(tb: Testbed, windows: list[tuple[datetime.datetime, datetime.datetime]]
                ) -> tuple[float | None, float | None, float | None]:
    """p50 and p99 of the time the valid logins (127.0.0.1) spent in the hook, and p99
    of their queue wait, in ms, from oauth.audit_log over those windows of time."""
    assert tb.main is not None
    time.sleep(1.0)  # the housekeeper writes the audit rows twice a second
    row = tb.main.sql(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY elapsed_ms), "
        "       percentile_disc(0.99) WITHIN GROUP (ORDER BY elapsed_ms), "
        "       percentile_disc(0.99) WITHIN GROUP (ORDER BY queue_ms) "
        "FROM oauth.audit_log a "
        "JOIN unnest(%s::timestamptz[], %s::timestamptz[]) AS w(s, e) "
        "  ON a.at BETWEEN w.s AND w.e "
        "WHERE a.outcome = 'ok' AND a.client_addr = '127.0.0.1'",
        ([w[0] for w in windows], [w[1] for w in windows]))[0]
    return row[0], row[1], row[2]


def _ms_or_blank(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def bad_token_flood(tb: Testbed, plan: Plan, goals: list[Goal], progress: Progress) -> Table:
    """Valid RS256 logins over TCP+TLS from 127.0.0.1, one after another with a fresh
    token each, with no flood and with plan.flood_clients clients on the Unix socket
    sending a bad-signature token again and again; the rows take turns round by round."""
    assert tb.main is not None
    victim = tb.target(RS256, "tcp+tls")
    attacker = Target.of(tb.main, "unix", TOKEN_USER)
    bad = tb.mint("RS256", sign_with_unpublished=True)
    tb.use_default_settings()
    samples: dict[str, list[float]] = {p: [] for p in PHASES}
    refused: dict[str, Counter[str]] = {p: Counter() for p in PHASES}
    flood_outcomes: dict[str, Counter[str]] = {p: Counter() for p in PHASES}
    flood_seconds: dict[str, float] = {p: 0.0 for p in PHASES}
    checked: dict[str, int] = {p: 0 for p in PHASES}
    windows: dict[str, list[tuple[datetime.datetime, datetime.datetime]]] = {
        p: [] for p in PHASES}
    try:
        for r in range(plan.rounds):
            progress(f"bad-token flood: round {r + 1}/{plan.rounds}")
            for phase in turn_order(list(PHASES), r):
                tb.configure({RATE_LIMIT: "0" if phase == BRAKE_OFF else None})
                tokens = [tb.mint("RS256") for _ in range(plan.flood_logins)]
                flood = (Flood(attacker, bad, plan.flood_clients, phase)
                         if phase != NO_FLOOD else None)
                checked_before = _checked_bad_signatures(tb)
                if flood:
                    flood.start()
                    time.sleep(SETTLE_SECONDS)
                began = datetime.datetime.now(datetime.UTC)
                try:
                    for token in tokens:
                        seconds, reason = timed_login(victim, token)
                        if reason is None:
                            samples[phase].append(seconds)
                        else:
                            refused[phase][reason] += 1
                finally:
                    windows[phase].append((began, datetime.datetime.now(datetime.UTC)))
                    if flood:
                        flood_outcomes[phase] += flood.stop()
                        flood_seconds[phase] += flood.seconds
                time.sleep(0.2)  # the last refused backends finish
                checked[phase] += _checked_bad_signatures(tb) - checked_before
    finally:
        tb.configure({RATE_LIMIT: None})

    table = Table(
        "Valid logins during a flood of bad-signature tokens from another address "
        f"(JWT RS256, tcp+tls from 127.0.0.1, 1 client; flood: {plan.flood_clients} "
        "clients on the Unix socket)",
        ["flood", "valid logins", "refused", "p50 ms", "p99 ms", "max ms",
         "p99 × no flood", "in the hook p50 / p99 ms", "queue wait p99 ms",
         "flood logins/s", "flood tokens checked/s", "flood outcomes"])
    base99 = percentile(samples[NO_FLOOD], 0.99)
    for phase in PHASES:
        s = samples[phase]
        outcomes = flood_outcomes[phase]
        seconds = flood_seconds[phase]
        hook50, hook99, queue99 = _hook_times(tb, windows[phase])
        table.add(phase, len(s) + sum(refused[phase].values()),
                  ", ".join(f"{k} {v}" for k, v in refused[phase].items()) or "0",
                  ms(percentile(s, 0.5)) if s else "", ms(percentile(s, 0.99)) if s else "",
                  ms(max(s)) if s else "",
                  ratio(percentile(s, 0.99) / base99) if s and phase != NO_FLOOD else "",
                  f"{_ms_or_blank(hook50)} / {_ms_or_blank(hook99)}", _ms_or_blank(queue99),
                  f"{sum(outcomes.values()) / seconds:.0f}" if seconds else "",
                  f"{checked[phase] / seconds:.0f}" if seconds else "",
                  ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    table.notes.append(
        f"{plan.rounds} rounds × {plan.flood_logins} valid logins per row, the rows taking "
        "turns round by round; a fresh token for every valid login, so each is checked by "
        "a validator worker (decision cache on, as shipped). The flood runs in a process of "
        "its own; each of its clients starts its next login as soon as its refusal comes "
        "back (held back by the brake, when on), or, hanging up, as soon as its token is "
        f"sent. It starts {SETTLE_SECONDS:g} s before the first valid login of its round "
        "and stops after the last.")
    table.notes.append(
        "connections alone: the same clients hang up when asked for the password, before "
        "any token: what a flood of connections costs whatever pg_oauth does, the floor "
        "for the rows that flood with tokens.")
    table.notes.append(
        "brake on: the shipped settings (rate_limit_failures 10, window 60 s, max_delay "
        "1 s); the Unix-socket clients' entry is not reset between rounds, as a persistent "
        "attacker's would not be. Brake off: no delays and no one-at-a-time; a free worker "
        "still takes the address with the fewest tokens in the workers first. Flood tokens "
        "checked: bad_signature refusals in oauth.stats, i.e. the validator work the flood "
        "got. In the hook and queue wait: the valid logins' elapsed_ms and queue_ms in "
        "oauth.audit_log (from the hook's start to its decision, and waiting for a worker); "
        "the rest of a login's time is the connection itself (fork, TLS, startup), which a "
        "flood of connections slows whatever the authentication. Client and server share "
        "the machine's CPUs.")
    braked = (WAITING, HANGING_UP)
    total_refused = sum(sum(refused[p].values()) for p in PHASES if p != NO_FLOOD)
    total = sum(len(samples[p]) for p in PHASES if p != NO_FLOOD) + total_refused
    worst99 = max((percentile(samples[p], 0.99) for p in braked if samples[p]),
                  default=float("nan"))
    goals.append(Goal(
        "bad-token flood from another address: every valid login admitted",
        f"{total_refused} of {total} refused; brake on: p99 up to {ms(worst99)} vs "
        f"{ms(base99)} ms without the flood ({ratio(worst99 / base99)})",
        total_refused == 0))
    return table
