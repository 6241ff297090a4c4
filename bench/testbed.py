"""The benchmark's testbed: two clusters, a dev issuer, and the login methods under test.

- ``main``: pg_oauth preloaded; scram-sha-256 and md5 users, token logins on trust lines.
- ``floor``: the same server without the library, plain trust (the floor every method
  is compared with).

Every method has a line for both transports, so each can be measured over TCP with TLS
(the production path) and over the Unix socket without TLS (the raw cost of the
authentication itself).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from pg_oauth_dev.dev_issuer import DevIssuer
from pgcluster import Cluster

AUDIENCE = "pg-bench"
TOKEN_USER = "alice"
SCRAM_USER = "scram_user"
MD5_USER = "md5_user"
USER_PASSWORD = "bench-password"
JWT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
TRANSPORTS = ("tcp+tls", "unix")

MAIN_HBA = """\
# break-glass admin access: a real password, never a token
local   all   {admin}                  scram-sha-256
host    all   {admin}   127.0.0.1/32   scram-sha-256
# the password methods under test
local   all   scram_user               scram-sha-256
host    all   scram_user 127.0.0.1/32  scram-sha-256
local   all   md5_user                 md5
host    all   md5_user  127.0.0.1/32   md5
# token logins (pg_oauth hooks every trust line)
hostssl all   all       127.0.0.1/32   trust
local   all   all                      trust
"""

FLOOR_HBA = """\
# md5 here too: the cost of one password round trip without the library
local   all   md5_user                 md5
host    all   md5_user  127.0.0.1/32   md5
local   all   all                      trust
host    all   all       127.0.0.1/32   trust
"""

# Same server settings on both clusters; connection logging off so that
# 100 000 logins do not turn into a log-writing benchmark.
SERVER_SETTINGS: dict[str, Any] = {"log_connections": "off", "max_connections": 60}


@dataclass(frozen=True)
class Target:
    """Where and as whom one login goes: everything libpq needs."""

    host: str
    port: int
    user: str
    sslmode: str
    password: str | None = None
    dbname: str = "postgres"

    @classmethod
    def of(cls, cluster: Cluster, transport: str, user: str, password: str | None = None,
           dbname: str = "postgres") -> Target:
        """``transport``: "tcp+tls" (sslmode=require), "tcp" (no TLS) or "unix"."""
        host = str(cluster.sockdir) if transport == "unix" else "127.0.0.1"
        sslmode = "require" if transport == "tcp+tls" else "disable"
        return cls(host, cluster.port, user, sslmode, password, dbname)

    def conninfo(self) -> str:
        return (f"host={self.host} port={self.port} dbname={self.dbname} "
                f"user={self.user} sslmode={self.sslmode}")

    def libpq_env(self) -> dict[str, str]:
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
               "PGDATABASE": self.dbname, "PGSSLMODE": self.sslmode,
               "PGCONNECT_TIMEOUT": "20"}
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


@dataclass(frozen=True)
class Method:
    """A login method as the tables show it."""

    name: str
    kind: str  # "trust", "password" or "jwt"
    alg: str | None = None
    decision_cache: bool = False  # JWT: admitted from pg_oauth's decision cache


TRUST = Method("trust (no library)", "trust")
# The same as TRUST on a second server: how far apart two identical servers measure
# in this run (the noise floor of every comparison between servers).
TRUST_TWIN = Method("trust (no library), second server", "trust")
SCRAM = Method("scram-sha-256", "password")
MD5 = Method("md5", "password")
MD5_FLOOR = Method("md5 (no library)", "password")
# Every login validated by a worker: pg_oauth.decision_cache is off for these.
JWT_METHODS = tuple(Method(f"JWT {alg}", "jwt", alg) for alg in JWT_ALGORITHMS)
RS256 = JWT_METHODS[0]
# The same token again, admitted from the decision cache (when the server has one).
RS256_CACHED = Method("JWT RS256, decision cache hit", "jwt", "RS256", decision_cache=True)
DECISION_CACHE = "pg_oauth.decision_cache"
RATE_LIMIT = "pg_oauth.rate_limit_failures"


class Testbed:
    """Starts and owns the clusters and the issuer; ``close()`` removes them all."""

    def __init__(self, token_lifetime: float) -> None:
        self.token_lifetime = token_lifetime
        self._stack = contextlib.ExitStack()
        self.keydir = ""
        self.issuer: DevIssuer | None = None
        self.main: Cluster | None = None
        self.floor: Cluster | None = None
        self.twin: Cluster | None = None
        self.tokens: dict[str, str] = {}
        self.settings: dict[str, str] = {}  # pg_oauth.* settings the server has
        self.methods: tuple[Method, ...] = ()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Testbed:
        self.keydir = tempfile.mkdtemp(prefix="pg_oauth-bench-keys-")
        self._stack.callback(shutil.rmtree, self.keydir, ignore_errors=True)
        self.issuer = DevIssuer(self.keydir).start()
        self._stack.callback(self.issuer.stop)

        self.main = Cluster(settings=SERVER_SETTINGS, hba=MAIN_HBA)
        self._stack.callback(self.main.destroy)
        self.floor = Cluster(preload=False, settings=SERVER_SETTINGS, hba=FLOOR_HBA)
        self._stack.callback(self.floor.destroy)
        self.twin = Cluster(preload=False, settings=SERVER_SETTINGS, hba=FLOOR_HBA)
        self._stack.callback(self.twin.destroy)
        self.main.init().start()
        self.floor.init().start()
        self.twin.init().start()

        self._set_up_main()
        for floor in (self.floor, self.twin):
            floor.sql(f"""
                CREATE ROLE {TOKEN_USER} LOGIN;
                SET password_encryption = 'md5';
                CREATE ROLE {MD5_USER} LOGIN PASSWORD '{USER_PASSWORD}';
            """)
        self.settings = dict(self.main.sql(
            "SELECT name, setting FROM pg_settings WHERE name LIKE 'pg_oauth.%'"))
        self.methods = (TRUST, TRUST_TWIN, SCRAM, MD5, *JWT_METHODS)
        if DECISION_CACHE in self.settings:
            self.methods += (RS256_CACHED,)
            self.configure({DECISION_CACHE: "off"})
        self.main.wait_for_workers()
        for alg in JWT_ALGORITHMS:
            self.tokens[alg] = self.mint(alg)
        return self

    def close(self) -> None:
        self._stack.close()

    def _set_up_main(self) -> None:
        assert self.main is not None and self.issuer is not None
        self.main.sql(f"""
            CREATE ROLE {TOKEN_USER} LOGIN;
            SET password_encryption = 'scram-sha-256';
            CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{USER_PASSWORD}';
            SET password_encryption = 'md5';
            CREATE ROLE {MD5_USER} LOGIN PASSWORD '{USER_PASSWORD}';
            CREATE EXTENSION pg_oauth CASCADE;
        """)
        stored = dict(self.main.sql(
            "SELECT rolname, left(rolpassword, 5) FROM pg_authid WHERE rolname IN (%s, %s)",
            (SCRAM_USER, MD5_USER)))
        if not (stored[SCRAM_USER].startswith("SCRAM") and stored[MD5_USER].startswith("md5")):
            raise RuntimeError(f"password hashes are not as intended: {stored}")
        self.main.sql(
            "INSERT INTO oauth.issuers (issuer, audiences, jwks_cooldown, allow_loopback_http) "
            "VALUES (%s, %s, '30 seconds', true)",
            (self.issuer.issuer, [AUDIENCE]))
        self.main.sql(
            "INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
            "VALUES (%s, 'sub', %s, '\\1')",
            (self.issuer.issuer, f"({TOKEN_USER})"))

    # -- tokens and targets --------------------------------------------------

    def mint(self, alg: str = "RS256", **kw: Any) -> str:
        assert self.issuer is not None
        kw.setdefault("lifetime", self.token_lifetime)
        kw.setdefault("email", f"{TOKEN_USER}@example.com")
        return self.issuer.mint(alg=alg, sub=TOKEN_USER, aud=AUDIENCE, **kw)

    def fresh_tokens(self, alg: str, count: int) -> Iterator[str]:
        """``count`` distinct tokens, minted now (so minting is never timed)."""
        return iter([self.mint(alg) for _ in range(count)])

    def mint_sized(self, size: int, alg: str = "RS256") -> str:
        """A token of close to ``size`` bytes (never more), padded with a groups claim
        the way identity providers with many groups make tokens large."""
        def token_with(budget: int) -> str:
            groups, left, i = [], budget, 0
            while left > 0:
                name = f"app-group-{i:05d}-readers"[:left]
                groups.append(name)
                left -= len(name) + 3
                i += 1
            return self.mint(alg, groups=groups) if groups else self.mint(alg)

        low, high = 0, size
        best = token_with(0)
        if len(best) > size:
            raise ValueError(f"the smallest {alg} token is {len(best)} bytes, over {size}")
        while low <= high:
            middle = (low + high) // 2
            token = token_with(middle)
            if len(token) <= size:
                best, low = token, middle + 1
            else:
                high = middle - 1
        return best

    def network_calls(self) -> int:
        """HTTP requests the issuer has served (discovery and JWKS)."""
        assert self.issuer is not None
        return self.issuer.jwks_requests + self.issuer.discovery_requests

    def logins_that_fetched(self) -> int | None:
        """Token logins that waited for a discovery/JWKS request (oauth.stats key-cache
        misses); None when the server does not count them."""
        assert self.main is not None
        try:
            rows = self.main.sql("SELECT coalesce(sum(key_cache_misses), 0) FROM oauth.stats")
        except psycopg.Error:
            return None
        return int(rows[0][0])

    def target(self, method: Method, transport: str, token: str | None = None) -> Target:
        assert self.main is not None and self.floor is not None and self.twin is not None
        if method is TRUST_TWIN:
            return Target.of(self.twin, transport, TOKEN_USER)
        if method.kind == "trust":
            return Target.of(self.floor, transport, TOKEN_USER)
        if method is SCRAM:
            return Target.of(self.main, transport, SCRAM_USER, USER_PASSWORD)
        if method is MD5:
            return Target.of(self.main, transport, MD5_USER, USER_PASSWORD)
        if method is MD5_FLOOR:
            return Target.of(self.floor, transport, MD5_USER, USER_PASSWORD)
        assert method.alg is not None
        return Target.of(self.main, transport, TOKEN_USER, token or self.tokens[method.alg])

    def configure(self, settings: dict[str, str | None]) -> None:
        """Change pg_oauth settings of the main cluster (None: back to the default) and
        reload; settings the server does not have are left out."""
        assert self.main is not None
        expected: dict[str, str] = {}
        for name, value in settings.items():
            if name not in self.settings:
                continue
            if value is None:
                self.main.settings.pop(name, None)
            else:
                self.main.settings[name] = value
            expected[name] = self.settings[name] if value is None else value
        current = dict(self.main.sql(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(expected),)))
        if current == expected:
            return
        self.main.write_config()
        self.main.pg_ctl("reload")
        deadline = time.monotonic() + 10
        while current != expected:  # new backends see the postmaster's reloaded values
            if time.monotonic() > deadline:
                raise RuntimeError(f"settings not applied: {current} != {expected}")
            time.sleep(0.02)
            current = dict(self.main.sql(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (list(expected),)))

    def prepare(self, method: Method) -> None:
        """Server settings for ``method`` when every login sends the same token (pgbench
        -C): the decision cache only for its own row, so other JWT logins are validated."""
        if method.kind == "jwt" and DECISION_CACHE in self.settings:
            self.configure({DECISION_CACHE: "on" if method.decision_cache else "off"})

    def issuer_row(self, *names: str) -> dict[str, str]:
        """Current values (as text) of those columns of the bench issuer's row that the
        installed oauth.issuers has."""
        assert self.main is not None and self.issuer is not None
        present = {r[0] for r in self.main.sql(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'oauth' AND table_name = 'issuers'")}
        wanted = [n for n in names if n in present]
        if not wanted:
            return {}
        values = self.main.sql(
            f"SELECT {', '.join(f'{n}::text' for n in wanted)} FROM oauth.issuers "
            "WHERE issuer = %s", (self.issuer.issuer,))[0]
        return dict(zip(wanted, values))

    def use_default_settings(self) -> None:
        """pg_oauth as shipped (decision cache on): for loops that send fresh tokens."""
        self.configure({DECISION_CACHE: None})

    def set_issuer(self, **columns: str) -> None:
        """Change the bench issuer's row (takes effect with the next login)."""
        assert self.main is not None and self.issuer is not None
        if not columns:
            return
        assignments = ", ".join(f"{name} = %s" for name in columns)
        self.main.sql(f"UPDATE oauth.issuers SET {assignments} WHERE issuer = %s",
                      (*columns.values(), self.issuer.issuer))


def tool_path(name: str) -> str:
    pg_bin = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
    found = shutil.which(name, path=f"{pg_bin}:/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise RuntimeError(f"{name} not found (see scripts/install-deps.sh)")
    return found

