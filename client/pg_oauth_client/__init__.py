"""pg_oauth's client: short-lived OAuth/OIDC access tokens as PostgreSQL passwords.

    from pg_oauth_client import get_token
    psycopg.connect("host=db.example.com dbname=app user=alice", password=get_token("prod"))
"""

from __future__ import annotations

__version__ = "1.0.0"

from pg_oauth_client.driver_hooks import (
    async_token_provider,
    psycopg_connect,
    psycopg_pool_kwargs,
    sqlalchemy_token,
    token_provider,
)
from pg_oauth_client.errors import ClientError, ConfigError, IdPError, NoTokenError
from pg_oauth_client.pool_tokens import pool_lifetime, psycopg_pool_options
from pg_oauth_client.profile import Profile, load_profile
from pg_oauth_client.tokens import get_token, obtain

__all__ = [
    "ClientError",
    "ConfigError",
    "IdPError",
    "NoTokenError",
    "Profile",
    "async_token_provider",
    "get_token",
    "load_profile",
    "obtain",
    "pool_lifetime",
    "psycopg_connect",
    "psycopg_pool_kwargs",
    "psycopg_pool_options",
    "sqlalchemy_token",
    "token_provider",
]
