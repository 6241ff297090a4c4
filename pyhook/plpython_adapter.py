"""The PL/Python entry point: oauth.validate() and oauth.warmup() call this.

``plpy`` is the module PL/Python hands to functions; nothing here imports from
PostgreSQL. One Adapter lives per worker process (in PL/Python's GD) and keeps
the prepared plans, the configuration (per version) and the key store.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from pyhook.config import Config
from pyhook.decision import Decision
from pyhook.errors import ValidatorError
from pyhook.jwks_cache import KeyStore
from pyhook.validator import validate

ISSUERS_QUERY = (
    "SELECT issuer, audiences, jwks_uri, jwks::text AS jwks, algorithms, "
    "extract(epoch FROM leeway)::float8 AS leeway, "
    "extract(epoch FROM max_token_lifetime)::float8 AS max_token_lifetime, enabled, "
    "extract(epoch FROM jwks_refresh)::float8 AS jwks_refresh, "
    "extract(epoch FROM jwks_cooldown)::float8 AS jwks_cooldown, "
    "extract(epoch FROM http_timeout)::float8 AS http_timeout, allow_insecure_http, "
    "max_sessions_per_subject FROM oauth.issuers"
)
RULES_QUERY = (
    "SELECT id, issuer, claim, pattern, role, databases, client_cidrs::text[] AS client_cidrs, "
    "max_sessions FROM oauth.role_map ORDER BY id"
)
VERSION_QUERY = "SELECT version FROM oauth.config_state"


def _pg_text(value: str) -> str:
    # text cannot hold NUL, and PL/Python cannot encode lone surrogates (which JSON
    # \ud800 escapes produce): both would make the whole call fail
    if value.isascii() and "\x00" not in value:
        return value
    return "".join(
        "\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value
    )


def _pg_json(value: Any) -> Any:
    """A copy of a JSON value whose strings jsonb accepts (no NUL, no lone surrogates)."""
    if isinstance(value, str):
        return _pg_text(value)
    if isinstance(value, dict):
        return {_pg_text(k): _pg_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pg_json(v) for v in value]
    return value


def _optional_text(value: str | None) -> str | None:
    return None if value is None else _pg_text(value)


def decision_row(decision: Decision) -> dict[str, Any]:
    """A Decision as one row of oauth.validate()'s result table."""
    return {
        "ok": decision.ok,
        "reason": decision.reason,
        "detail": _pg_text(decision.detail),
        "allowed_roles": [_pg_text(r) for r in decision.allowed_roles],
        "issuer": _optional_text(decision.issuer),
        "subject": _optional_text(decision.subject),
        "token_id": _optional_text(decision.token_id),
        "expires_at": decision.expires_at.isoformat() if decision.expires_at else None,
        "kid": _optional_text(decision.kid),
        "alg": _optional_text(decision.alg),
        "key_cache": decision.key_cache,
        "max_sessions": decision.max_sessions,
        "claims": None if decision.claims is None else claims_json(decision.claims),
    }


def claims_json(claims: dict[str, Any]) -> str:
    """Claims as compact JSON text that jsonb accepts."""
    text = json.dumps(claims, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
        clean = "\\u0000" not in text
    except UnicodeEncodeError:
        clean = False
    if clean:
        return text
    return json.dumps(_pg_json(claims), ensure_ascii=False, separators=(",", ":"))


def _error_row(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "reason": ValidatorError.reason,
        "detail": type(exc).__name__,
        "allowed_roles": [],
        "issuer": None,
        "subject": None,
        "token_id": None,
        "expires_at": None,
        "kid": None,
        "alg": None,
        "key_cache": None,
        "max_sessions": None,
        "claims": None,
    }


class Adapter:
    def __init__(self, plpy: Any) -> None:
        self.plpy = plpy
        self.keys = KeyStore()
        self.config: Config | None = None
        self.config_version: object = None
        self._plans: dict[str, Any] = {}

    def validate(
        self,
        token: str | bytes,
        requested_role: str,
        database: str,
        client_addr: str | None,
        ssl: bool,
        config_version: int | None,
    ) -> dict[str, Any]:
        """One row for oauth.validate(); never raises."""
        try:
            config = self._config(config_version)
            decision = validate(
                token, requested_role, database, client_addr, ssl, config, self.keys
            )
            return decision_row(decision)
        except Exception as exc:  # noqa: BLE001 - fail closed, never raise into the worker
            self._warn(f"pg_oauth: validator error: {type(exc).__name__}")
            return _error_row(exc)

    def warmup(self) -> str:
        """Load configuration and fetch keys that are missing or due; a one-line summary."""
        try:
            config = self._config(None)
        except Exception as exc:  # noqa: BLE001 - warmup reports, never raises
            self._warn(
                f"pg_oauth: loading configuration failed: {type(exc).__name__}: {exc}"
            )
            return f"configuration unavailable ({type(exc).__name__})"
        failed = 0
        for issuer in self.keys.refresh_due(config):
            try:
                self.keys.refresh(issuer)
            except Exception as exc:  # noqa: BLE001 - one issuer must not stop the others
                failed += 1
                detail = getattr(exc, "detail", type(exc).__name__)
                self._warn(f"pg_oauth: keys of issuer {issuer.issuer!a}: {detail}")
        enabled = [i for i in config.issuers.values() if i.enabled]
        key_count = sum(len(self.keys.keys(i.issuer)) for i in enabled)
        summary = f"{len(enabled)} issuers, {key_count} keys"
        return summary + (f", {failed} issuers without fresh keys" if failed else "")

    # -- configuration ------------------------------------------------------

    def _config(self, config_version: int | None) -> Config:
        """The configuration of ``config_version`` (None: read oauth.config_state).

        The shared-memory counter and the table's version count apart, so the
        cache key says which of the two it is.
        """
        key: object
        if config_version is None:
            rows = self._execute("version", VERSION_QUERY)
            key = ("table", rows[0]["version"]) if len(rows) else None
        else:
            key = ("shared", config_version)
        if self.config is not None and key is not None and key == self.config_version:
            return self.config
        config_version = key
        config = Config.from_rows(
            [dict(row) for row in self._execute("issuers", ISSUERS_QUERY)],
            [dict(row) for row in self._execute("rules", RULES_QUERY)],
            config_version,
        )
        for note in config.skipped_rules:
            self._warn(f"pg_oauth: {note}")
        self.keys.prune(config)
        self.config, self.config_version = config, config_version
        self._log(
            f"pg_oauth: configuration version {config_version} loaded: "
            f"{len(config.issuers)} issuers, {len(config.rules)} role_map rules"
        )
        return config

    def _execute(self, name: str, query: str) -> Any:
        plan = self._plans.get(name)
        if plan is None:
            plan = self.plpy.prepare(query, [])
            self._plans[name] = plan
        return self.plpy.execute(plan, [])

    def _warn(self, message: str) -> None:
        # logging must never turn a decision into an error
        with contextlib.suppress(Exception):
            self.plpy.warning(message)

    def _log(self, message: str) -> None:
        with contextlib.suppress(Exception):
            self.plpy.log(message)
