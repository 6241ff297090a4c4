"""Run pgbench against a Target and read its PostgreSQL 15 report.

With ``-C`` every transaction opens a new connection, and pgbench 15 reports
``tps = N (including reconnection times)``: that figure is the login rate. Without
``-C`` it reports ``tps = N (without initial connection time)``. Both are parsed.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed import Target, tool_path

SELECT_1 = "SELECT 1;\n"

_TPS = re.compile(r"^tps = ([0-9.]+) \((including reconnection times|"
                  r"without initial connection time)\)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_CONNECTION = re.compile(r"^average connection time = ([0-9.]+) ms", re.MULTILINE)


@dataclass(frozen=True)
class PgbenchResult:
    tps: float
    tps_kind: str  # "including reconnection times" or "without initial connection time"
    transactions: int
    latency_ms: float | None
    connection_ms: float | None


class PgbenchError(RuntimeError):
    pass


def parse_report(text: str) -> PgbenchResult:
    tps = _TPS.search(text)
    processed = _PROCESSED.search(text)
    if tps is None or processed is None:
        raise PgbenchError(f"no tps in pgbench output:\n{text}")
    latency = _LATENCY.search(text)
    connection = _CONNECTION.search(text)
    return PgbenchResult(
        tps=float(tps.group(1)),
        tps_kind=tps.group(2),
        transactions=int(processed.group(1)),
        latency_ms=float(latency.group(1)) if latency else None,
        connection_ms=float(connection.group(1)) if connection else None,
    )


class Pgbench:
    def __init__(self) -> None:
        self.binary = tool_path("pgbench")
        self._dir = tempfile.mkdtemp(prefix="pg_oauth-bench-scripts-")
        self.select_1 = Path(self._dir, "select1.sql")
        self.select_1.write_text(SELECT_1)

    def close(self) -> None:
        self.select_1.unlink(missing_ok=True)
        os.rmdir(self._dir)

    def run(self, target: Target, clients: int, seconds: float, *, connect_each: bool,
            builtin: str | None = None, threads: int | None = None) -> PgbenchResult:
        """One timed run; ``connect_each`` is -C (a login per transaction)."""
        args = [self.binary, "-n", "-c", str(clients), "-j", str(threads or clients),
                "-T", str(max(1, round(seconds)))]
        if connect_each:
            args.append("-C")
        args += ["-b", builtin] if builtin else ["-f", str(self.select_1)]
        return self._run(args, target)

    def run_script(self, target: Target, clients: int, seconds: float, script: Path, *,
                   variables: dict[str, str], threads: int | None = None) -> PgbenchResult:
        """One timed run of a script of our own over open connections, with bind
        parameters (-M extended: unnamed statements) for the variables (-D)."""
        args = [self.binary, "-n", "-M", "extended", "-c", str(clients),
                "-j", str(threads or clients), "-T", str(max(1, round(seconds))),
                "-f", str(script)]
        for name, value in variables.items():
            args += ["-D", f"{name}={value}"]
        return self._run(args, target)

    def initialise(self, target: Target, scale: int) -> None:
        args = [self.binary, "-i", "-q", "-s", str(scale), "--unlogged-tables"]
        proc = subprocess.run(args, env=self._env(target), capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise PgbenchError(f"pgbench -i failed:\n{proc.stderr}")

    def _run(self, args: list[str], target: Target) -> PgbenchResult:
        proc = subprocess.run(args, env=self._env(target), capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            # e.g. a login refused: a benchmark of failing logins would be meaningless
            raise PgbenchError(
                f"pgbench exited {proc.returncode} for {target.conninfo()}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return parse_report(proc.stdout)

    @staticmethod
    def _env(target: Target) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(target.libpq_env())
        return env
