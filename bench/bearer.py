"""OAUTHBEARER (PostgreSQL 18+): login latency of the native ``oauth`` method with pg_oauth
as its validator, beside trust, scram-sha-256 and the token sent as a password.

Every method logs in through one C client (login_times.c, built here against the server's
own libpq), so the client costs the same for all of them and no Python runs while a login
is timed. The methods take turns login by login; each round is one run of the client per
transport.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from login_loop import percentile, turn_order
from pgcluster import Cluster, pg_config, server_major
from plan import Plan
from report import Table, ms
from testbed import (
    AUDIENCE,
    SCRAM_USER,
    SERVER_SETTINGS,
    TOKEN_USER,
    TRANSPORTS,
    USER_PASSWORD,
    Testbed,
)

Progress = Callable[[str], None]
TITLE = "OAUTHBEARER (PostgreSQL 18+): login latency, 1 client"
SOURCE = Path(__file__).resolve().parent / "login_times.c"
SCOPE = "openid pg"  # the oauth lines' scope; tokens grant "pg" (OpenID Connect's aside)
TOKEN_SCOPE = "pg"
CLIENT_ID = "pg-bench"
WELL_KNOWN = "/.well-known/openid-configuration"

# database postgres: OAUTHBEARER; database pwdb: the token as a password (trust line)
HBA = """\
local   all       {{admin}}                  scram-sha-256
host    all       {{admin}}   127.0.0.1/32   scram-sha-256
local   all       {scram}                  scram-sha-256
host    all       {scram}   127.0.0.1/32   scram-sha-256
local   pwdb      all                      trust
hostssl pwdb      all       127.0.0.1/32   trust
local   postgres  all                      oauth {line}
hostssl postgres  all       127.0.0.1/32   oauth {line}
"""


@dataclass(frozen=True)
class Way:
    """One row of the table: a login method and how its secret is chosen."""

    name: str
    mode: str  # login_times.c: n (none), p (password) or b (bearer token)
    fresh: bool = False  # a token never seen before for every login
    discovery: bool = False  # OAUTHBEARER: oauth_issuer is the issuer, not its
    # discovery URI, so libpq first connects without a token to ask the server for it


TRUST = Way("trust (no library)", "n")
SCRAM = Way("scram-sha-256", "p")
PASSWORD_FRESH = Way("token as password, first-seen", "p", fresh=True)
PASSWORD_AGAIN = Way("token as password, repeated (decision cache hit)", "p")
BEARER_FRESH = Way("OAUTHBEARER, first-seen", "b", fresh=True)
BEARER_AGAIN = Way("OAUTHBEARER, repeated (decision cache hit)", "b")
BEARER_DISCOVERY = Way("OAUTHBEARER, repeated, discovery connection first", "b",
                       discovery=True)
WAYS = (TRUST, SCRAM, PASSWORD_FRESH, PASSWORD_AGAIN, BEARER_FRESH, BEARER_AGAIN,
        BEARER_DISCOVERY)
# what each OAUTHBEARER row is compared with: the same token, sent as a password
AS_PASSWORD = {BEARER_FRESH: PASSWORD_FRESH, BEARER_AGAIN: PASSWORD_AGAIN,
               BEARER_DISCOVERY: PASSWORD_AGAIN}


def build_client(workdir: Path) -> Path:
    """login_times.c, compiled against the libpq of the server under test."""
    binary = workdir / "login_times"
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Werror", "-D_POSIX_C_SOURCE=200809L",
                    "-o", str(binary), str(SOURCE), f"-I{pg_config('--includedir')}",
                    f"-L{pg_config('--libdir')}", f"-Wl,-rpath,{pg_config('--libdir')}", "-lpq"],
                   check=True)
    return binary


class Bench:
    """The bearer cluster, the conninfos of every row and the client that uses them."""

    def __init__(self, tb: Testbed, workdir: Path) -> None:
        assert tb.issuer is not None and tb.floor is not None
        self.tb = tb
        issuer = tb.issuer.issuer
        line = f'issuer="{issuer}" scope="{SCOPE}" delegate_ident_mapping=1'
        self.cluster = Cluster(
            settings={**SERVER_SETTINGS, "oauth_validator_libraries": "'pg_oauth'"},
            hba=HBA.format(scram=SCRAM_USER, line=line))
        self.binary = build_client(workdir)
        self.env = {**os.environ, "PGOAUTHDEBUG": "UNSAFE",  # the dev issuer is http
                    "PGPASSFILE": os.devnull, "PGCONNECT_TIMEOUT": "20"}
        for name in ("PGPASSWORD", "PGUSER", "PGDATABASE", "PGHOST", "PGPORT", "PGSSLMODE"):
            self.env.pop(name, None)
        self.repeated = {way: tb.mint(scope=TOKEN_SCOPE) for way in WAYS if way.mode != "n"}

    def start(self) -> None:
        assert self.tb.issuer is not None
        self.cluster.init().start()
        self.cluster.sql(f"""
            CREATE ROLE {TOKEN_USER} LOGIN;
            SET password_encryption = 'scram-sha-256';
            CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{USER_PASSWORD}';
            CREATE EXTENSION pg_oauth CASCADE;
        """)
        self.cluster.sql("CREATE DATABASE pwdb")
        self.cluster.sql("CREATE EXTENSION pg_oauth CASCADE", dbname="pwdb")
        self.cluster.sql(
            "INSERT INTO oauth.issuers (issuer, audiences, allow_loopback_http) "
            "VALUES (%s, %s, true)",
            (self.tb.issuer.issuer, [AUDIENCE]))
        self.cluster.sql(
            "INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
            "VALUES (%s, 'sub', %s, '\\1')", (self.tb.issuer.issuer, f"({TOKEN_USER})"))
        self.cluster.wait_for_workers()

    def conninfo(self, way: Way, transport: str) -> str:
        assert self.tb.floor is not None and self.tb.issuer is not None
        cluster = self.tb.floor if way is TRUST else self.cluster
        host = str(cluster.sockdir) if transport == "unix" else "127.0.0.1"
        sslmode = "require" if transport == "tcp+tls" else "disable"
        user = SCRAM_USER if way is SCRAM else TOKEN_USER
        dbname = "pwdb" if way in (PASSWORD_FRESH, PASSWORD_AGAIN) else "postgres"
        text = f"host={host} port={cluster.port} dbname={dbname} user={user} sslmode={sslmode}"
        if way.mode == "b":
            issuer = self.tb.issuer.issuer
            text += (f" oauth_issuer={issuer if way.discovery else issuer + WELL_KNOWN}"
                     f" oauth_client_id={CLIENT_ID}")
        return text

    def secret(self, way: Way) -> str:
        if way is SCRAM:
            return USER_PASSWORD
        if way.fresh:
            return self.tb.mint(scope=TOKEN_SCOPE)  # before the client runs: never timed
        return self.repeated[way]

    def batch(self, transport: str, count: int, shift: int) -> dict[Way, list[float]]:
        """``count`` logins of every way, taking turns login by login, in one client run;
        seconds per login."""
        lines: list[str] = []
        order: list[Way] = []
        for i in range(count):
            for way in turn_order(WAYS, shift + i):
                index = WAYS.index(way)
                lines.append(f"{index} {way.mode}" if way.mode == "n"
                             else f"{index} {way.mode} {self.secret(way)}")
                order.append(way)
        proc = subprocess.run(
            [str(self.binary), *(self.conninfo(way, transport) for way in WAYS)],
            input="\n".join(lines) + "\n", capture_output=True, text=True, env=self.env,
            timeout=600, check=False)
        times = proc.stdout.split()
        if proc.returncode != 0 or len(times) != len(order):
            failed = order[len(times)].name if len(times) < len(order) else "?"
            raise RuntimeError(f"bearer bench, {transport}, {failed}: {proc.stderr.strip()}")
        out: dict[Way, list[float]] = defaultdict(list)
        for way, micros in zip(order, times):
            out[way].append(float(micros) / 1e6)
        return out


def bearer(tb: Testbed, plan: Plan, progress: Progress) -> Table:
    major = server_major()
    if major < 18:
        progress(f"bearer: skipped (the oauth pg_hba method needs PostgreSQL 18+; "
                 f"the server under test is {major})")
        return Table(TITLE, ["skipped"], [[
            (f"the server under test is PostgreSQL {major}: the oauth pg_hba method needs "
             "18+ (make PG=18 bench)")]])
    workdir = Path(tempfile.mkdtemp(prefix="pg_oauth-bench-bearer-"))
    bench = Bench(tb, workdir)
    try:
        progress("bearer: starting the oauth cluster")
        bench.start()
        n = plan.latency_logins
        for transport in TRANSPORTS:  # warm-up: backends, workers, the client's libraries
            bench.batch(transport, 5, 0)
        samples: dict[tuple[str, Way], list[float]] = defaultdict(list)
        for r in range(plan.rounds):
            progress(f"bearer: round {r + 1}/{plan.rounds}")
            for transport in turn_order(TRANSPORTS, r):
                for way, values in bench.batch(transport, n, r).items():
                    samples[(transport, way)] += values
        rejected = bench.cluster.sql(
            "SELECT count(*) FROM oauth.audit_log WHERE outcome <> 'ok'")[0][0]
    finally:
        bench.cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(
        f"{TITLE} ({plan.rounds} rounds × {n} logins per method and transport, the methods "
        "taking turns login by login in a random order each round; one C libpq client for every method)",
        ["transport", "method", "p50 ms", "p95 ms", "p50 over trust ms",
         "p50 over the token as password ms"])
    for transport in TRANSPORTS:
        trust = percentile(samples[(transport, TRUST)], 0.5)
        for way in WAYS:
            values = samples[(transport, way)]
            p50 = percentile(values, 0.5)
            twin = AS_PASSWORD.get(way)
            over_password = ("" if twin is None else
                             f"{(p50 - percentile(samples[(transport, twin)], 0.5)) * 1000:+.2f}")
            table.add(transport, way.name, ms(p50), ms(percentile(values, 0.95)),
                      "" if way is TRUST else f"{(p50 - trust) * 1000:+.2f}", over_password)
    table.notes.append(
        "login_times.c (bench/) times PQconnectdbParams to CONNECTION_OK, built against the "
        "server's libpq; trust runs on the cluster without the library, every other method "
        "on one pg_oauth cluster with oauth_validator_libraries = 'pg_oauth', pg_oauth as "
        f"shipped (decision cache on). oauth lines: scope=\"{SCOPE}\" "
        "delegate_ident_mapping=1, local and hostssl; tokens grant scope \"pg\". tcp+tls: "
        "sslmode=require for every method; unix: the socket without TLS.")
    table.notes.append(
        "OAUTHBEARER rows give oauth_issuer as the discovery URI (<issuer>" + WELL_KNOWN +
        "), so libpq sends the token in its first SASL message; 'discovery connection "
        "first': oauth_issuer is the issuer itself, as in libpq's documented examples, "
        "so every login is two connections: one that asks the server for the discovery "
        "URI and is refused, then the one with the token.")
    table.notes.append(f"refused logins in oauth.audit_log after the run: {rejected}.")

    def p50(transport: str, way: Way) -> float:
        return percentile(samples[(transport, way)], 0.5)

    table.notes.append("What it means: " + "; ".join(
        f"{transport}: OAUTHBEARER costs "
        f"{(p50(transport, BEARER_FRESH) - p50(transport, PASSWORD_FRESH)) * 1000:+.2f} ms "
        "p50 against the same first-seen token sent as a password and "
        f"{(p50(transport, BEARER_AGAIN) - p50(transport, PASSWORD_AGAIN)) * 1000:+.2f} ms "
        "repeated, a discovery connection first adds "
        f"{(p50(transport, BEARER_DISCOVERY) - p50(transport, BEARER_AGAIN)) * 1000:+.2f} ms, "
        f"scram-sha-256 is {(p50(transport, SCRAM) - p50(transport, TRUST)) * 1000:+.2f} ms "
        "over trust" for transport in TRANSPORTS) + ".")
    return table
