"""``pg-oauth doctor``: the server's setup checker, ``oauth.check_setup()``, from a shell.

It connects with psycopg, makes sure the extension is installed in that database
(otherwise the one finding says where ``CREATE EXTENSION`` belongs), and returns
every finding of ``oauth.check_setup()``, and an enabled issuer for which the server
holds no usable keys (its JWKS unreachable, or empty): every token of it is refused.
It takes no token and prints none; the connection string is never printed either.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyhook.local_connection import connection_params

# exit codes: no risk (warnings allowed), at least one risk, cannot check
EXIT_CLEAN, EXIT_RISKS, EXIT_CANNOT_CHECK = 0, 1, 2

CONNECT_TIMEOUT = 10  # seconds, unless the DSN says otherwise

_WHERE_QUERY = """
SELECT pg_catalog.current_database(),
       pg_catalog.current_setting('pg_oauth.database', true),
       EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_oauth')
"""
_CHECK_QUERY = "SELECT severity, check_name, finding, fix FROM oauth.check_setup()"
# What the server holds for each enabled issuer: pinned keys (oauth.issuers.jwks), or
# the last good document its workers fetched (oauth.jwks_cache, replicated to standbys).
_KEYS_QUERY = """
SELECT i.issuer, i.jwks IS NOT NULL, c.issuer IS NOT NULL, c.fetched_at::pg_catalog.text,
       CASE WHEN pg_catalog.jsonb_typeof(COALESCE(i.jwks, c.jwks) OPERATOR(pg_catalog.->) 'keys')
                 OPERATOR(pg_catalog.=) 'array'
            THEN pg_catalog.jsonb_array_length(COALESCE(i.jwks, c.jwks) OPERATOR(pg_catalog.->) 'keys')
            ELSE 0 END,
       COALESCE(i.jwks_uri, i.issuer OPERATOR(pg_catalog.||) '/.well-known/openid-configuration')
  FROM oauth.issuers i LEFT JOIN oauth.jwks_cache c ON c.issuer OPERATOR(pg_catalog.=) i.issuer
 WHERE i.enabled ORDER BY i.issuer
"""


class DoctorError(Exception):
    """The checks could not run (no connection, no permission); the message says why."""


@dataclass(frozen=True)
class Finding:
    severity: str  # 'risk' or 'warning'
    check_name: str  # stable name, see docs/security.md
    finding: str
    fix: str

    def line(self) -> str:
        return f"{self.severity}: {self.check_name}: {self.finding}. Fix: {self.fix}"


def exit_status(findings: list[Finding]) -> int:
    return EXIT_RISKS if any(f.severity == "risk" for f in findings) else EXIT_CLEAN


def _missing_extension(database: str, config_database: str | None) -> Finding:
    # pg_oauth.database is unknown when the library is not loaded; its default applies
    target = config_database or "postgres"
    return Finding(
        "risk",
        "extension_missing",
        f'the pg_oauth extension is not installed in database "{database}"; '
        f'the validator workers read their configuration from pg_oauth.database "{target}"',
        f'run CREATE EXTENSION pg_oauth CASCADE in database "{target}" '
        "as a superuser, then pg-oauth doctor against that database",
    )


def _issuer_without_keys(
    issuer: str, pinned: bool, fetched: bool, fetched_at: str | None, keys: int, url: str
) -> Finding | None:
    """A finding when the server holds no key for an enabled issuer."""
    if keys > 0:
        return None
    name = repr(issuer)
    if pinned:
        return Finding(
            "risk",
            "issuer_without_keys",
            f"issuer {name} has pinned keys (oauth.issuers.jwks) with no key in them: "
            "every token of it is refused (unknown_key)",
            "put the issuer's public keys in oauth.issuers.jwks, or set it to NULL to "
            "fetch them",
        )
    if fetched:
        return Finding(
            "risk",
            "issuer_without_keys",
            f"the JWKS of issuer {name} fetched at {fetched_at} has no key: every token "
            "of it is refused (unknown_key)",
            "make the identity provider publish its signing keys, then run "
            f"SELECT oauth.refresh_keys({_literal(issuer)})",
        )
    return Finding(
        "risk",
        "issuer_without_keys",
        f"the server holds no keys of issuer {name}: its JWKS ({url}) could not be "
        "fetched, or had no key; every token of it is refused (jwks_unavailable)",
        f"check from the database host that {url} answers with the issuer's keys "
        "(a firewall, a proxy, TLS, the URL in oauth.issuers), then run "
        f"SELECT oauth.refresh_keys({_literal(issuer)}); the workers' log says why the "
        "fetch failed",
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run_checks(dsn: str) -> tuple[str, list[Finding]]:
    """The database checked and its findings; DoctorError when they cannot run.

    As root with no user in ``dsn``, the checks run as the postgres OS user
    (pyhook.local_connection)."""
    try:
        import psycopg
    except ImportError:
        raise DoctorError("needs psycopg (pip install 'psycopg[binary]')") from None
    try:
        params = connection_params(dsn)
    except psycopg.Error as exc:
        raise DoctorError(f"invalid --dsn: {exc}") from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    try:
        conn = psycopg.connect(**params, autocommit=True)
    except psycopg.Error as exc:
        raise DoctorError(f"cannot connect: {exc}") from None
    with conn:
        try:
            row = conn.execute(_WHERE_QUERY).fetchone()
            assert row is not None
            database, config_database, installed = row
            if not installed:
                return database, [_missing_extension(database, config_database)]
            rows = conn.execute(_CHECK_QUERY).fetchall()
            key_rows = conn.execute(_KEYS_QUERY).fetchall()
        except psycopg.Error as exc:
            raise DoctorError(
                f"oauth.check_setup() failed (it needs a superuser): {exc}"
            ) from None
    found = [Finding(*r) for r in rows]
    found += [f for r in key_rows if (f := _issuer_without_keys(*r)) is not None]
    return database, found


def summary(database: str, findings: list[Finding]) -> str:
    risks = sum(1 for f in findings if f.severity == "risk")
    warnings = len(findings) - risks
    if not findings:
        return f'database "{database}": no risk found'
    return (
        f'database "{database}": {risks} risk{"" if risks == 1 else "s"}, '
        f"{warnings} warning{'' if warnings == 1 else 's'}"
    )
