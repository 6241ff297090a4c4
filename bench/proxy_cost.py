"""What a proxy in the data path would cost: pgbench -S direct vs through pgbouncer,
on the same server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from login_loop import median
from pgbench_runner import Pgbench
from pgcluster import SERVER_USER, Cluster, free_port
from plan import Plan
from report import Table, ratio
from testbed import SCRAM_USER, USER_PASSWORD, Target, tool_path

Progress = Callable[[str], None]
DBNAME = "bench"


class Pgbouncer:
    """pgbouncer in the foreground as the server's OS user, pooling (transaction mode)
    to the cluster over its Unix socket."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg_oauth-bench-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Pgbouncer:
        ini = self.dir / "pgbouncer.ini"
        users = self.dir / "userlist.txt"
        users.write_text(f'"{SCRAM_USER}" "{USER_PASSWORD}"\n')
        ini.write_text(f"""\
[databases]
{DBNAME} = host={self.cluster.sockdir} port={self.cluster.port} dbname={DBNAME}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = plain
auth_file = {users}
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
logfile = {self.dir / "pgbouncer.log"}
""")
        account = pwd.getpwnam(SERVER_USER) if os.geteuid() == 0 else None
        for path in (self.dir, ini, users):
            os.chmod(path, 0o700 if path == self.dir else 0o600)
            if account:
                os.chown(path, account.pw_uid, account.pw_gid)
        kwargs = ({"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
                  if account else {})
        self.process = subprocess.Popen(
            [tool_path("pgbouncer"), str(ini)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **kwargs)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen: {self.log()}")

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


def proxy_cost(cluster: Cluster, pgbench: Pgbench, plan: Plan, progress: Progress,
               register_cleanup: Callable[[Callable[[], None]], None]) -> Table:
    progress(f"proxy cost: pgbench -i -s {plan.proxy_scale}")
    cluster.sql(f"CREATE DATABASE {DBNAME} OWNER {SCRAM_USER}")
    direct = Target("127.0.0.1", cluster.port, SCRAM_USER, "disable", USER_PASSWORD, DBNAME)
    pgbench.initialise(direct, plan.proxy_scale)
    bouncer = Pgbouncer(cluster)
    register_cleanup(bouncer.stop)
    bouncer.start()
    proxied = Target("127.0.0.1", bouncer.port, SCRAM_USER, "disable", USER_PASSWORD, DBNAME)
    paths = {"direct": direct, "through pgbouncer": proxied}
    tps: dict[str, list[float]] = defaultdict(list)
    latency: dict[str, list[float]] = defaultdict(list)
    try:
        for r in range(plan.rounds):
            progress(f"proxy cost: round {r + 1}/{plan.rounds}")
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                result = pgbench.run(paths[name], 4, plan.proxy_seconds,
                                     connect_each=False, builtin="select-only", threads=2)
                tps[name].append(result.tps)
                if result.latency_ms is not None:
                    latency[name].append(result.latency_ms)
    finally:
        bouncer.stop()

    table = Table(
        f"What a proxy would cost: pgbench -S -c 4 -j 2 (scale {plan.proxy_scale}), "
        f"median of {plan.rounds} rounds × {plan.proxy_seconds} s",
        ["path", "transactions/s", "min–max", "latency avg ms", "vs direct"])
    base = median(tps["direct"])
    for name in paths:
        value = median(tps[name])
        table.add(name, f"{value:.0f}", f"{min(tps[name]):.0f}–{max(tps[name]):.0f}",
                  f"{median(latency[name]):.3f}" if latency[name] else "",
                  ratio(value / base))
    table.notes.append(
        "TCP on 127.0.0.1 without TLS for the client in both paths; pgbouncer (transaction "
        "pooling, 4 server connections) reaches the server over its Unix socket. "
        "pg_oauth itself adds nothing here: it only acts at login.")
    return table
