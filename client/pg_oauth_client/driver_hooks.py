"""Fresh tokens for every new connection of a driver or pool: each call goes through the
cache, so a token is reused while it stays valid and replaced ahead of its expiry —
a pool that opens a connection hours later gets a token that is valid then. The
profile's host, port, dbname, user, sslmode and sslrootcert fill in what the caller
does not give (connection_params), sslmode verify-full when nobody says."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from pg_oauth_client.connection_params import effective_sslmode, libpq_defaults
from pg_oauth_client.pool_tokens import needed_validity, resolve
from pg_oauth_client.profile import Profile
from pg_oauth_client.refusal import connection_advice
from pg_oauth_client.tokens import get_token


def token_provider(profile: str | Profile | None = None) -> Callable[[], str]:
    """A password callable: asyncpg ``password=``, or anything that calls it per connection."""

    def password() -> str:
        return get_token(profile)

    return password


def async_token_provider(profile: str | Profile | None = None) -> Callable[[], Awaitable[str]]:
    """An async password callable: the token is obtained in a thread, off the event loop."""

    async def password() -> str:
        return await asyncio.to_thread(get_token, profile)

    return password


def psycopg_pool_kwargs(profile: str | Profile | None = None, *,
                        min_valid: float | None = None,
                        **kwargs: Any) -> Callable[[], dict[str, Any]]:
    """psycopg_pool (3.3+) ``kwargs=``: called for every new connection. ``min_valid``:
    the token must stay valid that long (a pool's max_lifetime and a margin), renewed
    early; psycopg_pool_options sets it, max_lifetime and check for you."""
    p = resolve(profile)

    def connection_kwargs() -> dict[str, Any]:
        token = (get_token(p) if min_valid is None
                 else get_token(p, min_valid=min_valid, strict=True))
        return {**libpq_defaults(p, kwargs), **kwargs, "password": token}

    return connection_kwargs


def psycopg_connect(profile: str | Profile | None = None, conninfo: str = "",
                    **kwargs: Any) -> Any:
    """``psycopg.connect`` with the profile's connection defaults and a token; a refused
    login's exception carries pg-oauth's advice as notes (the server's message intact)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    p = resolve(profile)
    given = {**conninfo_to_dict(conninfo), **kwargs}
    token = get_token(p)
    try:
        return psycopg.connect(conninfo, **{**libpq_defaults(p, given), **kwargs},
                               password=token)
    except psycopg.OperationalError as exc:
        _add_advice(exc, token, p, effective_sslmode(p, given))
        raise


def _add_advice(exc: BaseException, token: str, p: Profile, sslmode: str) -> None:
    for line in connection_advice(str(exc), token, p.name, sslmode, p.issuer):
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"pg-oauth: {line}")


def _sqlalchemy_params(dialect: Any, p: Profile, cparams: dict[str, Any]) -> None:
    """The profile's defaults in the DBAPI's own parameter names."""
    if getattr(dialect, "driver", "") != "asyncpg":
        cparams.update(libpq_defaults(p, cparams))
        return
    given = set(cparams) | ({"sslmode"} if "ssl" in cparams else set())
    for key, value in libpq_defaults(p, given).items():
        if key == "sslmode":
            rootcert = cparams.pop("sslrootcert", None) or os.environ.get("PGSSLROOTCERT")
            cparams["ssl"] = _asyncpg_ssl(value, rootcert)
        elif key == "dbname":
            cparams["database"] = value
        elif key == "port":
            cparams["port"] = int(value)
        else:
            cparams[key] = value


def _asyncpg_ssl(sslmode: str, rootcert: str | None) -> Any:
    """asyncpg takes sslmode by name, but finds a root certificate only in PGSSLROOTCERT
    or ~/.postgresql: the profile's goes in through a context."""
    if sslmode != "verify-full" or not rootcert:
        return sslmode
    import ssl

    return ssl.create_default_context(cafile=os.path.expanduser(rootcert))


def sqlalchemy_token(engine: Any, profile: str | Profile | None = None) -> Any:
    """Give every new DBAPI connection of ``engine`` (or an AsyncEngine) a fresh token
    and the profile's connection defaults, through SQLAlchemy's ``do_connect`` event.
    With ``pool_recycle`` set, the token stays valid that long and a margin (renewed
    early), so that pg_oauth.session_expiry never ends a pooled session. Returns the
    engine."""
    from sqlalchemy import event

    target = getattr(engine, "sync_engine", engine)
    p = resolve(profile)

    @event.listens_for(target, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        recycle = getattr(target.pool, "_recycle", -1)
        token = (get_token(p, min_valid=needed_validity(recycle), strict=True)
                 if recycle and recycle > 0 else get_token(p))
        _sqlalchemy_params(dialect, p, cparams)
        cparams["password"] = token
        ssl = cparams.get("ssl")
        sslmode = (ssl if isinstance(ssl, str) else "verify-full" if ssl
                   else effective_sslmode(p, cparams))
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            _add_advice(exc, token, p, sslmode)
            raise

    return engine
