"""OAUTHBEARER (PostgreSQL 18+): login latency of the native ``oauth`` method with pg_oauth
as its validator, beside trust, scram-sha-256 and the token sent as a password.

Every method logs in through one C client (login_times.c, built here against the server's
own libpq), so the client costs the same for all of them and no Python runs while a login
is timed. The methods take turns login by login; each round is one run of the client per
transport.

Beside them, when its module is installed (bench/build_peer.sh builds it from source), the
same logins through another validator module, proddata/pg_oauth_validator, on servers of
its own: one configured as its docs say (loaded by oauth_validator_libraries, so into each
backend at its first OAUTHBEARER login) and one that preloads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
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
LATENCY = "OAUTHBEARER (PostgreSQL 18+): login latency"
TITLE = f"{LATENCY}, 1 client"
SOURCE = Path(__file__).resolve().parent / "login_times.c"
SCOPE = "openid pg"  # the oauth lines' scope; tokens grant "pg" (OpenID Connect's aside)
TOKEN_SCOPE = "pg"
CLIENT_ID = "pg-bench"
WELL_KNOWN = "/.well-known/openid-configuration"

PEER = "pg_oauth_validator"  # the peer's module: proddata/pg_oauth_validator
PEER_BUILD_INFO = Path("/opt/pg_oauth-peer/BUILD-INFO")  # what bench/build_peer.sh built
PEER_SCOPE = "openid pg"  # the peer requires every scope of the oauth line in the token

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

# the peer's servers: OAUTHBEARER only, its module named on the line as its docs do
PEER_HBA = """\
local   all       {{admin}}                  scram-sha-256
host    all       {{admin}}   127.0.0.1/32   scram-sha-256
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
    server: str = "oauth"  # which cluster: floor, oauth (pg_oauth), peer, peer-preloaded


TRUST = Way("trust (no library)", "n", server="floor")
SCRAM = Way("scram-sha-256", "p")
PASSWORD_FRESH = Way("token as password, first-seen", "p", fresh=True)
PASSWORD_AGAIN = Way("token as password, repeated (decision cache hit)", "p")
BEARER_FRESH = Way("OAUTHBEARER, first-seen", "b", fresh=True)
BEARER_AGAIN = Way("OAUTHBEARER, repeated (decision cache hit)", "b")
BEARER_DISCOVERY = Way("OAUTHBEARER, repeated, discovery connection first", "b",
                       discovery=True)
WAYS = (TRUST, SCRAM, PASSWORD_FRESH, PASSWORD_AGAIN, BEARER_FRESH, BEARER_AGAIN,
        BEARER_DISCOVERY)
# The peer keeps no decision of its own about a token (its cache holds metadata and keys),
# so every login checks a signature: its rows send first-seen tokens, like BEARER_FRESH.
PEER_AS_DOCUMENTED = Way("proddata/pg_oauth_validator, as its docs say (not preloaded)",
                         "b", fresh=True, server="peer")
PEER_PRELOADED = Way("proddata/pg_oauth_validator, preloaded (shared_preload_libraries)",
                     "b", fresh=True, server="peer-preloaded")
PEER_WAYS = (PEER_AS_DOCUMENTED, PEER_PRELOADED)
# the ways measured again with CLIENTS clients at once
CLIENTS = 4
WAYS_TOGETHER = (TRUST, SCRAM, PASSWORD_FRESH, PASSWORD_AGAIN, BEARER_FRESH, BEARER_AGAIN)
# what each OAUTHBEARER row is compared with: the same token, sent as a password
AS_PASSWORD = {BEARER_FRESH: PASSWORD_FRESH, BEARER_AGAIN: PASSWORD_AGAIN,
               BEARER_DISCOVERY: PASSWORD_AGAIN}


def peer_module() -> Path:
    """Where the server under test would load the peer's module from."""
    return Path(pg_config("--pkglibdir")) / f"{PEER}.so"


def peer_build() -> str:
    """What bench/build_peer.sh recorded of the peer's build, on one line."""
    try:
        lines = PEER_BUILD_INFO.read_text().splitlines()
    except OSError:
        return f"no build record ({PEER_BUILD_INFO}): not built by bench/build_peer.sh"
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    return "; ".join(f"{name} {fields[name]}" for name in
                     ("peer", "libjwt", "jansson", "libcurl", "openssl", "built")
                     if name in fields)


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
        # the peer's servers, without pg_oauth: its settings as docs/configuration.md of
        # the peer gives them, but for the dev issuer's http (allow_insecure_http, the
        # only way to an http issuer) and the bench's audience
        self.peers: dict[str, Cluster] = {}
        self.peer_note = ""
        if peer_module().exists():
            peer_line = (f'issuer="{issuer}" scope="{PEER_SCOPE}" validator={PEER}')
            peer_settings = {
                **SERVER_SETTINGS, "oauth_validator_libraries": f"'{PEER}'",
                f"{PEER}.audiences": f"'{AUDIENCE}'",
                f"{PEER}.allow_insecure_http": "on",
                f"{PEER}.required_token_type": "'at+jwt'",
                f"{PEER}.allowed_algorithms": "'RS256'",
            }
            for way in PEER_WAYS:
                preload = {"shared_preload_libraries": f"'{PEER}'"} \
                    if way is PEER_PRELOADED else {}
                self.peers[way.server] = Cluster(
                    preload=False, settings={**peer_settings, **preload},
                    hba=PEER_HBA.format(line=peer_line))
        self.ways = WAYS + (PEER_WAYS if self.peers else ())
        self.binary = build_client(workdir)
        self.env = {**os.environ, "PGOAUTHDEBUG": "UNSAFE",  # the dev issuer is http
                    "PGPASSFILE": os.devnull, "PGCONNECT_TIMEOUT": "20"}
        for name in ("PGPASSWORD", "PGUSER", "PGDATABASE", "PGHOST", "PGPORT", "PGSSLMODE"):
            self.env.pop(name, None)
        self.repeated = {way: tb.mint(scope=TOKEN_SCOPE) for way in WAYS if way.mode != "n"}

    def start_peers(self) -> None:
        """The peer's servers, and one login through each: a peer that does not start or
        refuses the bench's tokens leaves the table with a note, never fails the bench."""
        if not self.peers:
            return
        try:
            for cluster in self.peers.values():
                cluster.init().start()
                cluster.sql(f"CREATE ROLE {TOKEN_USER} LOGIN")
            for transport in TRANSPORTS:
                self.batch(transport, 1, 0, PEER_WAYS)
        except (RuntimeError, OSError, subprocess.SubprocessError, psycopg.Error) as e:
            # one line of the table's notes: libpq's warnings and the servers' last words
            error = " ".join(line for line in str(e).splitlines()
                             if line.strip() and "password file" not in line)
            logs = " | ".join(line for cluster in self.peers.values()
                              for line in cluster.log_text().splitlines()[-2:])
            self.peer_note = (f"proddata/pg_oauth_validator was installed but not measured: "
                              f"{error[:400]}" + (f" (server logs: {logs[:400]})"
                                                  if logs else ""))
            self.stop_peers()
            self.ways = WAYS

    def stop_peers(self) -> None:
        for cluster in self.peers.values():
            cluster.destroy()
        self.peers = {}

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
        cluster = {"floor": self.tb.floor, "oauth": self.cluster}.get(way.server) \
            or self.peers[way.server]
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
        if way in PEER_WAYS:  # an access token as RFC 9068 has it: the peer checks typ
            return self.tb.mint(scope=PEER_SCOPE, headers={"typ": "at+jwt"})
        if way.fresh:
            return self.tb.mint(scope=TOKEN_SCOPE)  # before the client runs: never timed
        return self.repeated[way]

    def batch(self, transport: str, count: int, shift: int,
              ways: tuple[Way, ...] | None = None, clients: int = 1) -> dict[Way, list[float]]:
        """``count`` logins of every way (default: all of this bench's), taking turns login
        by login in a random order, in one client run; seconds per login. ``clients``: as
        many client runs at once, each with its own order and its own tokens."""
        runs = [self._lines(count, shift + 1000 * c, ways or self.ways) for c in range(clients)]
        command = [str(self.binary), *(self.conninfo(way, transport) for way in self.ways)]

        def client(lines: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(command, input="\n".join(lines) + "\n",
                                  capture_output=True, text=True, env=self.env,
                                  timeout=600, check=False)

        # one thread per client, so that they all run at the same time
        with ThreadPoolExecutor(max_workers=clients) as pool:
            procs = list(pool.map(client, [lines for lines, _ in runs]))
        out: dict[Way, list[float]] = defaultdict(list)
        for proc, (_, order) in zip(procs, runs):
            times = proc.stdout.split()
            if proc.returncode != 0 or len(times) != len(order):
                failed = order[len(times)].name if len(times) < len(order) else "?"
                raise RuntimeError(f"bearer bench, {transport}, {failed}: {proc.stderr.strip()}")
            for way, micros in zip(order, times):
                out[way].append(float(micros) / 1e6)
        return out

    def _lines(self, count: int, shift: int,
               ways: tuple[Way, ...]) -> tuple[list[str], list[Way]]:
        lines: list[str] = []
        order: list[Way] = []
        for i in range(count):
            for way in turn_order(ways, shift + i):
                index = self.ways.index(way)
                lines.append(f"{index} {way.mode}" if way.mode == "n"
                             else f"{index} {way.mode} {self.secret(way)}")
                order.append(way)
        return lines, order


def bearer(tb: Testbed, plan: Plan, progress: Progress) -> list[Table]:
    major = server_major()
    if major < 18:
        progress(f"bearer: skipped (the oauth pg_hba method needs PostgreSQL 18+; "
                 f"the server under test is {major})")
        return [Table(TITLE, ["skipped"], [[
            (f"the server under test is PostgreSQL {major}: the oauth pg_hba method needs "
             "18+ (make PG=18 bench)")]])]
    workdir = Path(tempfile.mkdtemp(prefix="pg_oauth-bench-bearer-"))
    bench = Bench(tb, workdir)
    try:
        progress("bearer: starting the oauth cluster"
                 + (" and the peer's two" if bench.peers else ""))
        bench.start()
        bench.start_peers()
        n = plan.latency_logins
        for transport in TRANSPORTS:  # warm-up: backends, workers, the client's libraries
            bench.batch(transport, 5, 0)
        samples: dict[tuple[str, Way], list[float]] = defaultdict(list)
        for r in range(plan.rounds):
            progress(f"bearer: round {r + 1}/{plan.rounds}")
            for transport in turn_order(TRANSPORTS, r):
                for way, values in bench.batch(transport, n, r).items():
                    samples[(transport, way)] += values
        # the same at CLIENTS clients at once, each taking its own turns
        ways = bench.ways
        together = tuple(w for w in (*WAYS_TOGETHER, PEER_PRELOADED) if w in ways)
        per_client = max(1, n // CLIENTS)
        together_samples: dict[tuple[str, Way], list[float]] = defaultdict(list)
        for r in range(plan.rounds):
            progress(f"bearer: {CLIENTS} clients, round {r + 1}/{plan.rounds}")
            for transport in turn_order(TRANSPORTS, r):
                for way, values in bench.batch(transport, per_client, r, together,
                                               CLIENTS).items():
                    together_samples[(transport, way)] += values
        rejected = bench.cluster.sql(
            "SELECT count(*) FROM oauth.audit_log WHERE outcome <> 'ok'")[0][0]
    finally:
        bench.cluster.destroy()
        bench.stop_peers()
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(
        f"{TITLE} ({plan.rounds} rounds × {n} logins per method and transport, the methods "
        "taking turns login by login in a random order each round; one C libpq client for every method)",
        ["transport", "method", "p50 ms", "p95 ms", "p50 over trust ms",
         "p50 over the token as password ms"])
    for transport in TRANSPORTS:
        trust = percentile(samples[(transport, TRUST)], 0.5)
        for way in ways:
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
        "but the peer's on one pg_oauth cluster with oauth_validator_libraries = "
        f"'pg_oauth', pg_oauth as shipped (decision cache on). oauth lines: scope=\"{SCOPE}\" "
        "delegate_ident_mapping=1, local and hostssl; tokens grant scope \"pg\". tcp+tls: "
        "sslmode=require for every method; unix: the socket without TLS.")
    table.notes.append(
        "OAUTHBEARER rows give oauth_issuer as the discovery URI (<issuer>" + WELL_KNOWN +
        "), so libpq sends the token in its first SASL message; 'discovery connection "
        "first': oauth_issuer is the issuer itself, as in libpq's documented examples, "
        "so every login is two connections: one that asks the server for the discovery "
        "URI and is refused, then the one with the token.")
    table.notes.append(f"refused logins in oauth.audit_log after the run: {rejected}.")
    if PEER_AS_DOCUMENTED in ways:
        table.notes.append(
            "proddata/pg_oauth_validator rows: two servers of their own without pg_oauth, "
            f"oauth_validator_libraries = '{PEER}', the second also shared_preload_libraries "
            f"= '{PEER}' (its docs say it does not need it, not that it may not: "
            "session_preload_libraries would load it only after authentication); oauth "
            f"lines validator={PEER} scope=\"{PEER_SCOPE}\" without map (the token's sub is "
            f"the role), {PEER}.audiences = '{AUDIENCE}', allow_insecure_http = on (the dev "
            "issuer is http on 127.0.0.1), required_token_type = 'at+jwt', "
            "allowed_algorithms = 'RS256'. Every login sends a first-seen RS256 token with "
            f"typ at+jwt and scope \"{PEER_SCOPE}\", from the same dev issuer; it keeps "
            "metadata and keys in shared memory, so each login checks a signature. "
            f"Built: {peer_build()}.")
    elif bench.peer_note:
        table.notes.append(bench.peer_note)
    else:
        table.notes.append(
            f"proddata/pg_oauth_validator was not measured: {peer_module()} is not installed "
            "(bench/build_peer.sh builds it and libjwt from their sources into this "
            "server's Debian root; docs/performance.md).")

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
    if PEER_AS_DOCUMENTED in ways:
        table.notes.append("Against the peer: " + "; ".join(
            f"{transport}: pg_oauth's first-seen token "
            f"{(p50(transport, BEARER_FRESH) - p50(transport, PEER_AS_DOCUMENTED)) * 1000:+.2f}"
            " ms p50 against the peer as its docs say, "
            f"{(p50(transport, BEARER_FRESH) - p50(transport, PEER_PRELOADED)) * 1000:+.2f} ms "
            "against it preloaded" for transport in TRANSPORTS) + ".")
    return [table, _together_table(together_samples, together, plan.rounds, per_client)]


def _together_table(samples: dict[tuple[str, Way], list[float]], ways: tuple[Way, ...],
                    rounds: int, per_client: int) -> Table:
    table = Table(
        f"{LATENCY}, {CLIENTS} clients at once ({rounds} rounds × {per_client} logins per method, "
        f"transport and client; each client takes its own random turns)",
        ["transport", "method", "p50 ms", "p95 ms", "p50 over trust ms"])
    for transport in TRANSPORTS:
        trust = percentile(samples[(transport, TRUST)], 0.5)
        for way in ways:
            values = samples[(transport, way)]
            p50 = percentile(values, 0.5)
            table.add(transport, way.name, ms(p50), ms(percentile(values, 0.95)),
                      "" if way is TRUST else f"{(p50 - trust) * 1000:+.2f}")
    table.notes.append(
        f"{CLIENTS} copies of the same C client run at once, each with its own tokens (a "
        "first-seen token is new in every login of every client); the two CPUs are shared "
        "by the clients, the postmaster, the backends and the validator workers.")
    return table
