"""Login rate (pgbench -C), login latency (client loop) and token size, every method
measured in alternating rounds so that machine noise hits all of them alike."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from login_loop import (
    Login,
    interleaved_latencies,
    login_latencies,
    median,
    percentile,
    turn_order,
)
from pgbench_runner import Pgbench
from plan import Plan
from report import Goal, Table, ms, ratio, verdict
from testbed import (
    MD5,
    RS256,
    RS256_CACHED,
    SCRAM,
    TRANSPORTS,
    TRUST,
    TRUST_TWIN,
    Testbed,
)

CLIENTS = (1, 4)
Progress = Callable[[str], None]


@dataclass
class Counted:
    """Logins made, for the network-calls-per-login figure."""

    logins: int = 0


def warm_up(tb: Testbed, count: Counted) -> None:
    """A few logins everywhere: backends' caches and the workers' adapters are warm."""
    for transport in TRANSPORTS:
        for method in tb.methods:
            tb.prepare(method)
            count.logins += len(login_latencies(tb.target(method, transport), 10))


def round_ratio(values: list[float], base: list[float]) -> float:
    """The median of the rounds' own ratios: each compares two runs seconds apart."""
    return median([v / b for v, b in zip(values, base)])


def login_rate(tb: Testbed, pgbench: Pgbench, plan: Plan, count: Counted,
               goals: list[Goal], progress: Progress) -> Table:
    tps: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in range(plan.rounds):
        progress(f"login rate: round {r + 1}/{plan.rounds}")
        for transport in TRANSPORTS:
            for clients in CLIENTS:
                for method in turn_order(tb.methods, r):
                    tb.prepare(method)
                    result = pgbench.run(tb.target(method, transport), clients,
                                         plan.rate_seconds, connect_each=True)
                    tps[(transport, clients, method.name)].append(result.tps)
                    count.logins += result.transactions

    table = Table(
        f"Login rate: pgbench -C, SELECT 1 (logins/s, median of {plan.rounds} rounds × "
        f"{plan.rate_seconds} s; ratios: the median of the rounds' own ratios)",
        ["transport", "clients", "method", "logins/s", "min–max", "× trust", "× scram",
         "target (RS256)"])
    for transport in TRANSPORTS:
        for clients in CLIENTS:
            trust_rounds = tps[(transport, clients, TRUST.name)]
            scram_rounds = tps[(transport, clients, SCRAM.name)]
            for method in tb.methods:
                values = tps[(transport, clients, method.name)]
                rate = median(values)
                to_trust = round_ratio(values, trust_rounds)
                to_scram = round_ratio(values, scram_rounds)
                cells: list[object] = [transport, clients, method.name, f"{rate:.0f}",
                                       f"{min(values):.0f}–{max(values):.0f}"]
                if method.kind == "jwt":
                    cells += [ratio(to_trust), ratio(to_scram)]
                elif method is TRUST_TWIN:
                    cells += [ratio(to_trust), ""]
                else:
                    cells += ["", ""]
                if method.alg == "RS256":
                    need = 0.9 if clients == 4 else 0.95
                    vs_trust = to_trust >= need
                    vs_scram = to_scram >= 1.5
                    cells.append(f"≥{need}× trust {verdict(vs_trust)}, "
                                 f"≥1.5× scram {verdict(vs_scram)}")
                    where = f"{clients} client{'s' if clients > 1 else ''}, {transport}"
                    goals.append(Goal(
                        f"{method.name} login rate ≥ {need} × trust, {where}",
                        f"{ratio(to_trust)} ({rate:.0f} vs {median(trust_rounds):.0f}/s)",
                        vs_trust))
                    goals.append(Goal(
                        f"{method.name} login rate ≥ 1.5 × scram-sha-256, {where}",
                        f"{ratio(to_scram)} ({rate:.0f} vs {median(scram_rounds):.0f}/s)",
                        vs_scram))
                else:
                    cells.append("")
                table.add(*cells)
    table.notes.append(
        "trust (no library) runs on a second cluster without shared_preload_libraries; "
        "every other method on the pg_oauth cluster. tcp+tls: sslmode=require for every "
        "method (the TLS handshake is in every figure); unix: the socket without TLS.")
    table.notes.append(
        "'second server': trust again, on a third cluster set up exactly like the first. "
        "Its ratio to trust is how far apart two identical servers measure in this run: "
        "the noise in every comparison between servers.")
    table.notes.append(
        "pgbench's own CPU use is in every figure: client and server share the 2 cores.")
    if RS256_CACHED in tb.methods:
        table.notes.append(
            "JWT rows: pg_oauth.decision_cache = off, so a worker validates every login "
            "(pgbench -C sends the same token each time). 'decision cache hit': the "
            "cache on, the same token admitted again without a worker.")
    return table


def login_latency(tb: Testbed, plan: Plan, count: Counted, goals: list[Goal],
                  progress: Progress) -> Table:
    tb.use_default_settings()
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    n = plan.latency_logins
    for r in range(plan.rounds):
        progress(f"login latency: round {r + 1}/{plan.rounds}")
        for transport in TRANSPORTS:
            logins = [Login(m.name, tb.target(m, transport),
                            tb.fresh_tokens(str(m.alg), n)
                            if m.kind == "jwt" and not m.decision_cache else None)
                      for m in turn_order(tb.methods, r)]
            for name, values in interleaved_latencies(logins, n).items():
                samples[(transport, name)] += values
                count.logins += len(values)

    table = Table(
        f"Login latency: psycopg connect + close, 1 client ({plan.rounds} rounds × {n} "
        "logins per method, the methods taking turns login by login in a random order each round)",
        ["transport", "method", "p50 ms", "p99 ms", "added p50 over trust ms",
         "target ≤ 0.3 ms", "p50 over md5 ms"])
    for transport in TRANSPORTS:
        trust = percentile(samples[(transport, TRUST.name)], 0.5)
        md5 = (percentile(samples[(transport, MD5.name)], 0.5)
               if MD5 in tb.methods else None)
        for method in tb.methods:
            p50 = percentile(samples[(transport, method.name)], 0.5)
            p99 = percentile(samples[(transport, method.name)], 0.99)
            added = p50 - trust
            cell = ""
            if method.kind == "jwt":
                cell = verdict(added <= 0.0003)
                if method.alg == "RS256":
                    goals.append(Goal(
                        f"{method.name}: added p50 login latency over trust ≤ 0.3 ms, "
                        f"1 client, {transport}",
                        f"{ms(added)} ms ({ms(p50)} vs {ms(trust)} ms)", added <= 0.0003))
            over_md5 = ("" if md5 is None or method.kind != "jwt"
                        else f"{(p50 - md5) * 1000:+.2f}")
            table.add(transport, method.name, ms(p50), ms(p99),
                      "" if method is TRUST else f"{added * 1000:+.2f}", cell, over_md5)
    table.notes.append(
        "'second server': trust on a third cluster set up exactly like the first; its "
        "added p50 is the noise between two identical servers in this run. 'over md5': "
        "against PostgreSQL's cheapest password method, which pays the same password "
        "round trip a token does.")
    if RS256_CACHED in tb.methods:
        table.notes.append(
            "pg_oauth as shipped (decision cache on). JWT rows: a fresh token for every "
            "login, so each one is validated by a worker; 'decision cache hit': one "
            "token over and over.")
    return table


def token_size(tb: Testbed, pgbench: Pgbench, plan: Plan, count: Counted,
               goals: list[Goal], progress: Progress) -> Table:
    sizes = {"1 KB": tb.mint_sized(1024), "8 KB": tb.mint_sized(8192)}
    tb.prepare(RS256)
    rates: dict[tuple[str, str], list[float]] = defaultdict(list)
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in range(plan.rounds):
        progress(f"token size: round {r + 1}/{plan.rounds}")
        for transport in TRANSPORTS:
            for label in turn_order(list(sizes), r):
                target = tb.target(RS256, transport, sizes[label])
                result = pgbench.run(target, 4, plan.rate_seconds, connect_each=True)
                rates[(transport, label)].append(result.tps)
                count.logins += result.transactions
            logins = [Login(label, tb.target(RS256, transport, sizes[label]))
                      for label in turn_order(list(sizes), r)]
            for label, values in interleaved_latencies(logins, plan.latency_logins).items():
                latencies[(transport, label)] += values
                count.logins += len(values)

    table = Table(
        "Token size: JWT RS256, 1 KB vs 8 KB tokens (a large `groups` claim)",
        ["transport", "measure", "1 KB", "8 KB", "8 KB / 1 KB", "target within 10 %"])
    for transport in TRANSPORTS:
        small, large = median(rates[(transport, "1 KB")]), median(rates[(transport, "8 KB")])
        ok = large >= 0.9 * small
        table.add(transport, "logins/s, 4 clients (pgbench -C)", f"{small:.0f}",
                  f"{large:.0f}", ratio(large / small), verdict(ok))
        goals.append(Goal(f"8 KB token login rate within 10 % of 1 KB, {transport}",
                              ratio(large / small), ok))
        small = percentile(latencies[(transport, "1 KB")], 0.5)
        large = percentile(latencies[(transport, "8 KB")], 0.5)
        ok = large <= 1.1 * small
        table.add(transport, "p50 latency ms, 1 client", ms(small), ms(large),
                  ratio(large / small), verdict(ok))
        goals.append(Goal(f"8 KB token p50 latency within 10 % of 1 KB, {transport}",
                              ratio(large / small), ok))
    table.notes.append("token bytes: " + ", ".join(
        f"{label} = {len(token)}" for label, token in sizes.items()) + "; the same token "
        "every login, decision cache off: each login validated by a worker.")
    return table


@dataclass(frozen=True)
class NetworkMark:
    """Issuer requests and logins that fetched, at one moment."""

    requests: int
    fetched: int | None

    @classmethod
    def now(cls, tb: Testbed) -> NetworkMark:
        return cls(tb.network_calls(), tb.logins_that_fetched())


def steady_state_network(tb: Testbed, before: NetworkMark, count: Counted,
                         goals: list[Goal]) -> Table:
    after = NetworkMark.now(tb)
    requests = after.requests - before.requests
    fetched = (None if after.fetched is None or before.fetched is None
               else after.fetched - before.fetched)
    on_path = requests if fetched is None else fetched
    table = Table("Network calls on the login path (steady state)",
                  ["logins measured", "logins that waited for the issuer",
                   "issuer requests, all (incl. background refresh)", "target 0"])
    table.add(count.logins, "not counted by this server" if fetched is None else fetched,
              requests, verdict(on_path == 0))
    table.notes.append(
        "all the logins of the rate, latency and token-size sections, after warm-up. "
        "Logins that waited: oauth.stats key_cache_misses (the validation fetched keys). "
        "Requests: discovery + JWKS served by the dev issuer, including the idle "
        "workers' background refreshes, which no login waits for.")
    goals.append(Goal(
        "0 network calls per login in steady state",
        f"{on_path} of {count.logins} logins waited for the issuer "
        f"({requests} issuer requests in all)", on_path == 0))
    return table
