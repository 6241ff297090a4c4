"""``oauth.explain`` over a connection, without the token reaching the server log.

The token is sent as a bind parameter, never as statement text, and only after
the transaction has turned off what could write a statement or its parameters
to the log: statement and duration logging, the error statement, parsed and
planned trees (a custom plan holds the parameter as a constant), auto_explain,
pgaudit's parameter logging. Setting these needs a superuser, and so does
oauth.explain.
"""

from __future__ import annotations

from typing import Any

from pyhook.local_connection import connection_params

# (setting, value) set with SET LOCAL semantics before the token is sent
QUIET_SETTINGS: tuple[tuple[str, str], ...] = (
    ("log_statement", "none"),
    ("log_min_duration_statement", "-1"),
    ("log_min_duration_sample", "-1"),
    ("log_parameter_max_length", "0"),
    ("log_parameter_max_length_on_error", "0"),
    ("log_min_error_statement", "panic"),
    ("debug_print_parse", "off"),
    ("debug_print_rewritten", "off"),
    ("debug_print_plan", "off"),
)
# settings of modules that are not always loaded: set only where they exist
OPTIONAL_QUIET_SETTINGS: tuple[tuple[str, str], ...] = (
    ("auto_explain.log_min_duration", "-1"),
    ("pgaudit.log_parameter", "off"),
)

QUIET_QUERY = (
    "SELECT s.name, pg_catalog.set_config(s.name, s.value, true) AS now "
    "FROM ROWS FROM (pg_catalog.unnest(%s::pg_catalog.text[]), "
    "pg_catalog.unnest(%s::pg_catalog.text[])) AS s(name, value) "
    "WHERE pg_catalog.current_setting(s.name, true) IS NOT NULL"
)
EXPLAIN_QUERY = (
    "SELECT step, name, outcome, input, detail "
    "FROM oauth.explain(%s, %s, %s, %s::pg_catalog.inet)"
)
COLUMNS = ("step", "name", "outcome", "input", "detail")


class ServerExplainError(RuntimeError):
    """oauth.explain could not be run; the message never holds the token."""


def quiet_transaction(conn: Any) -> list[str]:
    """In ``conn``'s open transaction, turn off the logging that could record a
    statement's parameters; the names of the settings changed. Raises the
    driver's error (e.g. not a superuser) before anything secret is sent."""
    wanted = [*QUIET_SETTINGS, *OPTIONAL_QUIET_SETTINGS]
    rows = conn.execute(
        QUIET_QUERY, ([n for n, _ in wanted], [v for _, v in wanted])
    ).fetchall()
    changed = [row[0] for row in rows]
    missing = [n for n, _ in QUIET_SETTINGS if n not in changed]
    if missing:
        raise ServerExplainError(f"could not turn off {', '.join(missing)}")
    return changed


def explain_on_server(
    dsn: str,
    token: str,
    role: str,
    database: str,
    client_addr: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of oauth.explain(token, role, database, client_addr) on ``dsn``
    (a superuser, in pg_oauth.database), in one transaction with logging off."""
    try:
        import psycopg
    except ImportError:
        raise ServerExplainError(
            "--dsn needs psycopg (pip install 'psycopg[binary]'); or use --config"
        ) from None
    try:
        # as root with no user in dsn: as the postgres OS user (gives up root)
        with psycopg.connect(**connection_params(dsn)) as conn:
            # the database's settings must not pick the functions a superuser runs
            conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
            quiet_transaction(conn)
            rows = conn.execute(
                EXPLAIN_QUERY, (token, role, database, client_addr)
            ).fetchall()
            # explain may have stored keys it had to fetch (as a login would)
            conn.commit()
    except psycopg.Error as exc:
        # the server's primary message: the token is a parameter, never quoted in it
        message = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
        raise ServerExplainError(f"oauth.explain failed: {message}") from None
    if not rows:
        raise ServerExplainError("oauth.explain returned no rows")
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]
