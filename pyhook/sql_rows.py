"""Rows in and out of SQL: what pyhook reads from a query result, and what its
answers look like as rows of oauth.validate() and oauth.explain().

Text going out is made acceptable to text and jsonb (no NUL, no lone surrogates):
a value PostgreSQL refuses would fail the whole call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pyhook.decision import Decision
from pyhook.errors import ValidatorError
from pyhook.jwks_cache import CachedJwks
from pyhook.sql_queries import TRACKING_TRIGGERS


@dataclass(frozen=True)
class ConfigState:
    """The row of oauth.config_state: the version and what changed in each table."""

    table_id: int  # the table's oid: a re-created extension starts over
    version: int
    changes_counted: int = 0  # moves with version while the counting triggers run
    issuers_changes: int = 0
    role_map_changes: int = 0
    revocations_rewrites: int = 0  # updates, deletes, and ids inserted out of order
    structure: int | None = None  # oauth._config_structure_version(); None: unknown
    tracking: int = len(TRACKING_TRIGGERS)  # of those triggers, how many fire

    def counted_since(self, old: ConfigState) -> bool:
        """Whether the counters explain every change since ``old``: the same table,
        no statement the triggers may have missed, every trigger firing, and each
        statement that moved the version also moved the counters."""
        return (
            self.table_id == old.table_id
            and self.structure == old.structure
            and self.tracking == old.tracking == len(TRACKING_TRIGGERS)
            and self.version - old.version == self.changes_counted - old.changes_counted
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ConfigState:
        return cls(
            table_id=int(row["table_id"]),
            version=int(row["version"]),
            changes_counted=int(row["changes_counted"]),
            issuers_changes=int(row["issuers_changes"]),
            role_map_changes=int(row["role_map_changes"]),
            revocations_rewrites=int(row["revocations_rewrites"]),
            structure=None if row["structure"] is None else int(row["structure"]),
            tracking=int(row["tracking"]),
        )


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


def error_row(exc: BaseException) -> dict[str, Any]:
    """The row of a call that failed with ``exc``: refused, the class name only."""
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


def cached_jwks(row: dict[str, Any]) -> CachedJwks:
    """One oauth.jwks_cache row (as JWKS_CACHE_QUERY returns it)."""
    return CachedJwks(
        issuer=str(row["issuer"]),
        jwks_uri=str(row["jwks_uri"]),
        discovered=bool(row["discovered"]),
        jwks=str(row["jwks"]),
        etag=row.get("etag"),
        max_age=None if row.get("max_age") is None else float(row["max_age"]),
        fetched_at=float(row["fetched_at"]),
    )


def explain_rows(
    decision: Decision, notes: list[str] | None = None
) -> list[dict[str, Any]]:
    """The trail of a decision as rows of oauth.explain(), then one ``note`` row per
    message the validator would have logged, ending with the verdict."""
    rows = [
        {
            "step": number,
            "name": check.name,
            "outcome": check.outcome,
            "input": _pg_text(check.input),
            "detail": _pg_text(check.info),
        }
        for number, check in enumerate(decision.trail, start=1)
    ]
    rows.extend(
        {
            "step": len(rows) + number,
            "name": "note",
            "outcome": "info",
            "input": "",
            "detail": _pg_text(note),
        }
        for number, note in enumerate(notes or [], start=1)
    )
    rows.append(
        {
            "step": len(rows) + 1,
            "name": "decision",
            "outcome": "pass" if decision.ok else "fail",
            "input": _pg_text(
                f"allowed roles: {', '.join(decision.allowed_roles) or 'none'}"
            ),
            "detail": _pg_text(f"{decision.reason}: {decision.detail}"),
        }
    )
    return rows


def statement_refusal_rows() -> list[dict[str, Any]]:
    """oauth.explain()'s answer to a token written into the statement text."""
    detail = (
        "token_in_statement: the token is part of the statement text, which "
        "log_statement, log_min_duration_statement, log_min_error_statement, "
        "auto_explain and pgaudit can write to the server log; pass it as a bind "
        "parameter ($1) with statement logging off for the transaction, or use "
        "pg-oauth explain --dsn"
    )
    return [
        {
            "step": 1,
            "name": "statement",
            "outcome": "fail",
            "input": "the token's payload or signature is in the statement text",
            "detail": "not checked",
        },
        {
            "step": 2,
            "name": "decision",
            "outcome": "fail",
            "input": "allowed roles: none",
            "detail": detail,
        },
    ]
