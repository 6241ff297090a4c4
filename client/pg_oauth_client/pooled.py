"""Behind a pooler: one token per transaction.

The application logs in as the pooler's gateway role (``pg_oauth.gateway = on``), and
each transaction starts with ``SELECT oauth.authenticate($1)``, the end user's token
bound as a parameter; COMMIT or ROLLBACK ends that identity. These helpers do that for
psycopg, psycopg_pool and SQLAlchemy; the token is the one passed, or the one set for
the current request with :func:`using_token`.

Statements are never prepared on the server where these helpers make the connections
(psycopg's ``prepare_threshold=None``): a prepared statement lives on one server
connection, and a pooler in transaction mode runs the next transaction on any of them.

The drivers are imported when a helper is used: this module needs none of them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

from pg_oauth_client.errors import NoTokenError

if TYPE_CHECKING:
    import psycopg


class EndUser(NamedTuple):
    """The token of the person or service a transaction runs for, and the role it asks
    for (None: the one role the token allows)."""

    token: str
    role: str | None = None

    def __repr__(self) -> str:  # never show the token itself
        return f"EndUser(role={self.role!r})"


_end_user: ContextVar[EndUser | None] = ContextVar("pg_oauth_end_user", default=None)


@contextlib.contextmanager
def using_token(token: str, role: str | None = None) -> Iterator[None]:
    """The end user's token for the transactions begun inside: wrap each request or task
    in it. The value is a context variable: threads and asyncio tasks each see their own,
    and it is gone when the block ends (a thread serving the next request keeps nothing)."""
    if not token:
        raise NoTokenError("using_token() was given an empty token")
    reset = _end_user.set(EndUser(token, role))
    try:
        yield
    finally:
        _end_user.reset(reset)


def current_end_user() -> EndUser | None:
    """What :func:`using_token` set for this context, or None."""
    return _end_user.get()


def _end_user_for(token: str | None, role: str | None, helper: str) -> EndUser:
    """The explicit token (and role) if given, else the context's; never a guess."""
    if token:
        return EndUser(token, role)
    if token is None:
        found = _end_user.get()
        if found is not None:
            return found if role is None else EndUser(found.token, role)
    raise NoTokenError(
        f"{helper}: no end-user token for this transaction: pass token=..., or run it "
        "inside pg_oauth_client.pooled.using_token(token)")


def _authenticate_sql(user: EndUser, token: str, role: str) -> str:
    """The statement with the driver's placeholders: the token is never in it."""
    args = token if user.role is None else f"{token}, {role}"
    return f"SELECT oauth.authenticate({args})"


# -- psycopg ----------------------------------------------------------------------

@contextlib.contextmanager
def transaction(conn: psycopg.Connection[Any], token: str | None = None, *,
                role: str | None = None) -> Iterator[str]:
    """One transaction as the end user: BEGIN, ``oauth.authenticate($1)``, the block,
    then COMMIT (ROLLBACK if the block raises; ``raise psycopg.Rollback`` works too).

    Gives the role the transaction runs as. ``token`` defaults to the one of
    :func:`using_token`; ``role`` picks one when the token allows several. The token
    is always sent as a bind parameter, even on a connection whose cursors bind on
    the client side (``ClientCursor``). ``conn`` must be idle: in an open transaction
    psycopg would make a savepoint, where the server refuses oauth.authenticate().
    Connect with ``prepare_threshold=None`` behind a transaction-mode pooler."""
    import psycopg
    from psycopg.pq import TransactionStatus

    user = _end_user_for(token, role, "pooled.transaction()")
    status = conn.info.transaction_status
    if status != TransactionStatus.IDLE:
        raise psycopg.ProgrammingError(
            "pooled.transaction() needs a connection outside any transaction "
            f"(this one is {status.name}): commit or roll back first")
    with conn.transaction():
        params = (user.token,) if user.role is None else (user.token, user.role)
        # psycopg.Cursor binds on the server whatever the connection's cursor_factory
        with psycopg.Cursor(conn) as cursor:
            granted = cursor.execute(_authenticate_sql(user, "%s", "%s"), params,
                                     prepare=False).fetchone()
        assert granted is not None
        yield granted[0]


# -- psycopg_pool -----------------------------------------------------------------

def _without_prepared_statements(kwargs: Any) -> Any:
    """psycopg_pool's ``kwargs`` (a dict or, in 3.3, a function returning one) with
    ``prepare_threshold`` None unless the caller chose one."""
    if callable(kwargs):
        def connection_kwargs() -> dict[str, Any]:
            return {"prepare_threshold": None, **kwargs()}

        return connection_kwargs
    return {"prepare_threshold": None, **(kwargs or {})}


@functools.cache
def _gateway_pool_class() -> type:
    from psycopg_pool import ConnectionPool

    class GatewayPool(ConnectionPool):  # type: ignore[type-arg]
        """A psycopg_pool ConnectionPool of the gateway role whose ``connection()`` is
        one transaction authenticated with the end user's token (the one passed, or
        the one of :func:`using_token`). Its connections never prepare statements
        unless ``kwargs`` sets ``prepare_threshold``. ``getconn()`` gives a connection
        that has not been authenticated, on which the server runs nothing."""

        def __init__(self, conninfo: Any = "", *, kwargs: Any = None, **options: Any) -> None:
            super().__init__(conninfo, kwargs=_without_prepared_statements(kwargs), **options)

        @contextlib.contextmanager
        def connection(self, timeout: float | None = None, *, token: str | None = None,
                       role: str | None = None) -> Iterator[psycopg.Connection[Any]]:
            # a request without a token fails before it takes a connection
            user = _end_user_for(token, role, "GatewayPool.connection()")
            with super().connection(timeout) as conn, \
                    transaction(conn, user.token, role=user.role):
                yield conn

    GatewayPool.__qualname__ = "GatewayPool"
    return GatewayPool


def __getattr__(name: str) -> Any:
    # GatewayPool subclasses psycopg_pool's pool: made on first use, so that importing
    # this module needs no psycopg_pool
    if name == "GatewayPool":
        return _gateway_pool_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- SQLAlchemy -------------------------------------------------------------------

def authenticate_on_begin(engine: Any) -> Any:
    """Every transaction of ``engine`` (or an AsyncEngine) begins with
    ``oauth.authenticate(:token)``, the token of :func:`using_token`, as a bind
    parameter. Returns the engine.

    Also: the dialect's first connection (SQLAlchemy asks the server its version and
    settings then) runs in a transaction authenticated the same way, since a gateway
    session runs nothing before oauth.authenticate(); and psycopg connections get
    ``prepare_threshold=None`` unless ``connect_args`` sets it. The driver must bind
    parameters on the server (psycopg 3, not psycopg2); the isolation level must not
    be AUTOCOMMIT."""
    from sqlalchemy import event, text

    target = getattr(engine, "sync_engine", engine)
    dialect = target.dialect

    def statement(user: EndUser) -> Any:
        return text(_authenticate_sql(user, ":token", ":role"))

    def params(user: EndUser) -> dict[str, str]:
        return {"token": user.token} if user.role is None else \
            {"token": user.token, "role": user.role}

    @event.listens_for(target, "begin")
    def _authenticate(conn: Any) -> None:
        user = _end_user_for(None, None, "authenticate_on_begin()")
        conn.execute(statement(user), params(user))

    @event.listens_for(target, "first_connect")
    def _authenticate_dialect_setup(dbapi_connection: Any, record: Any) -> None:
        # runs before the dialect's own first-connect queries, which end with a rollback
        user = _end_user_for(None, None, "authenticate_on_begin() (first connection)")
        compiled = statement(user).compile(dialect=dialect)
        values = compiled.construct_params(params(user))
        bound: Any = values
        if compiled.positional:
            bound = tuple(values[name] for name in compiled.positiontup)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.string, bound)
        finally:
            cursor.close()

    if dialect.driver in ("psycopg", "psycopg_async"):
        @event.listens_for(target, "do_connect")
        def _no_prepared_statements(dialect: Any, conn_rec: Any, cargs: Any,
                                    cparams: dict[str, Any]) -> None:
            cparams.setdefault("prepare_threshold", None)

    return engine
