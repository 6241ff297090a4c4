"""How long each part of the benchmark runs: the default run and the --quick smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    rounds: int  # alternating rounds of every comparison (many short ones: noise on a
    # shared machine then hits every method alike)
    rate_seconds: int  # one pgbench -C run
    latency_logins: int  # client-loop logins per method and round
    storm_logins: int  # logins with unknown kids
    storm_seconds: float  # the storm is paced over this long
    storm_cooldown: int  # jwks_cooldown during the storm, seconds
    slow_logins: int  # per round, slow issuer and normal issuer alike
    refresh_seconds: float  # logins while a key refresh falls due (slow issuer)
    refresh_interval: int  # jwks_refresh during that phase, seconds
    cold_starts: int
    proxy_seconds: int  # one pgbench -S run
    proxy_scale: int
    call_loops: int  # server-side oauth.validate() calls timed per case
    cpu_seconds: int  # pgbench -C run with CPU accounting, per method
    flood_logins: int  # valid logins timed per round, with and without a bad-token flood
    flood_clients: int  # concurrent clients sending bad-signature tokens
    scale_idle_rounds: int  # logins after 10 s idle, per configuration size
    scale_rls_runs: int  # runs of each RLS query (policies and constants, section rls)
    pooler_seconds: int  # one pgbench run through PgBouncer, per method and client count


DEFAULT = Plan(
    name="default", rounds=10, rate_seconds=1, latency_logins=60, storm_logins=1000,
    storm_seconds=15, storm_cooldown=5, slow_logins=60, refresh_seconds=16,
    refresh_interval=8, cold_starts=3, proxy_seconds=2, proxy_scale=5, call_loops=1000,
    cpu_seconds=2, flood_logins=40, flood_clients=16, scale_idle_rounds=9,
    scale_rls_runs=41, pooler_seconds=2,
)

QUICK = Plan(
    name="quick", rounds=2, rate_seconds=1, latency_logins=60, storm_logins=1000,
    storm_seconds=6, storm_cooldown=5, slow_logins=60, refresh_seconds=12,
    refresh_interval=5, cold_starts=1, proxy_seconds=2, proxy_scale=2, call_loops=300,
    cpu_seconds=2, flood_logins=20, flood_clients=16, scale_idle_rounds=3,
    scale_rls_runs=5, pooler_seconds=1,
)
