"""Throwaway connection poolers in front of a tests/pgcluster.py Cluster: Debian's PgBouncer
and pgpool-II, for tests and benchmarks.

Each runs in the foreground as the server's unprivileged OS user (SERVER_USER) from a
temporary directory of its own (configuration, user list, certificate, log), listens on
127.0.0.1 on a free port, and reaches the cluster over its Unix socket: pg_oauth refuses
oauth.authenticate() on unencrypted TCP (pg_oauth.require_ssl).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from pgcluster import SERVER_USER, Cluster, free_port

SEARCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
Sections = dict[str, dict[str, str]]


def binary(name: str) -> str | None:
    """Where Debian installs the pooler (None: not installed)."""
    return shutil.which(name, path=SEARCH_PATH)


def version(program: str) -> tuple[int, ...]:
    """The version the program reports: (1, 18, 0) for PgBouncer 1.18.0."""
    proc = subprocess.run([program, "--version"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    out = proc.stdout + proc.stderr  # pgpool-II writes it to stderr
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if match is None:
        raise RuntimeError(f"{program} --version: {out!r}")
    return tuple(int(g) for g in match.groups() if g is not None)


def _account() -> pwd.struct_passwd | None:
    return pwd.getpwnam(SERVER_USER) if os.geteuid() == 0 else None


class Pooler:
    """What both poolers share: a private directory, a process, its log, its port."""

    program = ""

    def __init__(self, cluster: Cluster) -> None:
        found = binary(self.program)
        if found is None:
            raise RuntimeError(f"{self.program} is not installed (scripts/install-deps.sh)")
        self.binary = found
        self.version = version(found)
        self.cluster = cluster
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"pg_oauth-{self.program}-"))
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, name: str, text: str) -> Path:
        """A file of the pooler's own, readable by it alone."""
        path = self.dir / name
        path.write_text(text)
        os.chmod(path, 0o600)
        account = _account()
        if account:
            os.chown(path, account.pw_uid, account.pw_gid)
        return path

    def copy_certificate(self) -> tuple[Path, Path]:
        """The cluster's self-signed certificate (for 127.0.0.1), for TLS from clients."""
        return (self.write("server.crt", (self.cluster.base / "server.crt").read_text()),
                self.write("server.key", (self.cluster.base / "server.key").read_text()))

    def command(self) -> list[str]:
        raise NotImplementedError

    def launch(self, argv: list[str], as_server_user: bool = True) -> subprocess.Popen[bytes]:
        """argv (as SERVER_USER unless told), its output into the pooler's log."""
        account = _account() if as_server_user else None
        kwargs: dict = ({"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
                        if account else {})
        out = open(self.dir / "pooler.log", "ab")  # noqa: SIM115 - the child has its own
        try:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.dir, **kwargs)
        finally:
            out.close()

    def start(self) -> Pooler:
        os.chmod(self.dir, 0o700)
        account = _account()
        if account:
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self.process = self.launch(self.command(), as_server_user=not self.drops_privileges())
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.program} exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.program} did not listen: {self.log()}")

    def drops_privileges(self) -> bool:
        """Whether command() itself becomes SERVER_USER (else launch() makes it so)."""
        return False

    def log(self) -> str:
        """What the pooler wrote (its log goes to stderr)."""
        path = self.dir / "pooler.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dsn(self, user: str, dbname: str = "postgres", sslmode: str = "require") -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} "
                f"sslmode={sslmode} connect_timeout=20")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def ini_text(sections: Sections) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
                   for name, values in sections.items())


class PgBouncer(Pooler):
    """PgBouncer with the given [pgbouncer] settings over these defaults: the cluster's
    ``databases`` over its socket, client TLS with the cluster's certificate, listening on
    127.0.0.1 only; ``userlist``: the text of its auth_file.

    ``pam_service``: the text of /etc/pam.d/pgbouncer for auth_type = pam (PgBouncer's PAM
    service name is fixed). The host's /etc/pam.d is left alone: PgBouncer runs in a mount
    namespace of its own where a copy of it, with this file added, is mounted over it."""

    program = "pgbouncer"

    def __init__(self, cluster: Cluster, settings: dict[str, str] | None = None,
                 userlist: str = "",
                 databases: list[str] = ("postgres",), pam_service: str | None = None) -> None:
        super().__init__(cluster)
        self.settings = settings or {}
        self.userlist = userlist
        self.databases = list(databases)
        self.pam_service = pam_service

    def config(self) -> Sections:
        cert, key = self.copy_certificate()
        userlist = self.write("userlist.txt", self.userlist)
        pgbouncer = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_file": str(userlist),
            "pidfile": "",
            "client_tls_sslmode": "require",
            "client_tls_cert_file": str(cert),
            "client_tls_key_file": str(key),
            "admin_users": "",
            **self.settings,
        }
        return {
            "databases": {db: f"host={self.cluster.sockdir} port={self.cluster.port} dbname={db}"
                          for db in self.databases},
            "pgbouncer": pgbouncer,
        }

    def command(self) -> list[str]:
        ini = self.write("pgbouncer.ini", ini_text(self.config()))
        if self.pam_service is None:
            return [self.binary, str(ini)]
        pam_dir = self.dir / "pam.d"
        shutil.copytree("/etc/pam.d", pam_dir, symlinks=True)
        (pam_dir / "pgbouncer").write_text(self.pam_service)
        account = _account()
        if account is None:
            raise RuntimeError("a PAM service of its own needs root (a mount namespace)")
        # setpriv, not runuser: runuser would itself read the mounted PAM configuration
        script = ('mount --bind "$1" /etc/pam.d; shift; '
                  'exec setpriv --reuid="$1" --regid="$2" --clear-groups "$3" "$4"')
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script,
                "sh", str(pam_dir), str(account.pw_uid), str(account.pw_gid), self.binary,
                str(ini)]

    def drops_privileges(self) -> bool:
        # with a PAM service: unshare and mount as root, then setpriv
        return self.pam_service is not None


def mount_namespaces_work() -> str | None:
    """None when this process can give a child a mount namespace of its own (what
    PgBouncer's PAM service needs here), else why not."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh",
                            "-c", "mount --bind /tmp /mnt"], capture_output=True, text=True,
                           check=False)  # fmt: skip
    if probe.returncode != 0:
        return f"no mount namespace here: {probe.stderr.strip()}"
    return None


class Pgpool(Pooler):
    """pgpool-II in raw mode with the cluster as its one backend (over its Unix socket),
    the given pgpool.conf settings over these defaults; no health checks, no watchdog,
    no load balancing, client TLS with the cluster's certificate."""

    program = "pgpool"

    def __init__(self, cluster: Cluster, settings: dict[str, str] | None = None,
                 pool_passwd: list[tuple[str, str]] | None = None) -> None:
        super().__init__(cluster)
        self.settings = settings or {}
        self.pool_passwd = pool_passwd or []

    def config(self) -> dict[str, str]:
        cert, key = self.copy_certificate()
        passwd = self.write("pool_passwd", "".join(
            f"{user}:TEXT{password}\n" for user, password in self.pool_passwd))
        for sub in ("run", "log"):
            (self.dir / sub).mkdir(exist_ok=True)
            account = _account()
            if account:
                os.chown(self.dir / sub, account.pw_uid, account.pw_gid)
        return {
            "backend_clustering_mode": "'raw'",
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            # renamed in pgpool-II 4.4
            ("socket_dir" if self.version < (4, 4) else "unix_socket_directories"):
                f"'{self.dir / 'run'}'",
            "pcp_listen_addresses": "''",
            "pcp_port": str(free_port()),
            "pcp_socket_dir": f"'{self.dir / 'run'}'",
            "pid_file_name": f"'{self.dir / 'run' / 'pgpool.pid'}'",
            "logdir": f"'{self.dir / 'log'}'",
            "log_destination": "'stderr'",
            "backend_hostname0": f"'{self.cluster.sockdir}'",
            "backend_port0": str(self.cluster.port),
            "backend_weight0": "1",
            "backend_flag0": "'DISALLOW_TO_FAILOVER'",
            "health_check_period": "0",
            "sr_check_period": "0",
            "use_watchdog": "off",
            "load_balance_mode": "off",
            "failover_on_backend_error": "off",
            "memory_cache_enabled": "off",
            "enable_shared_relcache": "off",
            "enable_pool_hba": "off",
            "pool_passwd": f"'{passwd}'",
            "ssl": "on",
            "ssl_cert": f"'{cert}'",
            "ssl_key": f"'{key}'",
            "num_init_children": "4",
            "max_pool": "1",
            "reserved_connections": "0",
            **self.settings,
        }

    def command(self) -> list[str]:
        conf = self.write("pgpool.conf", "".join(
            f"{k} = {v}\n" for k, v in self.config().items()))
        pcp = self.write("pcp.conf", "")
        hba = self.write("pool_hba.conf", "")
        return [self.binary, "-n", "-f", str(conf), "-F", str(pcp), "-a", str(hba)]
