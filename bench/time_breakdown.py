"""Where a JWT login's time goes: CPU per login by process, the worker's SQL call of
oauth.validate() against a constant stand-in, and pyhook timed in-process."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import resource
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from login_loop import Login, interleaved_latencies, percentile, turn_order
from pgbench_runner import Pgbench
from pgcluster import ADMIN_PASSWORD, ADMIN_USER, Cluster
from plan import Plan
from report import Table
from testbed import (
    AUDIENCE,
    JWT_METHODS,
    MD5,
    MD5_FLOOR,
    RS256,
    RS256_CACHED,
    TRANSPORTS,
    TRUST,
    TRUST_TWIN,
    Target,
    Testbed,
)

Progress = Callable[[str], None]
SERVER_PYTHON = os.environ.get("SERVER_PYTHON", "/usr/bin/python3")
JSON_OID, JSONB_OID = 114, 3802
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, children: bool) -> float:
    """utime + stime (and the reaped children's, for the postmaster) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICK


def _postmaster_pid(cluster: Cluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_per_login(tb: Testbed, pgbench: Pgbench, plan: Plan, progress: Progress) -> Table:
    """Backends' CPU is read from the postmaster once it has reaped them (cutime)."""
    assert tb.main is not None and tb.floor is not None and tb.twin is not None
    worker_pids = [int(r[1]) for r in tb.main.sql("SELECT worker, pid FROM oauth.workers()")
                   if r[1] is not None]
    table = Table(
        f"CPU per login (ms), pgbench -C -c 4 over the Unix socket, {plan.cpu_seconds} s "
        "per method",
        ["method", "logins/s", "postmaster + backend", "validator workers",
         "server total", "pgbench client"])
    for method in tb.methods:
        progress(f"CPU per login: {method.name}")
        tb.prepare(method)
        target = tb.target(method, "unix")
        cluster = tb.floor if method is TRUST else tb.twin if method is TRUST_TWIN else tb.main
        postmaster = _postmaster_pid(cluster)
        before = (_cpu_seconds(postmaster, True),
                  sum(_cpu_seconds(p, False) for p in worker_pids), _client_cpu())
        result = pgbench.run(target, 4, plan.cpu_seconds, connect_each=True)
        time.sleep(0.2)  # let the postmaster reap the last backends
        after = (_cpu_seconds(postmaster, True),
                 sum(_cpu_seconds(p, False) for p in worker_pids), _client_cpu())
        backend, workers, client = (1000 * (a - b) / result.transactions
                                    for a, b in zip(after, before))
        if method.kind == "trust":
            workers = 0.0
        table.add(method.name, f"{result.tps:.0f}", f"{backend:.2f}", f"{workers:.2f}",
                  f"{backend + workers:.2f}", f"{client:.2f}")
    table.notes.append(
        f"clock-tick accounting ({1000 / CLOCK_TICK:.0f} ms ticks) over whole runs; the "
        "validator workers are idle for every method but JWT.")
    return table


def _do_loop(conn_sql: Callable[[str], object], call: str, loops: int) -> float:
    started = time.perf_counter()
    conn_sql(f"DO $bench$ BEGIN FOR i IN 1..{loops} LOOP PERFORM {call}; "
             "END LOOP; END $bench$")
    return time.perf_counter() - started


def _validate_function(sql: Callable[..., list[tuple]]) -> tuple[str, str, list[str]]:
    """Arguments, result type and result columns of the installed oauth.validate()."""
    rows = sql("SELECT p.oid, pg_get_function_arguments(p.oid), "
               "pg_get_function_result(p.oid) FROM pg_proc p "
               "WHERE p.proname = 'validate' AND p.pronamespace = 'oauth'::regnamespace")
    if len(rows) != 1:
        raise RuntimeError(f"expected one oauth.validate function, found {len(rows)}")
    oid, arguments, result = rows[0]
    columns = [r[0] for r in sql(
        "SELECT a.name FROM pg_proc p, unnest(p.proargnames, p.proargmodes) "
        "WITH ORDINALITY AS a(name, mode, n) WHERE p.oid = %s AND a.mode IN ('o', 't') "
        "ORDER BY a.n", (oid,))]
    return arguments, result, columns


def _python_literal_row(row: tuple, description: Any) -> dict[str, object]:
    """A result row as PL/Python can return it: JSON as text, timestamps as ISO text."""
    out: dict[str, object] = {}
    for value, column in zip(row, description):
        if column.type_code in (JSON_OID, JSONB_OID) and value is not None:
            value = json.dumps(value)
        elif isinstance(value, datetime.datetime):
            value = value.isoformat()
        out[column.name] = value
    return out


def server_calls(tb: Testbed, cases: dict[str, str], plan: Plan,
                 progress: Progress) -> dict[str, dict[str, float]]:
    """Seconds per call, in a server backend, of the workers' query: on oauth.validate()
    and on a PL/Python stand-in returning the same row as a constant."""
    assert tb.main is not None
    out: dict[str, dict[str, float]] = {}
    with tb.main.admin() as conn:
        def sql(query: str, params: object = None) -> list[tuple]:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

        arguments, result, columns = _validate_function(sql)
        select_list = ", ".join(f"{c}::text" if c == "claims" else c for c in columns)
        version = sql("SELECT version FROM oauth.config_state")[0][0]
        stand_in = "public.bench_constant_validate"
        for case, token in cases.items():
            progress(f"server-side oauth.validate() calls: {case}")
            args = f"'{token}', 'alice', 'postgres', '127.0.0.1', true, {version}"
            real = f"{select_list} FROM oauth.validate({args})"
            cur = conn.execute(f"SELECT * FROM oauth.validate({args})")
            row = _python_literal_row(cur.fetchone(), cur.description)
            if row.get("ok") is not True:
                raise RuntimeError(f"{case}: oauth.validate refused: {row.get('reason')} "
                                   f"{row.get('detail')}")
            sql(f"CREATE OR REPLACE FUNCTION {stand_in}({arguments}) RETURNS {result} "
                f"LANGUAGE plpython3u AS $body$\nreturn [{row!r}]\n$body$")
            fake = f"{select_list} FROM {stand_in}({args})"
            sql(f"SELECT {fake}")  # PL/Python is loaded in this session
            timings: dict[str, list[float]] = {"real": [], "constant": [], "empty": []}
            for _ in range(3):
                timings["real"].append(_do_loop(sql, real, plan.call_loops))
                timings["constant"].append(_do_loop(sql, fake, plan.call_loops))
                timings["empty"].append(_do_loop(sql, "1", plan.call_loops))
            empty = min(timings["empty"])
            out[case] = {k: (min(v) - empty) / plan.call_loops
                         for k, v in timings.items() if k != "empty"}
            sql(f"DROP FUNCTION {stand_in}")
    return out


def _median_call(conn: psycopg.Connection, query: str, args: tuple, loops: int,
                 gap: float) -> float:
    samples = []
    for _ in range(loops):
        started = time.perf_counter()
        conn.execute(query, args, prepare=True).fetchone()
        samples.append(time.perf_counter() - started)
        if gap:
            time.sleep(gap)
    return percentile(samples, 0.5)


def transaction_calls(tb: Testbed, token: str, plan: Plan,
                      progress: Progress) -> dict[str, float]:
    """The workers' query as its own transaction per call, from a client over the Unix
    socket (a trivial query's round trip subtracted): back to back, and 3 ms apart as
    logins arrive, when caches have gone cold in between."""
    assert tb.main is not None
    progress("oauth.validate() calls, one transaction each")
    target = Target.of(tb.main, "unix", ADMIN_USER, ADMIN_PASSWORD)
    with psycopg.connect(target.conninfo(), password=target.password,
                         autocommit=True) as conn:
        _, _, columns = _validate_function(
            lambda q, p=None: conn.execute(q, p).fetchall())
        select_list = ", ".join(f"{c}::text" if c == "claims" else c for c in columns)
        version = conn.execute("SELECT version FROM oauth.config_state").fetchone()[0]
        query = (f"SELECT {select_list} FROM oauth.validate(%s, 'alice', 'postgres', "
                 "'127.0.0.1', true, %s)")
        trivial = "SELECT %s::text, %s::bigint"
        args = (token, version)
        _median_call(conn, query, args, 20, 0)
        loops = min(plan.call_loops, 500)
        out = {}
        for name, gap in (("back_to_back", 0.0), ("spaced", 0.003)):
            out[name] = (_median_call(conn, query, args, loops, gap)
                         - _median_call(conn, trivial, args, loops, gap))
    return out


def in_process(tb: Testbed, cases: dict[str, str], plan: Plan) -> dict[str, Any]:
    """pyhook timed under the server's interpreter and installed packages."""
    assert tb.main is not None and tb.issuer is not None
    python_path = tb.main.sql("SHOW pg_oauth.python_path")[0][0]
    request = {"issuer": tb.issuer.issuer, "audience": AUDIENCE,
               "jwks": json.dumps(tb.issuer.jwks()), "loops": plan.call_loops,
               "tokens": cases}
    env = {**os.environ, "PYTHONPATH": python_path}
    proc = subprocess.run(
        [SERVER_PYTHON, str(Path(__file__).with_name("validate_timing.py"))],
        input=json.dumps(request), capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"validate_timing.py failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


_AUDIT_ELAPSED = re.compile(r"elapsed_ms=([0-9.]+)")
_AUDIT_QUEUE = re.compile(r"queue_ms=([0-9.]+)")
BREAKDOWN_METHODS = (TRUST, MD5_FLOOR, MD5, RS256)


def _audit_lines(tb: Testbed, offset: int) -> dict[str, dict[str, list[float]]]:
    """Seconds from the audit lines of successful logins, by transport: "elapsed" and
    "queue" of validated logins, "cached" elapsed of decision-cache hits."""
    assert tb.main is not None
    out: dict[str, dict[str, list[float]]] = {
        t: {"elapsed": [], "queue": [], "cached": []} for t in TRANSPORTS}
    with tb.main.logfile.open(errors="replace") as f:
        f.seek(offset)
        for line in f:
            if "pg_oauth audit:" not in line or "outcome=ok" not in line:
                continue
            transport = "unix" if "client=local" in line else "tcp+tls"
            hit = "cache=hit" in line
            for name, pattern in (("elapsed", _AUDIT_ELAPSED), ("queue", _AUDIT_QUEUE)):
                found = pattern.search(line)
                if found:
                    key = "cached" if hit and name == "elapsed" else name
                    if hit and name == "queue":
                        continue
                    out[transport][key].append(float(found.group(1)) / 1000)
    return out


def _worker_stats(tb: Testbed) -> dict[str, float] | None:
    """validation and queue-wait p50 from oauth.stats (None on a server without it)."""
    assert tb.main is not None
    try:
        rows = tb.main.sql("SELECT validation_p50_ms, queue_wait_p50_ms FROM oauth.stats "
                           "WHERE validation_p50_ms IS NOT NULL")
    except psycopg.Error:
        return None
    if not rows:
        return None
    return {"validation": float(rows[0][0]) / 1000, "queue": float(rows[0][1] or 0) / 1000}


def _reset_stats(tb: Testbed) -> None:
    assert tb.main is not None
    with contextlib.suppress(psycopg.Error):
        tb.main.sql("SELECT oauth.stats_reset()")


def breakdown(tb: Testbed, plan: Plan, progress: Progress) -> list[Table]:
    cases = {m.name: tb.tokens[str(m.alg)] for m in JWT_METHODS}
    cases["JWT RS256, 8 KB"] = tb.mint_sized(8192)
    calls = server_calls(tb, cases, plan, progress)
    txn = transaction_calls(tb, cases[RS256.name], plan, progress)
    progress("pyhook in-process timing")
    local = in_process(tb, cases, plan)

    per_case = Table(
        f"pyhook and the worker's SQL call, µs per token (best of 3 × {plan.call_loops} "
        "calls)",
        ["token", "bytes", "validate() in-process", "of which signature verify",
         "decision_row()", "validate() in-process, 3 ms after the last call",
         "worker query on oauth.validate()",
         "same query on a constant PL/Python stand-in"])
    for case, token in cases.items():
        r = local["results"][case]
        per_case.add(case, len(token), f"{r['validate']:.0f}", f"{r['verify']:.0f}",
                     f"{r['decision_row']:.0f}", f"{r['validate_after_pause']:.0f}",
                     f"{calls[case]['real'] * 1e6:.0f}",
                     f"{calls[case]['constant'] * 1e6:.0f}")
    per_case.notes.append(
        f"in-process: {SERVER_PYTHON} (Python {local['python']}) with the installed "
        "pg_oauth.python_path, static JWKS, timeit best of 5. '3 ms after': the median "
        "of single calls each made 3 ms after the previous one, as logins arrive from one "
        "client (an empty call timed the same way: "
        f"{local['empty_after_pause']:.0f} µs). Server: a DO loop in a "
        "backend running the workers' query; an empty loop is subtracted.")

    # Client-loop latencies of the four logins the breakdown subtracts, taking turns;
    # a fresh token for every JWT login (pg_oauth as shipped).
    tb.use_default_settings()
    assert tb.main is not None
    _reset_stats(tb)
    offset = tb.main.logfile.stat().st_size
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    n = plan.latency_logins
    cached = RS256_CACHED in tb.methods
    methods = BREAKDOWN_METHODS + ((RS256_CACHED,) if cached else ())
    for r in range(plan.rounds):
        progress(f"time breakdown: round {r + 1}/{plan.rounds}")
        for transport in TRANSPORTS:
            logins = [Login(m.name, tb.target(m, transport),
                            tb.fresh_tokens("RS256", n) if m is RS256 else None)
                      for m in turn_order(methods, r)]
            for name, values in interleaved_latencies(logins, n).items():
                samples[(transport, name)] += values
    time.sleep(0.3)  # the last audit lines reach the log
    audit = _audit_lines(tb, offset)
    stats = _worker_stats(tb)

    real = calls[RS256.name]["real"]
    stand_in = calls[RS256.name]["constant"]
    r = local["results"][RS256.name]
    table = Table(
        "Where a JWT RS256 login's time goes (1 client, p50 ms, a fresh token per login: "
        "each validated by a worker)",
        ["part", *TRANSPORTS, "measured by"])
    column: dict[str, dict[str, float | None]] = {}
    for transport in TRANSPORTS:
        p50 = {m.name: percentile(samples[(transport, m.name)], 0.5)
               for m in BREAKDOWN_METHODS}
        trust, md5_floor, md5, jwt = (p50[m.name] for m in BREAKDOWN_METHODS)
        lines = audit[transport]
        queue = percentile(lines["queue"], 0.5) if lines["queue"] else None
        elapsed = percentile(lines["elapsed"], 0.5) if lines["elapsed"] else None
        validation = stats["validation"] if stats else None
        round_trip = md5_floor - trust
        in_hook = None
        if None not in (elapsed, queue, validation):
            in_hook = elapsed - round_trip - queue - validation  # type: ignore[operator]
        hit = percentile(samples[(transport, RS256_CACHED.name)], 0.5) if cached else None
        hit_hook = percentile(lines["cached"], 0.5) if lines["cached"] else None
        column[transport] = {
            "hit": hit, "hit_added": None if hit is None else hit - trust,
            "hit_hook": hit_hook,
            "hit_after": None if hit is None or hit_hook is None else hit - trust - hit_hook,
            "trust": trust, "md5_floor": md5_floor, "md5": md5, "jwt": jwt,
            "added": jwt - trust, "round_trip": round_trip, "library": md5 - md5_floor,
            "elapsed": elapsed, "queue": queue, "validation": validation,
            "in_hook": in_hook, "after": None if elapsed is None else jwt - trust - elapsed,
        }

    def row(label: str, key: str | None, how: str, value: float | None = None,
            bold: bool = False) -> None:
        cells = []
        for transport in TRANSPORTS:
            v = value if key is None else column[transport][key]
            text = "n/a" if v is None else f"{v * 1000:.2f}"
            cells.append(f"**{text}**" if bold else text)
        table.add(label, *cells, how)

    row("login: trust, no library (floor)", "trust", "client loop")
    row("login: md5, no library", "md5_floor", "client loop")
    row("login: md5, pg_oauth loaded", "md5", "client loop")
    row("login: JWT RS256", "jwt", "client loop")
    row("(pg_oauth loaded, for any login)", "library", "md5 − md5 without library")
    row("**added by the token login**", "added", "JWT − trust", bold=True)
    row("├ in the hook, until the decision", "elapsed", "audit line elapsed_ms")
    row("│ ├ password request + answer round trip", "round_trip",
        "md5 − trust, no library")
    row("│ ├ hand-off to a worker: queue wait and wake-up", "queue", "audit line queue_ms")
    row("│ ├ validation in the worker", "validation", "oauth.stats validation_p50")
    row("│ │ ├ SPI + PL/Python call + result row", None, "constant stand-in, DO loop",
        stand_in)
    row("│ │ ├ pyhook: adapter, validate, result row", None,
        "oauth.validate() − stand-in, DO loop", real - stand_in)
    row("│ │ │ ├ validator.validate()", None, "in-process timeit", r["validate"] / 1e6)
    row("│ │ │ │ └ signature verification", None, "in-process timeit", r["verify"] / 1e6)
    row("│ │ │ └ decision_row()", None, "in-process timeit", r["decision_row"] / 1e6)
    row("│ │ ├ a transaction per call", None, "client calls back to back − DO loop",
        txn["back_to_back"] - real)
    row("│ │ ├ caches gone cold between logins", None,
        "client calls 3 ms apart − back to back", txn["spaced"] - txn["back_to_back"])
    row("│ │ │ └ for scale: validator.validate() alone, 3 ms after the last call", None,
        "in-process, median", r["validate_after_pause"] / 1e6)
    row("│ │ └ rest of the worker", None, "validation − calls 3 ms apart",
        stats["validation"] - txn["spaced"] if stats else None)
    row("│ └ rest of the hook: token read, checks, decision cache, audit record", "in_hook",
        "remainder")
    row("└ outside the hook's clock: audit line, session registration, claims", "after",
        "JWT − trust − hook")
    if cached:
        row("login: JWT RS256, decision cache hit (no worker)", "hit", "client loop")
        row("**added by a decision-cache hit**", "hit_added", "cache hit − trust",
            bold=True)
        row("├ in the hook, until the decision (incl. the round trip)", "hit_hook",
            "audit line elapsed_ms, cache=hit")
        row("└ outside the hook's clock", "hit_after", "cache hit − trust − hook")
    table.notes.append(
        f"{plan.rounds} rounds × {n} logins per method and transport, the methods taking "
        "turns login by login. p50 differences carry the run's noise; the remainders "
        "take it all.")
    if stats:
        table.notes.append(
            "oauth.stats percentiles are histogram bucket lower bounds (up to 25 % low).")
    return [table, per_case]
