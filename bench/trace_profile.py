"""Phase by phase: where a token login's time goes, from a TRACE build's own clocks.

Needs the extension built with tracing (it logs one line per login, so it is never
the shipped build):

    make clean install TRACE=1
    .venv/bin/python bench/trace_profile.py [--logins 300] [--transport unix]
    make clean install            # back to the normal build

Starts the bench's clusters and dev issuer, takes turns between a trust login, a
token login with a fresh token (validated by a worker) and one with the same token
again (decision cache), and prints the median of every phase as a markdown table.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent), str(BENCH.parent / "tests")]

from login_loop import one_login, percentile
from testbed import RS256, TRANSPORTS, TRUST, Testbed

TRACE_LINE = re.compile(r"pg_oauth trace: path=(\w+) (.*)")
FIELD = re.compile(r"(\w+)=(-?\d+)")

# what each field of the trace line covers, in the order of a login
PHASES = {
    "read": "password request, the client's answer, token read",
    "hash": "SHA-256 of the token (decision cache key)",
    "submit": "take a queue slot, copy the token, wake a worker",
    "worker_wakeup": "until the worker runs and takes the request",
    "worker_prepare": "worker: arguments out of shared memory",
    "txn_start": "worker: start transaction, SPI, snapshot",
    "call": "worker: SELECT … FROM oauth.validate() (PL/Python, pyhook), result copied",
    "commit": "worker: commit",
    "hand_back": "worker: mark the slot done",
    "backend_wakeup": "until the backend runs again and sees the answer",
    "checks": "backend: role checks, session registry, decision cache",
    "admission": "backend: audit record and counters' arguments kept for admission.c "
                 "(the audit line, ring record and oauth.stats counters are written "
                 "after PostgreSQL admits the session, outside these phases)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=300, help="per kind of login")
    parser.add_argument("--transport", choices=TRANSPORTS, default="unix")
    parser.add_argument(
        "--compare", metavar="NAME=A,B",
        help="a pg_oauth setting and two values taken in turns, 25 rounds each, in "
             "the same run: one table per value (e.g. pg_oauth.worker_prewarm=on,off)")
    args = parser.parse_args()
    setting, values = None, [None]
    if args.compare:
        setting, _, listed = args.compare.partition("=")
        values = listed.split(",")
        if len(values) != 2 or not setting.startswith("pg_oauth."):
            parser.error("--compare takes pg_oauth.NAME=A,B")

    tb = Testbed(4 * 3600).start()
    latency: dict[object, dict[str, list[float]]] = {
        v: {"trust": [], "worker": [], "cache": []} for v in values}
    texts: dict[object, list[str]] = {v: [] for v in values}
    try:
        tb.use_default_settings()
        assert tb.main is not None
        if setting is not None and setting not in tb.settings:
            raise SystemExit(f"the server has no setting {setting}")
        same = tb.tokens["RS256"]
        fresh = iter(tb.fresh_tokens("RS256", args.logins * len(values)))
        trust = tb.target(TRUST, args.transport)
        token = tb.target(RS256, args.transport)
        block = 25 if setting is not None else args.logins
        done = 0
        while done < args.logins:
            for value in values:
                if setting is not None:
                    tb.configure({setting: value})
                for _ in range(30 if done == 0 else 5):  # warm-up: workers, caches
                    one_login(token, same)
                    one_login(trust, None)
                offset = tb.main.logfile.stat().st_size
                for _ in range(min(block, args.logins - done)):
                    latency[value]["trust"].append(one_login(trust, None))
                    latency[value]["worker"].append(one_login(token, next(fresh)))
                    latency[value]["cache"].append(one_login(token, same))
                time.sleep(0.2)
                with tb.main.logfile.open(errors="replace") as f:
                    f.seek(offset)
                    texts[value].append(f.read())
            done += block
    finally:
        tb.close()

    for value in values:
        if setting is not None:
            print(f"## {setting} = {value}\n")
        if not report("".join(texts[value]), latency[value], args):
            return 1
    return 0


def report(text: str, latency: dict[str, list[float]], args: argparse.Namespace) -> bool:
    phases: dict[str, dict[str, list[int]]] = {"worker": {}, "cache": {}}
    for path, fields in TRACE_LINE.findall(text):
        for name, value in FIELD.findall(fields):
            phases[path].setdefault(name, []).append(int(value))
    if not phases["worker"]:
        print("no 'pg_oauth trace:' lines in the server log: install a trace build "
              "first (make clean install TRACE=1)", file=sys.stderr)
        return False

    def p50(values: list[int] | None) -> str:
        return "" if not values else f"{percentile(values, 0.5):.0f}"

    print(f"### Token login phases, {args.transport}, 1 client, µs (median of "
          f"{len(latency['worker'])} logins each)\n")
    print("| phase | what | fresh token (worker) | same token (decision cache) |")
    print("|---|---|---|---|")
    for name, what in PHASES.items():
        print(f"| {name} | {what} | {p50(phases['worker'].get(name))} | "
              f"{p50(phases['cache'].get(name)) or '—'} |")
    for path in ("worker", "cache"):
        totals = [sum(v) for v in zip(*phases[path].values())]
        phases[path]["sum"] = totals
    print(f"| **in the hook** | median of the per-login sums | "
          f"**{p50(phases['worker']['sum'])}** | **{p50(phases['cache']['sum'])}** |")
    print()
    base = percentile(latency["trust"], 0.5)
    print("| login (client loop) | p50 ms | over trust ms |")
    print("|---|---|---|")
    for kind, label in (("trust", "trust (no library)"), ("worker", "fresh token"),
                        ("cache", "same token again")):
        value = percentile(latency[kind], 0.5)
        print(f"| {label} | {value * 1000:.2f} | {(value - base) * 1000:+.2f} |")
    print()
    return True


if __name__ == "__main__":
    sys.exit(main())
