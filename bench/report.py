"""Markdown tables, target verdicts and the machine's description."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field

MET = "✔"
MISSED = "✘"


def verdict(ok: bool) -> str:
    return MET if ok else MISSED


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = [f"### {self.title}", "",
                 "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class Goal:
    """One target of the issue and whether this run met it."""

    name: str
    measured: str
    met: bool


def goals_table(goals: list[Goal]) -> Table:
    table = Table("Targets", ["target", "measured", ""])
    for t in goals:
        table.add(t.name, t.measured, verdict(t.met))
    return table


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def ratio(value: float) -> str:
    return f"{value:.2f}×"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _version(*cmd: str) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return out.splitlines()[0].strip() if out else "unknown"


def machine_description(server_version: str, pgbench: str, pgbouncer: str | None) -> list[str]:
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"CPUs: {os.cpu_count()} × {_cpu_model()}",
        f"memory: {_memory()}",
        f"kernel: {platform.system()} {platform.release()}",
        f"server: {server_version}",
        (f"client: {_version(pgbench, '--version')}; psycopg over libpq "
         f"{_libpq_version()}; Python {platform.python_version()}"),
        f"proxy: {_version(pgbouncer, '--version') if pgbouncer else 'pgbouncer not found'}",
    ]


def _libpq_version() -> str:
    import psycopg

    v = psycopg.pq.version()
    return f"{v // 10000}.{v % 10000}"
