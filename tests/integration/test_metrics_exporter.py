"""monitoring/pg_oauth_queries.yaml in Debian's prometheus-postgres-exporter: the real
exporter, as a pg_monitor role that is not a superuser, against a cluster with token
logins behind it (admitted, from the decision cache, refused), scraped on 127.0.0.1; every
series the queries file defines is there, with the values those logins imply."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import CLUSTERS, attempt, setup_oauth, until
from pgcluster import DEFAULT_HBA, SERVER_USER, Cluster, free_port

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ROOT / "monitoring" / "pg_oauth_queries.yaml"
EXPORTER = "prometheus-postgres-exporter"
MONITOR = "oauth_exporter"
MONITOR_PASSWORD = "exporter-secret"

# The exporter's role logs in with a password: a line of its own before the trust lines,
# which pg_oauth turns into token logins.
HBA = f"host all {MONITOR} 127.0.0.1/32 scram-sha-256\n" + DEFAULT_HBA

Sample = tuple[str, dict[str, str], float]


def defined_series() -> set[str]:
    """<namespace>_<column> of every COUNTER and GAUGE column of the queries file, and
    <namespace>_<column>_bucket, _sum and _count of every HISTOGRAM column."""
    queries = yaml.safe_load(QUERIES.read_text(encoding="utf-8"))
    return {f"{namespace}_{column}{suffix}"
            for namespace, spec in queries.items()
            for metric in spec["metrics"]
            for column, what in metric.items()
            if what["usage"] != "LABEL"
            for suffix in (("_bucket", "_sum", "_count") if what["usage"] == "HISTOGRAM"
                           else ("",))}  # fmt: skip


# pg_oauth_duration_seconds' bucket bounds (oauth.stats_histogram): 2^k microseconds
HISTOGRAM_BOUNDS = [2**k / 1e6 for k in range(6, 24)] + [math.inf]


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = {k: bytes(v, "utf-8").decode("unicode_escape")
                  for k, v in _LABEL.findall(match.group(2) or "")}  # fmt: skip
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def exporter_output(binary: str, flag: str) -> str:
    run = subprocess.run([binary, flag], capture_output=True, text=True, check=False)
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def exporter() -> list[str]:
    """The exporter's path and the flags its version knows."""
    binary = shutil.which(EXPORTER)
    if binary is None:
        pytest.skip(f"{EXPORTER} is not installed (Debian package {EXPORTER}: make test-deps)")
    flags = exporter_output(binary, "--help")
    # deprecated from 0.17's --help on, but the only way custom queries reach the
    # exporter in every version Debian ships (0.11, 0.17, 0.19)
    if "--extend.query-path" not in flags:
        version = re.search(r"version (\S+)", exporter_output(binary, "--version"))
        pytest.skip(f"{EXPORTER} {version.group(1) if version else '(unknown version)'} has "
                    "no --extend.query-path: custom queries need another configuration there")
    wanted = ["--disable-default-metrics", "--disable-settings-metrics"]
    return [binary, *(f for f in wanted if f in flags)]


@pytest.fixture(scope="module")
def mcluster(issuer) -> Iterator[Cluster]:
    # the brake on, so that it counts the refusals below (far from braking anyone)
    cluster = Cluster(settings={"pg_oauth.rate_limit_failures": 1000}, hba=HBA).init().start()
    CLUSTERS.append(cluster)
    setup_oauth(cluster, issuer.issuer)
    cluster.wait_for_workers()
    cluster.sql(f"CREATE ROLE {MONITOR} LOGIN PASSWORD '{MONITOR_PASSWORD}' IN ROLE pg_monitor")
    yield cluster
    cluster.stop()


@contextlib.contextmanager
def running_exporter(cluster: Cluster, exporter: list[str]) -> Iterator[str]:
    """The exporter on 127.0.0.1 with the queries file, as the unprivileged server user
    when this is root; yields its /metrics URL."""
    queries = cluster.base / "pg_oauth_queries.yaml"
    shutil.copy(QUERIES, queries)
    os.chmod(queries, 0o644)
    port = free_port()
    binary, *flags = exporter
    cmd = [binary, f"--extend.query-path={queries}",
           f"--web.listen-address=127.0.0.1:{port}", *flags]  # fmt: skip
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
    dsn = (f"postgresql://{MONITOR}:{MONITOR_PASSWORD}@127.0.0.1:{cluster.port}/postgres"
           "?sslmode=disable")
    log = cluster.base / "exporter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, "DATA_SOURCE_NAME": dsn},
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.read().decode()


def values(samples: list[Sample], name: str, **labels: str) -> list[float]:
    return [v for n, lab, v in samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())]  # fmt: skip


def test_the_exporter_reads_every_series(mcluster, issuer, exporter):
    assert mcluster.sql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{MONITOR}'") == [
        (False,)]
    before = dict(mcluster.sql("SELECT phase, total FROM oauth.stats_histogram "
                               "WHERE issuer = %s AND le_seconds = 'Infinity'", (issuer.issuer,)))
    token = issuer.mint(sub="alice")
    assert attempt(mcluster, "alice", token) == "ok"
    # the same token again: admitted from the decision cache
    assert attempt(mcluster, "alice", token) == "ok"
    assert attempt(mcluster, "alice", issuer.mint(sub="alice", lifetime=-120)) == "expired"
    wanted = defined_series()
    with mcluster.token_connect("bob", issuer.mint(sub="bob")) as session, \
            running_exporter(mcluster, exporter) as url:
        session.execute("SELECT 1")

        def complete() -> list[Sample] | None:
            samples = parse_metrics(scrape(url))
            return samples if wanted <= {name for name, _, _ in samples} else None

        try:
            samples = until(complete, timeout=30, what="every series of the queries file",
                            ignore=(OSError,))
        except AssertionError:
            log = (mcluster.base / "exporter.log").read_text(errors="replace")
            tail = "\n".join(log.splitlines()[-10:])
            seen = {n for n, _, _ in parse_metrics(scrape(url))}
            raise AssertionError(f"missing {sorted(wanted - seen)}; exporter log:\n{tail}") \
                from None

    iss = issuer.issuer
    assert values(samples, "pg_oauth_logins_attempts_total", issuer=iss)[0] >= 4
    assert values(samples, "pg_oauth_logins_successes_total", issuer=iss)[0] >= 3
    assert values(samples, "pg_oauth_logins_refusals_total", issuer=iss)[0] >= 1
    assert values(samples, "pg_oauth_refusals_total", issuer=iss, reason="expired")[0] >= 1
    # every refusal counted by reason is a refusal counted in all
    assert sum(values(samples, "pg_oauth_refusals_total", issuer=iss)) == \
        values(samples, "pg_oauth_logins_refusals_total", issuer=iss)[0]
    assert values(samples, "pg_oauth_cache_decision_hits_total", issuer=iss)[0] >= 1
    assert values(samples, "pg_oauth_jwks_fetches_total", issuer=iss)[0] >= 1
    assert values(samples, "pg_oauth_jwks_fetch_failures_total", issuer=iss) == [0]
    for phase in ("validation", "queue_wait"):
        p50 = values(samples, "pg_oauth_latency_seconds", issuer=iss, phase=phase,
                     quantile="0.5")  # fmt: skip
        p99 = values(samples, "pg_oauth_latency_seconds", issuer=iss, phase=phase,
                     quantile="0.99")  # fmt: skip
        assert len(p50) == len(p99) == 1, (phase, p50, p99)
        assert 0 <= p50[0] <= p99[0] < 30, (phase, p50, p99)
    # the histograms: per phase, cumulative counts at the bounds, +Inf equal to the count;
    # a worker decided three logins (alice's first, the expired one, bob's), and the
    # login phase counts every attempt
    for phase in ("validation", "queue_wait", "login"):
        buckets = sorted((float(lab["le"]), v) for n, lab, v in samples
                         if n == "pg_oauth_duration_seconds_bucket"
                         and lab.get("issuer") == iss and lab.get("phase") == phase)  # fmt: skip
        assert [le for le, _ in buckets] == HISTOGRAM_BOUNDS, (phase, buckets)
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), (phase, counts)
        count = values(samples, "pg_oauth_duration_seconds_count", issuer=iss, phase=phase)
        assert count == [counts[-1]], (phase, count, counts)
        total = values(samples, "pg_oauth_duration_seconds_sum", issuer=iss, phase=phase)
        # a wait for a worker may take no whole microsecond
        assert total[0] > 0 or (phase == "queue_wait" and total == [0]), (phase, total)
    for phase in ("validation", "queue_wait"):
        assert values(samples, "pg_oauth_duration_seconds_count", issuer=iss, phase=phase) \
            == [before.get(phase, 0) + 3], phase
    assert values(samples, "pg_oauth_duration_seconds_count", issuer=iss, phase="login") \
        == values(samples, "pg_oauth_logins_attempts_total", issuer=iss)
    assert values(samples, "pg_oauth_duration_seconds_count", issuer=iss, phase="login") \
        == [before.get("login", 0) + 4]
    assert values(samples, "pg_oauth_sessions_live")[0] >= 1
    assert values(samples, "pg_oauth_sessions_past_expiry") == [0]
    assert values(samples, "pg_oauth_brake_enabled") == [1]
    assert values(samples, "pg_oauth_brake_addresses")[0] >= 1
    assert values(samples, "pg_oauth_brake_failures")[0] >= 1
    # one refusal per address: counted, far from the threshold
    assert values(samples, "pg_oauth_brake_one_at_a_time") == [0]
    assert values(samples, "pg_oauth_brake_delayed")[0] >= 0
    configured = values(samples, "pg_oauth_workers_configured")
    assert configured[0] >= 1
    assert values(samples, "pg_oauth_workers_ready") == configured
    assert values(samples, "pg_oauth_workers_requests_total")[0] >= 2
    fetched = values(samples, "pg_oauth_keys_last_fetch_time_seconds", issuer=iss)
    assert fetched and time.time() - 3600 < fetched[0] <= time.time() + 60, fetched
    assert values(samples, "pg_oauth_keys_refresh_interval_seconds", issuer=iss)[0] > 0
    assert values(samples, "pg_oauth_keys_max_stale_seconds", issuer=iss) == [86400]
    assert values(samples, "pg_oauth_keys_count", issuer=iss)[0] >= 1


def test_the_queries_run_as_the_monitoring_role_whatever_its_search_path(mcluster, issuer):
    """Each query of the file, run as a pg_monitor member that is not a superuser: no
    permission error; with a schema of look-alike functions first on its search_path,
    the same rows (every function and relation is schema-qualified)."""
    queries = yaml.safe_load(QUERIES.read_text(encoding="utf-8"))
    assert attempt(mcluster, "alice", issuer.mint(sub="alice")) == "ok"
    mcluster.sql(f"""
        DROP SCHEMA IF EXISTS lookalike CASCADE;
        CREATE SCHEMA lookalike;
        GRANT USAGE ON SCHEMA lookalike TO {MONITOR};
        CREATE FUNCTION lookalike.now() RETURNS timestamptz
            LANGUAGE sql AS $$SELECT '2000-01-01'::timestamptz$$;
        CREATE FUNCTION lookalike.date_part(text, timestamptz) RETURNS float8
            LANGUAGE sql AS $$SELECT -1::float8$$;
        CREATE VIEW lookalike.stats AS SELECT * FROM oauth.stats WHERE false;
    """)
    try:
        with psycopg.connect(host="127.0.0.1", port=mcluster.port, dbname="postgres",
                             user=MONITOR, password=MONITOR_PASSWORD, sslmode="disable",
                             autocommit=True) as conn:  # fmt: skip
            plain = {name: conn.execute(spec["query"]).fetchall()
                     for name, spec in queries.items()}  # fmt: skip
            conn.execute("SET search_path = lookalike, pg_catalog, oauth")
            for name in ("pg_oauth_keys", "pg_oauth_sessions", "pg_oauth_logins"):
                assert conn.execute(queries[name]["query"]).fetchall() == plain[name], name
            assert plain["pg_oauth_keys"] and plain["pg_oauth_keys"][0][1] > 0
            assert plain["pg_oauth_workers"][0][0] >= 1
            # the key material itself stays out of its reach
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT jwks FROM oauth.jwks_cache")
    finally:
        mcluster.sql("DROP SCHEMA lookalike CASCADE")


def test_pg_read_all_stats_is_the_grant_the_queries_need(mcluster):
    """docs/monitoring.md's grant: pg_read_all_stats alone (without the rest of
    pg_monitor) runs every query; a role without it runs none that reads pg_oauth's
    state."""
    queries = yaml.safe_load(QUERIES.read_text(encoding="utf-8"))
    mcluster.sql(f"""
        DROP ROLE IF EXISTS stats_only; DROP ROLE IF EXISTS no_stats;
        CREATE ROLE stats_only NOLOGIN IN ROLE pg_read_all_stats;
        CREATE ROLE no_stats NOLOGIN;
        GRANT stats_only, no_stats TO {MONITOR};
    """)
    try:
        with psycopg.connect(host="127.0.0.1", port=mcluster.port, dbname="postgres",
                             user=MONITOR, password=MONITOR_PASSWORD, sslmode="disable",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute("SET ROLE stats_only")
            for spec in queries.values():
                conn.execute(spec["query"]).fetchall()
            conn.execute("SET ROLE no_stats")
            refused = []
            for name, spec in queries.items():
                try:
                    conn.execute(spec["query"])
                except psycopg.errors.InsufficientPrivilege:
                    refused.append(name)
            assert refused == list(queries)
    finally:
        mcluster.sql("DROP ROLE stats_only; DROP ROLE no_stats")


def test_the_histogram_query_adds_up_rows_without_an_issuer_name(mcluster):
    """Two slots without a name (refused before an issuer was known; a name the identity
    store had no room for) become one series per phase, their counts added up: never two
    series with the same labels, nor bounds listed twice."""
    query = yaml.safe_load(QUERIES.read_text(encoding="utf-8"))["pg_oauth_duration"]["query"]
    assert "oauth.stats_histogram" in query
    rows = []
    for issuer, counts, total in ((None, [1, 2, 3], 4), (None, [10, 20, 30], 40),
                                  ("https://a.example", [5, 5, 6], 6)):
        for le, count in zip([6.4e-05, 0.000128, 0.000256, float("inf")], [*counts, total]):
            rows.append((issuer, "login", le, count, total / 1000, total))
    with psycopg.connect(host="127.0.0.1", port=mcluster.port, dbname="postgres",
                         user=MONITOR, password=MONITOR_PASSWORD, sslmode="disable",
                         autocommit=True) as conn:  # fmt: skip
        conn.execute("CREATE TEMP TABLE fake_hist (issuer text, phase text, le_seconds float8,"
                     " count bigint, sum_seconds float8, total bigint)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pg_temp.fake_hist VALUES (%s, %s, %s, %s, %s, %s)", rows)
        got = conn.execute(query.replace("oauth.stats_histogram", "pg_temp.fake_hist")).fetchall()
    by_issuer = {issuer: (bounds, counts, total_sum, count) for
                 issuer, phase, bounds, counts, total_sum, count in got}
    assert len(got) == 2 and set(by_issuer) == {"", "https://a.example"}
    bounds, counts, seconds, count = by_issuer[""]
    assert bounds == [6.4e-05, 0.000128, 0.000256]
    assert counts == [11, 22, 33] and count == 44 and seconds == pytest.approx(0.044)
    assert by_issuer["https://a.example"][1:] == ([5, 5, 6], pytest.approx(0.006), 6)
