"""Getting a token for a profile: from the cache while it stays valid long enough, else
from the profile's flow; refresh tokens are kept in the cache for the next time."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pg_oauth_client.errors import (
    ClientError,
    ConfigError,
    RefreshRefused,
    SignInNeeded,
)
from pg_oauth_client.jwt_peek import number_claim, unverified_claims
from pg_oauth_client.oauth_flows import OAuthClient
from pg_oauth_client.profile import Profile, cache_dir, load_profile
from pg_oauth_client.token_cache import CacheEntry, TokenCache
from pg_oauth_client.token_sources import (
    command_token,
    github_actions_token,
    read_token_file,
)

Notify = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: float | None
    profile: str
    from_cache: bool

    def __repr__(self) -> str:  # never show the token itself
        return f"Token(profile={self.profile!r}, expires_at={self.expires_at!r})"


def get_token(profile: str | Profile | None = None, *, min_valid: float | None = None,
              interactive: bool = True, strict: bool = False) -> str:
    """A token for ``profile`` (name, Profile, or None: ``$PG_OAUTH_PROFILE``/default)
    valid for at least ``min_valid`` seconds (default: the profile's, 300) or half its
    lifetime (``strict``: at least ``min_valid``, renewing early; a new token that
    lives less is an error). Raises ClientError with a one-line message."""
    return obtain(profile, min_valid=min_valid, interactive=interactive,
                  strict=strict).access_token


def obtain(profile: str | Profile | None = None, *, min_valid: float | None = None,
           force: bool = False, sign_in: bool = False, interactive: bool = True,
           notify: Notify = _stderr, env: Mapping[str, str] | None = None,
           strict: bool = False, _chain: tuple[str, ...] = ()) -> Token:
    """``force``: do not reuse a cached access token; ``sign_in``: also ignore a cached
    refresh token (a new interactive sign-in for device_code profiles); ``strict``: the
    token must stay valid ``min_valid`` seconds, whatever its lifetime (pools)."""
    p = profile if isinstance(profile, Profile) else load_profile(profile, env)
    if p.name in _chain:
        raise ConfigError(f"profiles form a loop: {' -> '.join((*_chain, p.name))}")
    chain = (*_chain, p.name)

    want = p.min_valid if min_valid is None else min_valid
    if p.flow == "token_file":  # the platform keeps the file fresh: read it every time
        token = read_token_file(p.token_file or "", p.name)
        return _long_enough(Token(token, _expiry(token, {}, time.time())[1], p.name, False),
                            want, strict)

    if not p.cache:
        entry = CacheEntry(path=cache_dir(env) / "unused", fingerprint=p.fingerprint())
        return _long_enough(_fetch(p, entry, sign_in, interactive, notify, env, chain,
                                   store=False), want, strict)
    with TokenCache(cache_dir(env)).entry(p.name, p.fingerprint()) as entry:
        if not force and not sign_in and entry.usable(want, strict=strict):
            return Token(entry.access_token or "", entry.expires_at, p.name, True)
        return _long_enough(_fetch(p, entry, sign_in, interactive, notify, env, chain,
                                   store=True), want, strict)


def _long_enough(token: Token, want: float, strict: bool) -> Token:
    """A pool keeps a connection ``want`` seconds: a new token that lives less would end
    its session early (pg_oauth.session_expiry), so say so instead of handing it out."""
    if strict and token.expires_at is not None:
        left = token.expires_at - time.time()
        if left < want:
            raise ClientError(
                f"profile {token.profile!r}: a new token is valid {max(left, 0):.0f} s, "
                f"but the pool needs one valid {want:.0f} s (its max_lifetime or pool_recycle, "
                "and a margin): lower that below the tokens' lifetime")
    return token


def forget(profile: str | Profile | None = None,
           env: Mapping[str, str] | None = None) -> bool:
    p = profile if isinstance(profile, Profile) else load_profile(profile, env)
    return TokenCache(cache_dir(env)).forget(p.name)


def _fetch(p: Profile, entry: CacheEntry, sign_in: bool, interactive: bool, notify: Notify,
           env: Mapping[str, str] | None, chain: tuple[str, ...], *, store: bool) -> Token:
    now = time.time()
    response: dict[str, Any]
    if p.flow == "github_actions":
        response = {"access_token": github_actions_token(p, None if env is None else dict(env))}
    elif p.flow == "command":
        response = {"access_token": command_token(p)}
    else:
        response = _grant(p, entry, sign_in, interactive, notify, env, chain, store)

    token = str(response["access_token"])
    entry.issued_at, entry.expires_at = _expiry(token, response, now)
    entry.access_token = token
    if isinstance(response.get("refresh_token"), str):
        entry.refresh_token = response["refresh_token"]
    if store:
        entry.save()
    return Token(token, entry.expires_at, p.name, False)


def _grant(p: Profile, entry: CacheEntry, sign_in: bool, interactive: bool, notify: Notify,
           env: Mapping[str, str] | None, chain: tuple[str, ...], store: bool) -> dict[str, Any]:
    subject = None
    if p.flow == "token_exchange":  # the workload token first: its errors come first
        subject = (read_token_file(p.subject_token_file, p.name) if p.subject_token_file
                   else obtain(load_profile(p.subject_profile, env, apply_env=False),
                               interactive=interactive, notify=notify, env=env,
                               _chain=chain).access_token)
    client = OAuthClient(p)
    try:
        if p.flow == "client_credentials":
            return client.client_credentials()
        if p.flow == "token_exchange":
            return client.token_exchange(subject or "")
        if p.flow == "refresh_token":
            return _refresh(p, client, entry, entry.refresh_token or p.refresh_token or "",
                            store, "get a new refresh token for refresh_token_env/_file")
        # device_code
        if entry.refresh_token and not sign_in:
            return _refresh(p, client, entry, entry.refresh_token, store,
                            f"sign in again: pg-oauth login --profile {p.name}")
        if not interactive:
            raise SignInNeeded(f"profile {p.name!r} needs a sign-in: "
                               f"run pg-oauth login --profile {p.name}")
        return client.device_code(notify=notify)
    finally:
        client.close()


def _refresh(p: Profile, client: OAuthClient, entry: CacheEntry, refresh_token: str,
             store: bool, what_to_do: str) -> dict[str, Any]:
    try:
        return client.refresh(refresh_token)
    except RefreshRefused as exc:
        entry.refresh_token = None
        entry.access_token = None
        if store:
            entry.save()
        raise RefreshRefused(f"{exc}; {what_to_do}", exc.error) from None


def _expiry(token: str, response: Mapping[str, Any], now: float) -> tuple[float, float | None]:
    """(issued_at, expires_at): the JWT's own iat/exp when it has them, else expires_in."""
    claims = unverified_claims(token)
    exp = number_claim(claims, "exp")
    iat = number_claim(claims, "iat") or now
    if exp is None:
        expires_in = response.get("expires_in")
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
            exp = now + float(expires_in)
    return iat, exp


__all__ = ["ClientError", "Token", "forget", "get_token", "obtain"]
