"""Getting a token for a profile: from the cache while it stays valid long enough, else
from the profile's flow; refresh tokens are kept in the cache for the next time."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pg_oauth_client.errors import (
    ClientError,
    ConfigError,
    IdPError,
    IdPUnavailable,
    RefreshRefused,
    SignInNeeded,
)
from pg_oauth_client.idp_http import COMMAND_LINE_SOURCE
from pg_oauth_client.jwt_peek import number_claim, unverified_claims
from pg_oauth_client.oauth_flows import OAuthClient
from pg_oauth_client.profile import Profile, cache_dir, load_profile, profile_names
from pg_oauth_client.token_cache import CacheEntry, CacheUnusable, TokenCache
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
              interactive: bool = False, strict: bool = False) -> str:
    """A token for ``profile`` (name, Profile, or None: ``$PG_OAUTH_PROFILE``/default)
    valid for at least ``min_valid`` seconds (default: the profile's, 300) or half its
    lifetime (``strict``: at least ``min_valid``, renewing early; a new token that
    lives less is an error). A device sign-in is started only with ``interactive=True``
    (a program called from a pool or a server has nobody to sign in). Raises
    ClientError with a one-line message."""
    try:
        return obtain(profile, min_valid=min_valid, interactive=interactive,
                      strict=strict).access_token
    except SignInNeeded as exc:
        if interactive:
            raise
        raise exc.because(", which get_token() starts only with interactive=True") from None


def obtain(profile: str | Profile | None = None, *, min_valid: float | None = None,
           force: bool = False, sign_in: bool = False, interactive: bool = False,
           notify: Notify = _stderr, env: Mapping[str, str] | None = None,
           strict: bool = False, _chain: tuple[str, ...] = ()) -> Token:
    """``force``: do not reuse a cached access token; ``sign_in``: also ignore a cached
    refresh token (a new interactive sign-in for device_code profiles); ``strict``: the
    token must stay valid ``min_valid`` seconds, whatever its lifetime (pools)."""
    p = profile if isinstance(profile, Profile) else load_profile(profile, env)
    if p.name in _chain:
        raise ConfigError(f"profiles form a loop: {' -> '.join((*_chain, p.name))}")
    ctx = _Context(p, sign_in, interactive, notify, env, (*_chain, p.name), strict)

    want = p.min_valid if min_valid is None else min_valid
    if p.flow == "token_file":  # the platform keeps the file fresh: read it every time
        token = read_token_file(p.token_file or "", p.name)
        return _long_enough(Token(token, _expiry(token, {}, time.time())[1], p.name, False),
                            want, strict)

    if not p.cache:
        entry = CacheEntry(path=Path("unused"), fingerprint=p.fingerprint())
        return _long_enough(_fetch(ctx, entry, lambda: None), want, strict)
    directory = cache_dir(env)
    key = (str(directory), p.name)
    if key not in _memory:
        try:
            with TokenCache(directory).entry(p.name, p.fingerprint()) as entry:
                return _cached_or_new(ctx, entry, want, force,
                                      lambda: _save(entry, key, notify))
        except CacheUnusable as exc:
            _warn_unusable(exc, notify)
    with _memory_lock(key):
        entry = _memory.setdefault(key, CacheEntry(path=Path("unused"),
                                                   fingerprint=p.fingerprint()))
        if entry.fingerprint != p.fingerprint():
            entry = _memory[key] = CacheEntry(path=Path("unused"), fingerprint=p.fingerprint())
        return _cached_or_new(ctx, entry, want, force, lambda: None)


def _long_enough(token: Token, want: float, strict: bool) -> Token:
    """A pool keeps a connection ``want`` seconds: a new token that lives less would end
    its session early (pg_oauth.session_expiry), so say so instead of handing it out."""
    if strict and token.expires_at is not None:
        left = token.expires_at - time.time()
        if left < want:
            which = "the cached token" if token.from_cache else "a new token"
            raise ClientError(
                f"profile {token.profile!r}: {which} is valid {max(left, 0):.0f} s, "
                f"but the pool needs one valid {want:.0f} s (its max_lifetime or pool_recycle, "
                "and a margin): lower that below the tokens' lifetime")
    return token


def forget(profile: str | Profile | None = None,
           env: Mapping[str, str] | None = None) -> bool:
    """Forget the profile's cached tokens, and for device_code profiles the sign-in
    (refresh token) it shares with the profiles of the same client at the same IdP."""
    p = profile if isinstance(profile, Profile) else load_profile(profile, env)
    directory = cache_dir(env)
    for key in [k for k in _memory if k[0] == str(directory)
                and k[1] in (p.name, _SIGNIN + _signin_key(p))]:
        del _memory[key]
    cache = TokenCache(directory)
    removed = cache.forget(p.name)
    if p.flow == "device_code":
        removed = cache.remove(cache.signin_path(_signin_key(p))) or removed
    return removed


@dataclass(frozen=True)
class _Context:
    """What every step of obtaining one profile's token needs."""

    profile: Profile
    sign_in: bool
    interactive: bool
    notify: Notify
    env: Mapping[str, str] | None
    chain: tuple[str, ...]
    strict: bool = False  # valid for the whole min_valid, whatever the lifetime (pools)


# -- the cache, on disk or (when the directory is unusable) in this process's memory ------

_memory: dict[tuple[str, str], CacheEntry] = {}
_memory_locks: dict[tuple[str, str], threading.Lock] = {}
_warned: set[str] = set()
_guard = threading.Lock()
_SIGNIN = "signin@"


def _memory_lock(key: tuple[str, str]) -> threading.Lock:
    with _guard:
        return _memory_locks.setdefault(key, threading.Lock())


def _warn_unusable(exc: CacheUnusable, notify: Notify) -> None:
    with _guard:
        if str(exc.directory) in _warned:
            return
        _warned.add(str(exc.directory))
    notify(f"pg-oauth: cannot use the token cache directory {exc.directory} ({exc.reason}): "
           "tokens are kept in memory, for this process only; set PG_OAUTH_CACHE_DIR "
           "(or XDG_CACHE_HOME) to a directory you can write")


def _save(entry: CacheEntry, key: tuple[str, str], notify: Notify) -> None:
    try:
        entry.save()
    except CacheUnusable as exc:
        _warn_unusable(exc, notify)
        _memory[key] = entry  # the next call of this process finds it there


def _cached_or_new(ctx: _Context, entry: CacheEntry, want: float, force: bool,
                   save: Callable[[], None]) -> Token:
    """The cached token while it is fresh; else a new one. Between fresh and usable (the
    life the caller asked for), an IdP that cannot be reached, or a sign-in that would be
    needed, leaves the caller with the cached token. Whatever is handed out stays valid
    for the whole ``want`` when ``ctx.strict`` (a pool's connection lifetime)."""
    p, strict = ctx.profile, ctx.strict
    reuse = not force and not ctx.sign_in
    cached = Token(entry.access_token or "", entry.expires_at, p.name, True)
    if reuse and entry.fresh(want, strict=strict):
        return _long_enough(cached, want, strict)
    early = reuse and entry.usable(want, strict=strict)

    def still_cached() -> Token | None:
        """The cached token after a failed renewal (an IdP's timeout takes a while), if
        it still has the life asked for."""
        if not early:
            return None
        try:
            return _long_enough(cached, want, strict)
        except ClientError:
            return None

    try:
        return _long_enough(
            _fetch(replace(ctx, interactive=ctx.interactive and not early), entry, save),
            want, strict)
    except SignInNeeded:
        if (still := still_cached()) is not None:
            return still
        raise
    except RefreshRefused as exc:
        if (still := still_cached()) is not None:
            # the next renewal needs the sign-in; this token still serves
            ctx.notify(f"pg-oauth: {exc}; until then, the cached token of profile "
                       f"{p.name!r} serves until {_clock(entry.expires_at)}")
            return still
        raise
    except IdPUnavailable as exc:
        left = (entry.expires_at or 0) - time.time()
        if (still := still_cached()) is not None:
            ctx.notify(f"pg-oauth: {exc}; using the cached token of profile {p.name!r}, "
                       f"valid until {_clock(entry.expires_at)} ({int(left)} s)")
            return still
        if reuse and entry.access_token and left > 0:
            asked = f"min_valid {want:g} s" + ("" if strict else ", or half its lifetime")
            raise IdPUnavailable(f"{exc}; the cached token of profile {p.name!r} is valid "
                                 f"{int(left)} s more, less than asked for ({asked})",
                                 exc.error) from None
        raise


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ts or 0))


# -- getting a new token ------------------------------------------------------------------

def _fetch(ctx: _Context, entry: CacheEntry, save: Callable[[], None]) -> Token:
    p = ctx.profile
    now = time.time()
    response: dict[str, Any]
    if p.flow == "github_actions":
        env = None if ctx.env is None else dict(ctx.env)
        response = {"access_token": github_actions_token(p, env)}
    elif p.flow == "command":
        response = {"access_token": command_token(p)}
    else:
        response = _grant(ctx, entry, save)

    token = str(response["access_token"])
    entry.issued_at, entry.expires_at = _expiry(token, response, now)
    entry.access_token = token
    if isinstance(response.get("refresh_token"), str):
        entry.refresh_token = response["refresh_token"]
    save()
    return Token(token, entry.expires_at, p.name, False)


def _grant(ctx: _Context, entry: CacheEntry, save: Callable[[], None]) -> dict[str, Any]:
    p = ctx.profile
    subject = None
    if p.flow == "token_exchange":  # the workload token first: its errors come first
        subject = (read_token_file(p.subject_token_file, p.name) if p.subject_token_file
                   else obtain(load_profile(p.subject_profile, ctx.env, apply_env=False),
                               interactive=ctx.interactive, notify=ctx.notify, env=ctx.env,
                               _chain=ctx.chain).access_token)
    client = OAuthClient(p)
    try:
        if p.flow == "client_credentials":
            return client.client_credentials()
        if p.flow == "token_exchange":
            return client.token_exchange(subject or "")
        if p.flow == "refresh_token":
            return _refresh(client, entry, entry.refresh_token or p.refresh_token or "",
                            save, "get a new refresh token for refresh_token_env/_file")
        return _device_code(ctx, client, entry, save)
    finally:
        client.close()


def _refresh(client: OAuthClient, entry: CacheEntry, refresh_token: str,
             save: Callable[[], None], what_to_do: str) -> dict[str, Any]:
    try:
        return client.refresh(refresh_token)
    except RefreshRefused as exc:
        entry.refresh_token = None
        entry.access_token = None
        save()
        raise RefreshRefused(f"{exc}; {what_to_do}", exc.error) from None


# -- device sign-ins, shared by the profiles of one client at one IdP ---------------------

def _signin_key(p: Profile) -> str:
    """Profiles with the same key share one sign-in: its refresh token gets each of them
    a token for its own resource (RFC 8707)."""
    fields = [p.issuer, p.token_endpoint, p.client_id, p.scope, p.audience,
              list(p.extra_params)]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def signin_siblings(p: Profile, env: Mapping[str, str] | None = None) -> list[Profile]:
    """The config file's other device_code profiles that share ``p``'s sign-in."""
    if p.flow != "device_code" or p.source == COMMAND_LINE_SOURCE:  # pg-oauth token --issuer
        return []
    key, found = _signin_key(p), []
    try:
        names = profile_names(env)
    except ClientError:
        return []
    for name in names:
        try:
            other = load_profile(name, env, apply_env=False)
        except ClientError:
            continue
        if other.name != p.name and other.flow == "device_code" and _signin_key(other) == key:
            found.append(other)
    return found


def _signin_resources(p: Profile, env: Mapping[str, str] | None) -> list[str]:
    """The resources of the config file's profiles that share ``p``'s sign-in."""
    return [other.resource for other in signin_siblings(p, env) if other.resource]


@contextlib.contextmanager
def signin_entry(p: Profile, env: Mapping[str, str] | None = None) -> Iterator[CacheEntry]:
    """The device sign-in ``p`` shares (its refresh token), locked; take it after the
    profile's own lock, never before. An empty entry for other flows."""
    if p.flow != "device_code" or not p.cache:
        yield CacheEntry(path=Path("unused"), fingerprint="")
        return
    cache, key = TokenCache(cache_dir(env)), _signin_key(p)
    with cache.locked(cache.signin_path(key), key) as shared:
        yield shared


@contextlib.contextmanager
def _signin(ctx: _Context) -> Iterator[tuple[CacheEntry, Callable[[], None]]]:
    """The shared sign-in, locked (always after the profile's own lock, never before)."""
    p = ctx.profile
    signin_key = _signin_key(p)
    directory = cache_dir(ctx.env)
    key = (str(directory), _SIGNIN + signin_key)
    if key not in _memory and p.cache:
        cache = TokenCache(directory)
        try:
            with cache.locked(cache.signin_path(signin_key), signin_key) as shared:
                yield shared, lambda: _save(shared, key, ctx.notify)
                return
        except CacheUnusable as exc:
            _warn_unusable(exc, ctx.notify)
    with _memory_lock(key):
        shared = _memory.setdefault(key, CacheEntry(path=Path("unused"),
                                                    fingerprint=signin_key))
        yield shared, lambda: None


def _device_code(ctx: _Context, client: OAuthClient, entry: CacheEntry,
                 save: Callable[[], None]) -> dict[str, Any]:
    p = ctx.profile
    why = ""
    with _signin(ctx) as (shared, save_shared):
        # caches of earlier versions kept the refresh token in the profile's own file
        refresh_token = shared.refresh_token or entry.refresh_token
        entry.refresh_token = None
        if refresh_token and not ctx.sign_in:
            try:
                response = _refresh(client, shared, refresh_token, save_shared,
                                    f"sign in again: pg-oauth login --profile {p.name}")
            except RefreshRefused:
                entry.access_token = None
                save()
                raise
            except IdPError as exc:
                if exc.error != "invalid_target":
                    raise
                why = (f" of its own (the issuer would not extend the sign-in to resource "
                       f"{p.resource}: invalid_target)")
            else:
                _keep_refresh_token(shared, response, refresh_token, save_shared)
                return response
    if not ctx.interactive:
        raise SignInNeeded(p.name, why)
    if why:
        ctx.notify(f"pg-oauth: profile {p.name!r} needs a sign-in{why}")
    response = client.device_code(notify=ctx.notify,
                                  also_resources=_signin_resources(p, ctx.env))
    with _signin(ctx) as (shared, save_shared):
        _keep_refresh_token(shared, response, None, save_shared)
    return response


def _keep_refresh_token(shared: CacheEntry, response: dict[str, Any], used: str | None,
                        save: Callable[[], None]) -> None:
    """The sign-in keeps the (rotated) refresh token; the profile's entry does not."""
    new = response.pop("refresh_token", None)
    if isinstance(new, str) and new != used:
        shared.refresh_token = new
        save()


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


__all__ = ["ClientError", "Token", "forget", "get_token", "obtain", "signin_entry",
           "signin_siblings"]
