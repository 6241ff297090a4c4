"""Pools and ``pg_oauth.session_expiry``: a token session ends when its token expires,
so a pooled connection must be retired before its token is. Each new connection gets a
token valid for the pool's whole ``max_lifetime`` (``pool_recycle``) plus a margin,
renewed early when the cached one is not; and the check on checkout retires a connection
whose token is about to expire (one that sat idle in the pool past its lifetime)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pg_oauth_client.connection_params import libpq_defaults
from pg_oauth_client.errors import ClientError
from pg_oauth_client.jwt_peek import number_claim, unverified_claims
from pg_oauth_client.profile import Profile, load_profile
from pg_oauth_client.tokens import get_token, obtain

MARGIN_MAX = 30.0  # seconds of token life a connection keeps beyond its pool lifetime
DEFAULT_POOL_LIFETIME = 3600.0  # tokens without an expiry: psycopg_pool's default


def margin(pool_lifetime: float) -> float:
    """Time left to the token when the pool retires a connection: for a transaction."""
    return min(MARGIN_MAX, pool_lifetime / 2)


def needed_validity(pool_lifetime: float) -> float:
    """How long a new connection's token must stay valid."""
    return pool_lifetime + margin(pool_lifetime)


def resolve(profile: str | Profile | None) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def pool_lifetime(profile: str | Profile | None = None) -> float:
    """A pool lifetime tied to the profile's tokens: half their lifetime (so that a token
    serves new connections for a while before it is renewed). Obtains a token."""
    token = obtain(resolve(profile)).access_token
    claims = unverified_claims(token)
    exp, iat = number_claim(claims, "exp"), number_claim(claims, "iat")
    if exp is None:
        return DEFAULT_POOL_LIFETIME
    lifetime = exp - (iat if iat is not None else time.time())
    if lifetime < 4:
        raise ClientError(f"profile {resolve(profile).name!r}: its tokens live "
                          f"{lifetime:.0f} s, too short for a connection pool")
    return lifetime / 2


def token_check(pool_lifetime: float) -> Callable[[Any], None]:
    """A psycopg_pool ``check=``: retires a connection whose token has less than the
    margin left (closing it: the pool then opens a new one), else the pool's own check."""
    keep = margin(pool_lifetime)

    def check(conn: Any) -> None:
        from psycopg_pool import ConnectionPool

        exp = number_claim(unverified_claims(conn.info.password or ""), "exp")
        if exp is not None and exp - time.time() < keep:
            conn.close()
            raise ClientError("the connection's token expires soon: retired")
        ConnectionPool.check_connection(conn)

    return check


def psycopg_pool_options(profile: str | Profile | None = None, *,
                         max_lifetime: float | None = None, conninfo: str = "",
                         **kwargs: Any) -> dict[str, Any]:
    """``ConnectionPool(**psycopg_pool_options("prod"), max_size=...)``: conninfo,
    kwargs (the profile's connection defaults and a token per new connection),
    max_lifetime (default: half the tokens' lifetime) and check."""
    from psycopg.conninfo import conninfo_to_dict

    p = resolve(profile)
    lifetime = pool_lifetime(p) if max_lifetime is None else float(max_lifetime)
    given = {*kwargs, *conninfo_to_dict(conninfo)}
    want = needed_validity(lifetime)

    def connection_kwargs() -> dict[str, Any]:
        return {**libpq_defaults(p, given), **kwargs,
                "password": get_token(p, min_valid=want, strict=True)}

    return {"conninfo": conninfo, "kwargs": connection_kwargs, "max_lifetime": lifetime,
            "check": token_check(lifetime)}
