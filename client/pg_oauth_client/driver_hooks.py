"""Fresh tokens for every new connection of a driver or pool: each call goes through the
cache, so a token is reused while it stays valid and replaced ahead of its expiry —
a pool that opens a connection hours later gets a token that is valid then."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pg_oauth_client.profile import Profile
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


def psycopg_pool_kwargs(profile: str | Profile | None = None,
                        **kwargs: Any) -> Callable[[], dict[str, Any]]:
    """psycopg_pool (3.3+) ``kwargs=``: called for every new connection."""

    def connection_kwargs() -> dict[str, Any]:
        return {**kwargs, "password": get_token(profile)}

    return connection_kwargs


def sqlalchemy_token(engine: Any, profile: str | Profile | None = None) -> Any:
    """Give every new DBAPI connection of ``engine`` (or an AsyncEngine) a fresh token
    through SQLAlchemy's ``do_connect`` event. Returns the engine."""
    from sqlalchemy import event

    target = getattr(engine, "sync_engine", engine)

    @event.listens_for(target, "do_connect")
    def _password(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["password"] = get_token(profile)

    return engine
