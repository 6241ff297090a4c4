"""pg_oauth login benchmarks (issue 5): `make bench`, or `.venv/bin/python bench/run.py`.

Starts its own clusters and dev issuer, alternates rounds between the methods it
compares, prints markdown tables and writes them to bench/RESULTS.md with the machine's
description. Nothing here asserts: targets missed are shown as ✘.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent), str(BENCH.parent / "tests")]

from bearer import bearer
from flood import bad_token_flood
from login_speed import (
    Counted,
    NetworkMark,
    login_latency,
    login_rate,
    steady_state_network,
    token_size,
    warm_up,
)
from pgbench_runner import Pgbench
from plan import DEFAULT, QUICK, Plan
from pooler import pooler
from proxy_cost import proxy_cost
from report import (
    Goal,
    Table,
    goals_table,
    load_average,
    machine_description,
)
from resilience import cold_start, slow_issuer, unknown_kid_storm
from scale import rls, scale
from testbed import Testbed, tool_path
from time_breakdown import breakdown, cpu_per_login

TOKEN_LIFETIME = 4 * 3600  # pgbench -C sends one token for the whole run
Progress = Callable[[str], None]


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


SECTIONS = ("rate", "latency", "size", "storm", "slow", "flood", "cold", "proxy", "cpu",
            "breakdown", "scale", "rls", "bearer", "pooler")


def run(plan: Plan, sections: set[str],
        progress: Progress) -> tuple[list[Goal], list[Table], list[str]]:
    goals: list[Goal] = []
    tables: list[Table] = []
    with contextlib.ExitStack() as stack:
        progress("starting the clusters and the dev issuer")
        testbed = Testbed(TOKEN_LIFETIME)
        stack.callback(testbed.close)
        testbed.start()
        assert testbed.main is not None
        pgbench = Pgbench()
        stack.callback(pgbench.close)
        try:
            pgbouncer: str | None = tool_path("pgbouncer")
        except RuntimeError:
            pgbouncer = None
        machine = machine_description(str(testbed.main.sql("SELECT version()")[0][0]),
                                      pgbench.binary, pgbouncer)
        machine.append(f"load average at start: {load_average()}")

        count = Counted()
        progress("warm-up")
        warm_up(testbed, count)
        count.logins = 0
        network_before = NetworkMark.now(testbed)
        if "rate" in sections:
            tables.append(login_rate(testbed, pgbench, plan, count, goals, progress))
        if "latency" in sections:
            tables.append(login_latency(testbed, plan, count, goals, progress))
        if "size" in sections:
            tables.append(token_size(testbed, pgbench, plan, count, goals, progress))
        if count.logins:
            tables.append(steady_state_network(testbed, network_before, count, goals))
        if "storm" in sections:
            tables.append(unknown_kid_storm(testbed, plan, goals, progress))
        if "slow" in sections:
            tables.append(slow_issuer(testbed, plan, goals, progress))
        if "flood" in sections:
            tables.append(bad_token_flood(testbed, plan, goals, progress))
        if "cold" in sections:
            tables.append(cold_start(testbed, plan, progress))
        if "proxy" in sections and pgbouncer is not None:
            tables.append(proxy_cost(testbed.main, pgbench, plan, progress, stack.callback))
        elif "proxy" in sections:
            tables.append(Table("What a proxy would cost", ["skipped"],
                                [["pgbouncer is not installed (scripts/install-deps.sh)"]]))
        if "cpu" in sections:
            tables.append(cpu_per_login(testbed, pgbench, plan, progress))
        if "breakdown" in sections:
            tables += breakdown(testbed, plan, progress)
        if "scale" in sections:
            tables += scale(testbed, plan, goals, progress)
        if "rls" in sections:
            tables.append(rls(testbed, plan, goals, progress))
        if "bearer" in sections:
            tables.extend(bearer(testbed, plan, progress))
        if "pooler" in sections and pgbouncer is not None:
            tables += pooler(testbed, pgbench, plan, goals, progress, stack.callback)
        elif "pooler" in sections:
            tables.append(Table("Behind PgBouncer", ["skipped"],
                                [["pgbouncer is not installed (scripts/install-deps.sh)"]]))
        machine.append(f"load average at end: {load_average()}")
        progress("stopping the clusters")
    return goals, tables, machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a ~2-minute smoke run (fewer rounds, shorter runs)")
    parser.add_argument("--only", metavar="SECTION[,SECTION]",
                        help=f"run only these sections: {', '.join(SECTIONS)}")
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md",
                        help="where to write the markdown results (default: %(default)s)")
    args = parser.parse_args(argv)
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    if sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(sections - set(SECTIONS)))}")
    plan = QUICK if args.quick else DEFAULT
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {message}", file=sys.stderr, flush=True)

    try:
        goals, tables, machine = run(plan, sections, progress)
    except KeyboardInterrupt:
        print("interrupted; clusters and processes removed", file=sys.stderr)
        return 130
    minutes = (time.monotonic() - started) / 60
    text = "\n".join([
        "# pg_oauth login benchmarks",
        "",
        (f"`bench/run.py{' '.join(['', *(argv or sys.argv[1:])])}` ({plan.name} run, "
         f"{minutes:.1f} min). Figures are medians of alternating rounds; every number "
         "below was measured in this run."),
        "",
        *[f"- {line}" for line in machine],
        "",
        goals_table(goals).markdown() if goals else "",
        *[table.markdown() for table in tables],
    ])
    print(text)
    args.output.write_text(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
