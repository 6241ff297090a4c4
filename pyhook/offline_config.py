"""Configuration for ``pg-oauth explain``/``check``: a JSON file or a live database.

The JSON file mirrors the tables (one list per table, columns as keys)::

    {"issuers":     [{"issuer": "https://idp.example.com", "audiences": ["db"],
                      "jwks_uri": null, "leeway": 30, "max_token_lifetime": "1 hour"}],
     "role_map":    [{"issuer": "https://idp.example.com", "claim": "email",
                      "pattern": "(.*)@example\\.com", "role": "\\1"}],
     "revocations": [{"subject": "mallory", "expires_at": "2030-01-01T00:00:00Z"}],
     "jwks_cache":  []}

Intervals are seconds or strings such as ``"90 s"``, ``"5 minutes"``, ``"1 hour"``;
``jwks`` may be an object; role_map and revocation ids default to the position.
With a database, the tables are read with the validator's own queries (psycopg
needed); ``oauth.jwks_cache`` then provides keys without the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pyhook.config import Config
from pyhook.jwks_cache import CachedJwks
from pyhook.local_connection import connection_params
from pyhook.sql_queries import (
    ISSUERS_QUERY,
    JWKS_CACHE_QUERY,
    REVOCATIONS_QUERY,
    RULES_QUERY,
)
from pyhook.sql_rows import cached_jwks

_INTERVAL_COLUMNS = (
    "leeway",
    "max_token_lifetime",
    "jwks_refresh",
    "jwks_cooldown",
    "http_timeout",
    "jwks_max_stale",
    "jwks_refresh_min",
    "jwks_refresh_max",
)
_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_INTERVAL = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*")


class ConfigFileError(ValueError):
    """The configuration document cannot be used; the message says where."""


def parse_interval(value: Any, where: str) -> float | None:
    """Seconds from a number or a string like ``"5 minutes"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigFileError(
            f"{where}: expected seconds or an interval, got {value!r}"
        )
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _INTERVAL.fullmatch(value.lower())
        unit = match.group(2) if match else None
        if match and (not unit or unit in _UNITS):
            return float(match.group(1)) * _UNITS.get(unit or "s", 1)
    raise ConfigFileError(f"{where}: cannot read {value!r} as an interval")


def _timestamp(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))  # noqa: FURB162 - "Z" needs 3.11
        except ValueError:
            pass
        else:
            if stamp.tzinfo is None:
                raise ConfigFileError(f"{where}: {value!r} has no time zone")
            return stamp.timestamp()
    raise ConfigFileError(f"{where}: cannot read {value!r} as a time")


def _rows(document: Mapping[str, Any], table: str) -> list[dict[str, Any]]:
    rows = document.get(table, [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigFileError(f"{table}: expected a list of objects")
    return [dict(r) for r in rows]


def config_from_document(
    document: Any,
) -> tuple[Config, list[CachedJwks]]:
    """The configuration and cached key documents of a parsed JSON document."""
    if not isinstance(document, dict):
        raise ConfigFileError("the configuration must be a JSON object")
    unknown = set(document) - {"issuers", "role_map", "revocations", "jwks_cache"}
    if unknown:
        raise ConfigFileError(f"unknown sections: {', '.join(sorted(unknown))}")
    issuers = _rows(document, "issuers")
    for position, row in enumerate(issuers):
        where = f"issuers[{position}]"
        if not isinstance(row.get("issuer"), str) or not isinstance(
            row.get("audiences"), list
        ):
            raise ConfigFileError(
                f"{where}: issuer (text) and audiences (list) are required"
            )
        for column in _INTERVAL_COLUMNS:
            if column in row:
                row[column] = parse_interval(row[column], f"{where}.{column}")
        if not isinstance(row.get("require_sub", True), bool):
            raise ConfigFileError(f"{where}.require_sub: expected true or false")
        if isinstance(row.get("jwks"), (dict, list)):
            row["jwks"] = json.dumps(row["jwks"])
    rules = _rows(document, "role_map")
    for position, row in enumerate(rules):
        row.setdefault("id", position + 1)
        if not isinstance(row.get("pattern"), str) or not isinstance(
            row.get("role"), str
        ):
            raise ConfigFileError(
                f"role_map[{position}]: pattern and role are required"
            )
    revocations = _rows(document, "revocations")
    for position, row in enumerate(revocations):
        row.setdefault("id", position + 1)
        row["expires_at"] = _timestamp(
            row.get("expires_at"), f"revocations[{position}].expires_at"
        )
        row["issued_before"] = _timestamp(
            row.get("issued_before"), f"revocations[{position}].issued_before"
        )
    cached: list[CachedJwks] = []
    for position, row in enumerate(_rows(document, "jwks_cache")):
        try:
            if isinstance(row.get("jwks"), (dict, list)):
                row["jwks"] = json.dumps(row["jwks"])
            row["max_age"] = parse_interval(row.get("max_age"), "max_age")
            row["fetched_at"] = _timestamp(row.get("fetched_at"), "fetched_at")
            cached.append(cached_jwks(row))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigFileError(f"jwks_cache[{position}]: {exc}") from None
    try:
        config = Config.from_rows(issuers, rules, "file", revocations)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigFileError(f"unusable configuration: {exc!r}") from None
    return config, cached


def config_from_file(path: str) -> tuple[Config, list[CachedJwks]]:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except ValueError as exc:
        raise ConfigFileError(f"{path}: not valid JSON ({exc})") from None
    return config_from_document(document)


def config_from_database(dsn: str) -> tuple[Config, list[CachedJwks]]:
    """Read oauth.* with the validator's queries (needs psycopg and a superuser).

    As root with no user in ``dsn``, as the postgres OS user
    (pyhook.local_connection)."""
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise ConfigFileError(
            "--dsn needs psycopg (pip install 'psycopg[binary]'); or use --config"
        ) from None
    try:
        params = connection_params(dsn)
        with psycopg.connect(**params, row_factory=dict_row) as conn:
            conn.read_only = True
            # the database's own settings must not pick the functions a superuser runs
            conn.execute("SET search_path = pg_catalog, pg_temp")
            issuers = conn.execute(ISSUERS_QUERY).fetchall()
            rules = conn.execute(RULES_QUERY).fetchall()
            revocations = conn.execute(REVOCATIONS_QUERY).fetchall()
            cache = conn.execute(JWKS_CACHE_QUERY).fetchall()
    except psycopg.Error as exc:
        raise ConfigFileError(f"reading the configuration failed: {exc}") from None
    config = Config.from_rows(issuers, rules, "database", revocations)
    return config, [cached_jwks(row) for row in cache]
