"""Configuration from oauth.issuers / oauth.role_map rows."""

from __future__ import annotations

import ipaddress

from unit_support import ISS, issuer_row, rule_row

from pyhook.config import DEFAULT_JWKS_REFRESH, Config, IssuerConfig


def test_issuer_row_values_are_kept() -> None:
    row = issuer_row(
        audiences=["a", "b"],
        leeway=12.5,
        max_token_lifetime=3600.0,
        jwks_refresh=60.0,
        jwks_cooldown=0.0,
        http_timeout=2.0,
        allow_insecure_http=True,
        algorithms=["ES256"],
        enabled=False,
    )
    cfg = IssuerConfig.from_row(row)
    assert cfg.issuer == ISS
    assert cfg.audiences == ("a", "b")
    assert cfg.algorithms == ("ES256",)
    assert (cfg.leeway, cfg.max_token_lifetime) == (12.5, 3600.0)
    assert (cfg.jwks_refresh, cfg.jwks_cooldown, cfg.http_timeout) == (60.0, 0.0, 2.0)
    assert cfg.allow_insecure_http and not cfg.enabled


def test_missing_columns_take_the_table_defaults() -> None:
    cfg = IssuerConfig.from_row({"issuer": ISS, "audiences": ["x"]})
    assert cfg.enabled and cfg.leeway == 30.0 and cfg.max_token_lifetime is None
    assert cfg.jwks_refresh == DEFAULT_JWKS_REFRESH
    assert "RS256" in cfg.algorithms and "HS256" not in cfg.algorithms


def test_rules_are_compiled_once_and_kept_in_id_order() -> None:
    config = Config.from_rows(
        [issuer_row()],
        [
            rule_row(5, "b", "role_b", databases=["app"], client_cidrs=["10.0.0.0/8"]),
            rule_row(2, "a", "role_a"),
            rule_row(9, "c", "role_c", issuer="https://other.example.com"),
        ],
        7,
    )
    assert config.version == 7
    assert [r.id for r in config.rules_for(ISS)] == [2, 5]
    rule = config.rules_for(ISS)[1]
    assert rule.regex.fullmatch("b")
    assert rule.databases == frozenset({"app"})
    assert rule.client_cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.rules_for("https://nobody.example.com") == []


def test_broken_rules_are_skipped_not_raised() -> None:
    config = Config.from_rows(
        [issuer_row()],
        [
            rule_row(1, "(unclosed", "x"),
            rule_row(2, "(a)", r"\2"),  # group 2 does not exist
            rule_row(3, "a", "ok", client_cidrs=["not-a-cidr"]),
            rule_row(4, "(a)", r"role_\1"),
        ],
    )
    assert [r.id for r in config.rules] == [4]
    assert len(config.skipped_rules) == 3
    assert all("skipped" in note for note in config.skipped_rules)
    assert "rule id 1" in config.skipped_rules[0]
