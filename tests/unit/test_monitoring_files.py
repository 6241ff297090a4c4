"""monitoring/: the Grafana dashboard and the Prometheus alert rules read only series that
pg_oauth_queries.yaml defines (the dashboard every one of them), by labels it gives them;
the queries file keeps the exporter's format and qualifies every relation and function;
promtool (Debian's, where installed) accepts the rules, their unit tests pass, and the
dashboard's expressions parse."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from unit_support import ROOT

MONITORING = ROOT / "monitoring"
QUERIES = MONITORING / "pg_oauth_queries.yaml"
DASHBOARD = MONITORING / "pg_oauth_dashboard.json"
ALERTS = MONITORING / "pg_oauth_alerts.yml"
ALERT_TESTS = MONITORING / "pg_oauth_alerts_test.yml"

# labels every scraped series has from Prometheus itself
TARGET_LABELS = {"instance", "job"}
# PromQL words that are neither series nor functions
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def queries() -> dict[str, Any]:
    return yaml.safe_load(QUERIES.read_text(encoding="utf-8"))


# the series the exporter makes of a HISTOGRAM column (the bare name is none of them)
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def series_of(namespace: str, column: str, usage: str) -> set[str]:
    """The series the exporter makes of one column of a query."""
    name = f"{namespace}_{column}"
    if usage == "LABEL":
        return set()
    if usage == "HISTOGRAM":
        return {name + suffix for suffix in HISTOGRAM_SERIES}
    return {name}


def defined_series() -> set[str]:
    return {series
            for namespace, spec in queries().items()
            for metric in spec["metrics"]
            for column, what in metric.items()
            for series in series_of(namespace, column, what["usage"])}  # fmt: skip


def defined_labels() -> set[str]:
    """The LABEL columns, and le where a HISTOGRAM column gives its buckets one."""
    labels = set()
    for spec in queries().values():
        for metric in spec["metrics"]:
            for column, what in metric.items():
                if what["usage"] == "LABEL":
                    labels.add(column)
                elif what["usage"] == "HISTOGRAM":
                    labels.add("le")
    return labels


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables given values PromQL parses."""
    expr = expr.replace("$__rate_interval", "5m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def promql_references(expr: str) -> tuple[set[str], set[str]]:
    """(series, labels) an expression reads: series are the bare names left once strings,
    label matchers, ranges, grouping clauses and function calls are taken away."""
    labels: set[str] = set()
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    for _, names in GROUPING.findall(expr):
        labels.update(n.strip() for n in names.split(",") if n.strip())
    expr = GROUPING.sub(" ", expr)
    names = re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {n for n in names if n.lower() not in KEYWORDS}, labels


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for item in items for p in [item, *panels(item.get("panels", []))]]

    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


def dashboard_variable_series() -> set[str]:
    """The series of the dashboard's label_values() variables."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = set()
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert match, f"variable {var['name']}: {query}"
            assert match.group(2) in defined_labels() | TARGET_LABELS
            found.add(match.group(1))
    return found


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert exprs, "no alert rules"
    return exprs


def test_a_histogram_column_defines_its_bucket_sum_and_count_series() -> None:
    assert series_of("pg_oauth_x", "seconds", "HISTOGRAM") == {
        "pg_oauth_x_seconds_bucket", "pg_oauth_x_seconds_sum", "pg_oauth_x_seconds_count"}
    assert series_of("pg_oauth_x", "total", "COUNTER") == {"pg_oauth_x_total"}
    assert series_of("pg_oauth_x", "issuer", "LABEL") == set()
    # the queries file has one, and the bare name of its column is no series
    histograms = {f"{n}_{c}" for n, spec in queries().items() for m in spec["metrics"]
                  for c, what in m.items() if what["usage"] == "HISTOGRAM"}  # fmt: skip
    assert histograms
    assert not histograms & defined_series()
    assert "le" in defined_labels()


def test_the_checker_sees_series_and_labels() -> None:
    series, labels = promql_references(
        'sum by (reason) (rate(pg_oauth_refusals_total{instance=~"$x", issuer!="a{b}"}[5m]))'
        " / on (instance) group_left pg_up and time() - node_boot_time_seconds offset 5m"
        ' > 0.5 * absent(up{job="pg"})')
    assert series == {"pg_oauth_refusals_total", "pg_up", "node_boot_time_seconds", "up"}
    assert labels == {"reason", "instance", "issuer", "job"}


def test_every_series_the_dashboard_reads_is_defined_and_it_reads_them_all() -> None:
    read: set[str] = dashboard_variable_series()
    labels: set[str] = set()
    for expr in dashboard_expressions():
        series, used = promql_references(grafana_to_promql(expr))
        read |= series
        labels |= used
    assert read - defined_series() == set(), "not in pg_oauth_queries.yaml"
    assert defined_series() - read == set(), "defined but not on the dashboard"
    assert labels - defined_labels() - TARGET_LABELS == set()


def test_every_series_the_alert_rules_read_is_defined() -> None:
    read: set[str] = set()
    labels: set[str] = set()
    for expr in alert_expressions():
        series, used = promql_references(expr)
        read |= series
        labels |= used
    assert read, "no series read by the alert rules"
    assert read - defined_series() == set(), "not in pg_oauth_queries.yaml"
    assert labels - defined_labels() - TARGET_LABELS == set()


def test_the_alert_rules_tests_feed_only_defined_series() -> None:
    """promtool's input series are the exporter's, so the rule tests test the real names
    (the one absent() case may name an exporter series of its own)."""
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    fed = {re.match(r"\s*(\w+)", s["series"]).group(1)
           for t in tests["tests"] for s in t["input_series"]}  # fmt: skip
    assert fed - defined_series() <= {"pg_up"}
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
              for r in g["rules"]}  # fmt: skip
    tested = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"]
              if a["exp_alerts"]}  # fmt: skip
    assert alerts - tested == set(), "alerts no promtool test sees firing"


# SQL words written with a parenthesis after them that are not functions
SQL_SYNTAX = {"coalesce", "filter", "in", "values", "lateral", "exists", "select", "from",
              "join", "where", "on", "and", "or", "not"}


def test_the_queries_file_has_the_exporter_format_and_qualified_names() -> None:
    for namespace, spec in queries().items():
        assert re.fullmatch(r"pg_oauth_[a-z_]+", namespace), namespace
        assert set(spec) <= {"query", "metrics", "master", "cache_seconds"}, namespace
        assert spec.get("master") is True, f"{namespace}: run on the DSN's database only"
        query = spec["query"]
        for metric in spec["metrics"]:
            ((column, what),) = metric.items()
            assert what["usage"] in {"LABEL", "COUNTER", "GAUGE", "HISTOGRAM"}, \
                (namespace, column)
            assert what["description"].strip(), (namespace, column)
            assert what["usage"] != "COUNTER" or column.endswith("total"), (namespace, column)
            assert re.search(rf"\b{column}\b", query), f"{namespace}: no column {column}"
            # the exporter reads a histogram's counts, sum and count from columns of
            # their own beside the bounds' (a missing one: no series, an error logged)
            for suffix in HISTOGRAM_SERIES if what["usage"] == "HISTOGRAM" else ():
                assert re.search(rf"\bAS {column}{suffix}\b", query), \
                    f"{namespace}: no column {column}{suffix}"
        for relation in re.findall(r"\b(?:FROM|JOIN)\s+(?!LATERAL\b|\()([\w.]+)", query):
            assert relation.startswith("oauth."), f"{namespace}: {relation} unqualified"
        calls = re.findall(r"(?<![\w.])(?<!AS )([A-Za-z_]\w*)\s*\(", query)
        unqualified = {c for c in calls if c.lower() not in SQL_SYNTAX}
        assert not unqualified, f"{namespace}: {unqualified} not schema-qualified"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian 12: package prometheus; Debian 13 "
                    "and later: promtool; make test-deps installs it)")
    return path


def test_promtool_accepts_the_alert_rules() -> None:
    run = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_alert_rules_fire_as_their_promtool_tests_say() -> None:
    run = subprocess.run([promtool(), "test", "rules", ALERT_TESTS.name],
                         cwd=MONITORING, capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Each expression as a recording rule: promtool check rules parses it as PromQL."""
    rules = [{"record": f"dashboard:expression_{i}", "expr": grafana_to_promql(e)}
             for i, e in enumerate(dashboard_expressions())]  # fmt: skip
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
