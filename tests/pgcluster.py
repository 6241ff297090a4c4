"""A throwaway PostgreSQL cluster with pg_oauth preloaded, for tests, demo and bench.

The server is Debian's PostgreSQL 15, or the major whose binaries PG_BIN names
(`make PG=18 test` runs the suite in a Debian root where it is /usr/lib/postgresql/18/bin).

The server runs as an unprivileged OS user (PostgreSQL refuses root): when this
process is root, every server command goes through `runuser -u pgoauth`.
"""

from __future__ import annotations

import datetime
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

DEBIAN_PG15_BIN = Path("/usr/lib/postgresql/15/bin")
PG_BIN = Path(os.environ.get("PG_BIN", str(DEBIAN_PG15_BIN)))
SERVER_USER = os.environ.get("PG_OAUTH_SERVER_USER", "pgoauth")
ADMIN_USER = "postgres"
ADMIN_PASSWORD = "admin-break-glass"


def pg_config(option: str, bindir: Path | None = None) -> str:
    """What the pg_config of PG_BIN (or of bindir) says of option (--libdir, ...)."""
    return subprocess.run([str((bindir or PG_BIN) / "pg_config"), option],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def server_major() -> int:
    """The major version of the server PG_BIN holds (15, 18...)."""
    out = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    match = re.search(r"\)\s*(\d+)", out)
    assert match, out
    return int(match.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *cmd]
    return cmd


def _make_tls_files(directory: Path) -> None:
    """A self-signed server certificate for 127.0.0.1/localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(directory / "server.key", 0o600)


DEFAULT_HBA = """\
# break-glass admin access: a real password, never a token
local   all   {admin}                 scram-sha-256
host    all   {admin}  127.0.0.1/32   scram-sha-256
host    all   scram_user 127.0.0.1/32 scram-sha-256
host    all   md5_user 127.0.0.1/32   md5
host    replication {admin} 127.0.0.1/32 scram-sha-256
# token logins (pg_oauth hooks every trust line)
hostssl all   all      127.0.0.1/32   trust
hostssl all   all      ::1/128        trust
host    all   all      127.0.0.1/32   trust
local   all   all                     trust
"""


class Cluster:
    """initdb, configure, start, stop, restart; connections for admin and token users."""

    def __init__(self, base: Path | None = None, *, preload: bool = True,
                 settings: dict[str, Any] | None = None, hba: str = DEFAULT_HBA) -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix="pg_oauth-"))
        self.data = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.port = free_port()
        self.preload = preload
        self.settings = dict(settings or {})
        self.hba = hba
        self.running = False

    # -- lifecycle ---------------------------------------------------------
    def init(self) -> Cluster:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.sockdir.mkdir(exist_ok=True)
        pwfile = self.base / "pwfile"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        if os.geteuid() == 0:
            uid = pwd.getpwnam(SERVER_USER).pw_uid
            for p in (self.base, self.sockdir, pwfile):
                os.chown(p, uid, -1)
        subprocess.run(
            _as_server_user([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", ADMIN_USER,
                             "--pwfile", str(pwfile), "--auth=scram-sha-256",
                             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        pwfile.unlink()
        _make_tls_files(self.base)
        for f in ("server.crt", "server.key"):
            shutil.copy(self.base / f, self.data / f)
            if os.geteuid() == 0:
                os.chown(self.data / f, pwd.getpwnam(SERVER_USER).pw_uid, -1)
        os.chmod(self.data / "server.key", 0o600)
        self.write_config()
        return self

    def write_config(self) -> None:
        conf: dict[str, Any] = {
            "port": self.port,
            # ::1 gives tests a second client address (if the machine has IPv6)
            "listen_addresses": "'127.0.0.1,::1'",
            "unix_socket_directories": f"'{self.sockdir}'",
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "log_connections": "on",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "fsync": "off",
            "max_connections": 50,
            "restart_after_crash": "on",
        }
        if self.preload:
            conf["shared_preload_libraries"] = "'pg_oauth'"
        conf.update(self.settings)
        lines = [f"{k} = {v}" for k, v in conf.items()]
        (self.data / "postgresql.auto.conf").write_text(
            "# written by tests/pgcluster.py\n" + "\n".join(lines) + "\n")
        (self.data / "pg_hba.conf").write_text(self.hba.format(admin=ADMIN_USER))

    @classmethod
    def standby_of(cls, primary: Cluster, **settings: Any) -> Cluster:
        """A streaming standby of primary, cloned with pg_basebackup."""
        standby = cls(settings={
            **primary.settings, **settings,
            "primary_conninfo": f"'host=127.0.0.1 port={primary.port} user={ADMIN_USER} "
                                f"password={ADMIN_PASSWORD}'",
            "hot_standby": "on",
        }, preload=primary.preload, hba=primary.hba)
        standby.base.mkdir(parents=True, exist_ok=True)
        os.chmod(standby.base, 0o755)
        standby.sockdir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            uid = pwd.getpwnam(SERVER_USER).pw_uid
            os.chown(standby.base, uid, -1)
            os.chown(standby.sockdir, uid, -1)
        subprocess.run(
            _as_server_user([str(PG_BIN / "pg_basebackup"), "-D", str(standby.data),
                             "-h", "127.0.0.1", "-p", str(primary.port), "-U", ADMIN_USER,
                             "-X", "stream", "-R", "--no-sync"]),
            check=True, env={**os.environ, "PGPASSWORD": ADMIN_PASSWORD},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        standby.write_config()
        return standby

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            _as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
            check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def start(self) -> Cluster:
        self.pg_ctl("-l", str(self.logfile), "-w", "-t", "60", "start")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self.pg_ctl("-m", mode, "-w", "stop", check=False)
            self.running = False

    def restart(self, settings: dict[str, Any] | None = None) -> None:
        if settings is not None:
            self.settings.update(settings)
        self.stop()
        self.write_config()
        self.start()

    def reload(self) -> None:
        self.pg_ctl("reload")
        time.sleep(0.3)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def is_alive(self) -> bool:
        return self.pg_ctl("status", check=False).returncode == 0

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    # -- connections -------------------------------------------------------
    def admin_dsn(self, dbname: str = "postgres") -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={dbname} user={ADMIN_USER} "
                f"password={ADMIN_PASSWORD} sslmode=disable")

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn(dbname), autocommit=True)

    def sql(self, query: str, params: Any = None, dbname: str = "postgres") -> list[tuple]:
        with self.admin(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def token_dsn(self, user: str, dbname: str = "postgres", sslmode: str = "require",
                  **extra: Any) -> str:
        parts = [f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} sslmode={sslmode}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def token_connect(self, user: str, token: str, dbname: str = "postgres",
                      sslmode: str = "require", **extra: Any) -> psycopg.Connection:
        return psycopg.connect(self.token_dsn(user, dbname, sslmode), password=token,
                               autocommit=True, connect_timeout=20, **extra)

    def wait_for_workers(self, ready: int | None = None, timeout: float = 30.0) -> list[tuple]:
        """Until `ready` workers (default: all) are idle or busy."""
        deadline = time.time() + timeout
        rows: list[tuple] = []
        while time.time() < deadline:
            try:
                rows = self.sql("SELECT worker, pid, state, last_error FROM oauth.workers()")
            except psycopg.Error:
                rows = []
            want = ready if ready is not None else len(rows)
            if rows and sum(1 for r in rows if r[2] in ("idle", "busy")) >= want:
                return rows
            time.sleep(0.1)
        raise TimeoutError(f"validator workers not ready: {rows}")
