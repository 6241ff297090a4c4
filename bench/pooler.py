"""Behind a connection pooler (issue 21): one token per transaction through PgBouncer in
transaction mode, against the same transactions with no token; and what
oauth.authenticate() itself costs.

A cluster of its own, set up as docs/poolers.md says: a gateway role (pg_oauth.gateway),
the role tokens are mapped to, and a plain role with a password for the same transactions
without a token. One PgBouncer (transaction pooling, 4 server connections, TLS from its
clients, the cluster's Unix socket behind it) carries both. The methods and client counts
take turns in random order, round by round.
"""

from __future__ import annotations

import base64
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import psycopg
from login_loop import median, percentile
from login_speed import round_ratio
from pgbench_runner import Pgbench
from pgcluster import Cluster
from plan import Plan
from poolers import PgBouncer
from report import Goal, Table, ratio, verdict
from testbed import AUDIENCE, SERVER_SETTINGS, Target, Testbed

Progress = Callable[[str], None]
GATEWAY_PASSWORD = "bench-gateway-password"
PLAIN_PASSWORD = "bench-plain-password"
OWNERS = 100
ROWS_PER_OWNER = 20
POOL_SIZE = 4
CLIENTS = (1, 8)
TARGET = 0.8
AUDIT = "pg_oauth.audit_log"
TOKEN = "token"
TOKEN_NO_AUDIT = "token, audit_log off"
NO_TOKEN = "no token"
PLAIN = "plain role, no token"
SEEN = "gateway, token seen before"
FIRST = "gateway, first-seen token"

HBA = """\
local   all   {admin}                  scram-sha-256
host    all   {admin}   127.0.0.1/32   scram-sha-256
local   all   gateway                  scram-sha-256
local   all   plain_user               scram-sha-256
hostssl all   all       127.0.0.1/32   trust
local   all   all                      trust
"""

# one statement per round trip, as most clients send them
STATEMENTS = {
    "token": "BEGIN;\nSELECT oauth.authenticate(:token);\n"
             "SELECT count(*) FROM items WHERE owner = :owner;\nCOMMIT;\n",
    "no token": "BEGIN;\nSELECT count(*) FROM items WHERE owner = :owner;\nCOMMIT;\n",
}
# the whole transaction in one round trip (a pipeline ends at its Sync: a refused token
# leaves the statements after it unrun)
PIPELINED = {name: f"\\startpipeline\n{sql}\\endpipeline\n" for name, sql in STATEMENTS.items()}
# an application's transaction more often reads and writes a few times: read, write (a
# row of the client's own, no lock shared between clients), read
WORK = ("SELECT count(*) FROM items WHERE owner = :owner;\n"
        "UPDATE items SET n = n + 1 WHERE id = (SELECT min(id) FROM items "
        "WHERE owner = 'bench-' || (:client_id)::int);\n"
        "SELECT sum(n) FROM items WHERE owner = :owner;\n")
THREE = {
    "token": f"BEGIN;\nSELECT oauth.authenticate(:token);\n{WORK}COMMIT;\n",
    "no token": f"BEGIN;\n{WORK}COMMIT;\n",
}
SHAPES = {"one round trip per statement": STATEMENTS, "pipelined, one round trip": PIPELINED,
          "read, write, read; one round trip per statement": THREE}


def _set_up(cluster: Cluster, issuer: str) -> None:
    cluster.sql(f"""
        CREATE EXTENSION pg_oauth CASCADE;
        CREATE ROLE gateway LOGIN PASSWORD '{GATEWAY_PASSWORD}';
        ALTER ROLE gateway SET pg_oauth.gateway = on;
        CREATE ROLE app LOGIN;
        CREATE ROLE plain_user LOGIN PASSWORD '{PLAIN_PASSWORD}';
        CREATE TABLE items (id bigserial PRIMARY KEY, owner text NOT NULL, body text,
                            n int NOT NULL DEFAULT 0);
        INSERT INTO items (owner, body)
             SELECT 'bench-' || (i % {OWNERS}), md5(i::text)
               FROM generate_series(1, {OWNERS * ROWS_PER_OWNER}) AS i;
        CREATE INDEX ON items (owner);
        ANALYZE items;
        GRANT SELECT, UPDATE ON items TO app, plain_user;
    """)
    cluster.sql("INSERT INTO oauth.issuers (issuer, audiences, allow_loopback_http) "
                "VALUES (%s, %s, true)", (issuer, [AUDIENCE]))
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'sub', 'bench-.*', 'app')", (issuer,))
    cluster.wait_for_workers()


def _mint(testbed: Testbed, subject: str) -> str:
    assert testbed.issuer is not None
    return testbed.issuer.mint(sub=subject, aud=AUDIENCE, lifetime=testbed.token_lifetime)


def _secret(cluster: Cluster, role: str) -> str:
    return str(cluster.sql("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                           (role,))[0][0])


def pooler(testbed: Testbed, pgbench: Pgbench, plan: Plan, goals: list[Goal],
           progress: Progress,
           register_cleanup: Callable[[Callable[[], None]], None]) -> list[Table]:
    assert testbed.issuer is not None
    progress("pooler: a gateway cluster and PgBouncer")
    cluster = Cluster(settings=dict(SERVER_SETTINGS), hba=HBA)
    register_cleanup(cluster.destroy)
    cluster.init().start()
    _set_up(cluster, testbed.issuer.issuer)
    bouncer = PgBouncer(cluster, {"auth_type": "scram-sha-256", "pool_mode": "transaction",
                                  "default_pool_size": str(POOL_SIZE),
                                  "max_client_conn": "100"},
                        userlist=(f'"gateway" "{_secret(cluster, "gateway")}"\n'
                                  f'"plain_user" "{_secret(cluster, "plain_user")}"\n'))
    register_cleanup(bouncer.remove)
    bouncer.start()
    tables = [_rates(cluster, bouncer, pgbench, plan, goals, progress,
                     _mint(testbed, "bench-1")),
              _step_costs(cluster, testbed, plan, progress)]
    bouncer.remove()
    cluster.destroy()
    return tables


def _audit(cluster: Cluster, on: bool) -> None:
    """pg_oauth.audit_log on or off (a reload; every backend has it before its next
    statement)."""
    value = "on" if on else "off"
    if cluster.settings.get(AUDIT, "on") == value:
        return
    cluster.settings[AUDIT] = value
    cluster.write_config()
    cluster.pg_ctl("reload")
    time.sleep(0.3)


def _rates(cluster: Cluster, bouncer: PgBouncer, pgbench: Pgbench, plan: Plan,
           goals: list[Goal], progress: Progress, token: str) -> Table:
    gateway = Target("127.0.0.1", bouncer.port, "gateway", "require", GATEWAY_PASSWORD)
    plain = Target("127.0.0.1", bouncer.port, "plain_user", "require", PLAIN_PASSWORD)
    # method: (target, script, pg_oauth.audit_log)
    methods = {TOKEN: (gateway, "token", True), TOKEN_NO_AUDIT: (gateway, "token", False),
               NO_TOKEN: (plain, "no token", True)}
    variables = {"token": token, "owner": "bench-1"}
    workdir = Path(tempfile.mkdtemp(prefix="pg_oauth-bench-pooler-"))
    scripts: dict[tuple[str, str], Path] = {}
    for shape, texts in SHAPES.items():
        for name, text in texts.items():
            scripts[(shape, name)] = workdir / f"{len(scripts)}.sql"
            scripts[(shape, name)].write_text(text)
    runs = [(shape, clients, method) for shape in SHAPES for clients in CLIENTS
            for method in methods]
    tps: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    latency: dict[tuple[str, int, str], list[float]] = defaultdict(list)

    def run(shape: str, clients: int, method: str, seconds: int) -> None:
        target, script, audit = methods[method]
        _audit(cluster, audit)
        result = pgbench.run_script(target, clients, seconds, scripts[(shape, script)],
                                    variables=variables, threads=min(clients, 2))
        tps[(shape, clients, method)].append(result.tps)
        if result.latency_ms is not None:
            latency[(shape, clients, method)].append(result.latency_ms)

    # a first run of each: the token is then one the server has seen (decision cache)
    for shape, clients, method in runs:
        run(shape, clients, method, 1)
    tps.clear()
    latency.clear()
    shuffle = random.Random(21)
    for r in range(plan.rounds):
        progress(f"pooler: round {r + 1}/{plan.rounds}")
        shuffle.shuffle(runs)
        for shape, clients, method in runs:
            run(shape, clients, method, plan.pooler_seconds)
    _audit(cluster, True)
    for path in scripts.values():
        path.unlink()
    workdir.rmdir()

    table = Table(
        f"Behind PgBouncer (transaction pooling, {POOL_SIZE} server connections): "
        f"transactions/s with a token per transaction and with none, median of "
        f"{plan.rounds} rounds × {plan.pooler_seconds} s, in random order",
        ["clients", "round trips", "method", "transactions/s", "min–max", "latency ms",
         "× no token", f"target ≥{TARGET}×"])
    for shape in SHAPES:
        for clients in CLIENTS:
            without = tps[(shape, clients, NO_TOKEN)]
            for method in methods:
                values = tps[(shape, clients, method)]
                share = round_ratio(values, without)
                cells: list[object] = [
                    clients, shape, method, f"{median(values):.0f}",
                    f"{min(values):.0f}–{max(values):.0f}",
                    f"{median(latency[(shape, clients, method)]):.3f}"
                    if latency[(shape, clients, method)] else "",
                    "" if method == NO_TOKEN else ratio(share)]
                if method == TOKEN:
                    met = share >= TARGET
                    cells.append(verdict(met))
                    goals.append(Goal(
                        f"through PgBouncer, a token per transaction ≥ {TARGET} × no token, "
                        f"{clients} client{'s' if clients > 1 else ''}, {shape}",
                        f"{ratio(share)} ({median(values):.0f} vs {median(without):.0f}/s)",
                        met))
                else:
                    cells.append("")
                table.add(*cells)
    table.notes.append(
        "All through the same PgBouncer (pool_mode = transaction, default_pool_size = "
        f"{POOL_SIZE}, scram-sha-256 from its user list), clients over TCP with TLS "
        "(sslmode=require), PgBouncer to the server over its Unix socket; pgbench -M "
        "extended (bind parameters, unnamed statements), -j 2 at 8 clients.")
    table.notes.append(
        "With a token: the gateway role, BEGIN; SELECT oauth.authenticate($1); the "
        "statement; COMMIT, one token for every transaction of the run (seen before: the "
        "decision cache), with pg_oauth.audit_log on (the default: a row in oauth.audit_log "
        "when a token is decided, not per transaction the cache admits) and off. No token: "
        "a plain role with a password, BEGIN; the statement(s); COMMIT. The statement: "
        f"SELECT count(*) of the {ROWS_PER_OWNER} rows of one owner by an index; read, "
        "write, read: that, an UPDATE of one of them, and a sum over them.")
    table.notes.append(
        "'× no token': the median of the rounds' own ratios. Pipelined: pgbench "
        "\\startpipeline … \\endpipeline, the transaction's statements in one round trip.")
    return table


def _step_costs(cluster: Cluster, testbed: Testbed, plan: Plan,
                progress: Progress) -> Table:
    """Each statement of a transaction timed on its own, the gateway's against a plain
    role's doing the same without a token, on connections of their own straight to the
    server (no pooler: less noise), taking turns."""
    samples = plan.call_loops
    progress(f"pooler: {samples} transactions of each kind, every statement timed")
    fresh = iter([_mint(testbed, f"bench-{i % OWNERS}") for i in range(samples)])
    seen = _mint(testbed, "bench-2")
    steps: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    tokens: dict[str, list[str]] = defaultdict(list)

    def connect(user: str, password: str) -> psycopg.Connection:
        return psycopg.connect(host=str(cluster.sockdir), port=cluster.port,
                               dbname="postgres", user=user, password=password,
                               autocommit=True, prepare_threshold=None)

    def transaction(conn: psycopg.Connection, kind: str, call: str, token: str) -> None:
        for step, statement, params in (("BEGIN", "BEGIN", None),
                                        ("the call", call, (token,)),
                                        ("COMMIT", "COMMIT", None)):
            started = time.perf_counter_ns()
            conn.execute(statement, params)
            steps[kind][step].append((time.perf_counter_ns() - started) / 1000)
        tokens[kind].append(token)

    with connect("gateway", GATEWAY_PASSWORD) as gw, connect("plain_user", PLAIN_PASSWORD) as pl:
        transaction(gw, SEEN, "SELECT oauth.authenticate(%s)", seen)  # now seen before
        steps.clear()
        tokens.clear()
        kinds = [PLAIN, SEEN, FIRST]
        shuffle = random.Random(42)
        for _ in range(samples):
            shuffle.shuffle(kinds)
            for kind in kinds:
                if kind == PLAIN:
                    transaction(pl, kind, "SELECT %s", seen)
                else:
                    transaction(gw, kind, "SELECT oauth.authenticate(%s)",
                                seen if kind == SEEN else next(fresh))
    decided = _decision_times(cluster, tokens)

    table = Table(
        f"What a token per transaction costs, µs: p50 of {samples} transactions of each "
        "kind, taking turns",
        ["statement", PLAIN, SEEN, "difference", FIRST, "difference",
         "server-side decision, first-seen"])
    for step in ("BEGIN", "the call", "COMMIT"):
        base = percentile(steps[PLAIN][step], 0.5)
        seen_p50, first_p50 = (percentile(steps[k][step], 0.5) for k in (SEEN, FIRST))
        table.add(step if step != "the call" else "SELECT $1 / SELECT oauth.authenticate($1)",
                  f"{base:.0f}", f"{seen_p50:.0f}", f"{seen_p50 - base:+.0f}",
                  f"{first_p50:.0f}", f"{first_p50 - base:+.0f}",
                  decided.get(FIRST, "") if step == "the call" else "")
    totals = {k: percentile([sum(t) for t in zip(*steps[k].values())], 0.5) for k in steps}
    table.add("the whole transaction", f"{totals[PLAIN]:.0f}", f"{totals[SEEN]:.0f}",
              f"{totals[SEEN] - totals[PLAIN]:+.0f}", f"{totals[FIRST]:.0f}",
              f"{totals[FIRST] - totals[PLAIN]:+.0f}", "")
    table.notes.append(
        "Round trips timed by the client (psycopg over the Unix socket, no pooler), each "
        "statement on its own. The plain role's call is SELECT $1 with the same token "
        "bound: what the protocol and the client cost alike. BEGIN and COMMIT of the "
        "gateway: its session's checks of every statement, and at COMMIT the end of the "
        "token identity (settings reset, prepared statements dropped, session locks and "
        "sequence caches let go, random() reseeded). Server-side decision: the p50 of "
        "oauth.audit_log.elapsed_ms of the first-seen calls, pg_oauth's own clock from the "
        "start of the check to a validator worker's decision (a token seen before is "
        "admitted by the decision cache, which audits nothing).")
    return table


def _decision_times(cluster: Cluster, tokens: dict[str, list[str]]) -> dict[str, str]:
    """The p50 of the audit rows' elapsed times of the first-seen calls (by token id), µs: a
    token seen before is admitted by the decision cache, which audits nothing."""
    out: dict[str, str] = {}
    for kind in (FIRST,):
        jtis = sorted({_jti(t) for t in tokens[kind]})
        deadline = time.monotonic() + 30
        rows: list[tuple] = []
        while time.monotonic() < deadline:
            rows = cluster.sql("SELECT elapsed_ms FROM oauth.audit_log WHERE kind = "
                               "'transaction' AND token_id = ANY(%s)", (jtis,))
            if len(rows) >= len(tokens[kind]):
                break
            time.sleep(0.2)
        if rows:
            out[kind] = f"{statistics.median(r[0] for r in rows) * 1000:.0f}"
    return out


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
