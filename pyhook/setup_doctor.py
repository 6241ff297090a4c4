"""``pg-oauth doctor``: the server's setup checker, ``oauth.check_setup()``, from a shell.

It connects with psycopg, makes sure the extension is installed in that database
(otherwise the one finding says where ``CREATE EXTENSION`` belongs), and returns
every finding of ``oauth.check_setup()``. It takes no token and prints none; the
connection string is never printed either.
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
        except psycopg.Error as exc:
            raise DoctorError(
                f"oauth.check_setup() failed (it needs a superuser): {exc}"
            ) from None
    return database, [Finding(*r) for r in rows]


def summary(database: str, findings: list[Finding]) -> str:
    risks = sum(1 for f in findings if f.severity == "risk")
    warnings = len(findings) - risks
    if not findings:
        return f'database "{database}": no risk found'
    return (
        f'database "{database}": {risks} risk{"" if risks == 1 else "s"}, '
        f"{warnings} warning{'' if warnings == 1 else 's'}"
    )
