"""``pg-oauth logout``: revoke the cached tokens at the IdP (RFC 7009), then forget them.

The refresh token is the long-lived credential: it is revoked first, then the access
token. The cache is deleted whatever the IdP answers; a revocation that did not happen is
said, and makes the exit status 1, because the token stays usable where it leaked."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import requests

from pg_oauth_client.discovery import check_url, discover, http_error_line
from pg_oauth_client.errors import ClientError
from pg_oauth_client.jwt_peek import number_claim, unverified_claims
from pg_oauth_client.oauth_flows import OAuthClient
from pg_oauth_client.profile import Profile, cache_dir
from pg_oauth_client.token_cache import CacheEntry, CacheUnusable, TokenCache
from pg_oauth_client.tokens import forget, signin_entry, signin_siblings

# the flows whose tokens come from the profile's IdP, which can revoke them
IDP_FLOWS = ("client_credentials", "device_code", "refresh_token", "token_exchange")
_TOKEN_NAMES = {"refresh_token": "the refresh token", "access_token": "the access token"}


@dataclass
class Logout:
    """What logout did, for its messages."""

    profile: str
    forgot: bool = False
    revoked: list[str] = field(default_factory=list)  # token type hints
    failed: list[str] = field(default_factory=list)  # sentences
    not_revoked: str | None = None  # why nothing was sent to the IdP
    access_valid_until: float | None = None  # a JWT access token the database may accept
    access_not_revocable: bool = False  # the IdP answered unsupported_token_type
    signed_out: list[str] = field(default_factory=list)  # profiles sharing the sign-in

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        p = self.profile
        out: list[str] = []
        if self.revoked:
            names = " and ".join(dict.fromkeys(_TOKEN_NAMES[t] for t in self.revoked))
            out.append(f"revoked {names} of profile {p!r} at the IdP")
        out.extend(f"could not revoke {line}" for line in self.failed)
        if self.not_revoked:
            out.append(self.not_revoked)
        out.append(f"{'forgot the' if self.forgot else 'no'} cached tokens of profile {p!r}")
        if self.signed_out:
            others = ", ".join(repr(name) for name in self.signed_out)
            out.append(f"the sign-in was shared with profile{'s' if len(self.signed_out) > 1 else ''} "
                       f"{others}: they need pg-oauth login again once their cached "
                       "tokens expire")
        if self.access_valid_until and self.access_valid_until > time.time():
            when = time.strftime("%H:%M:%S UTC", time.gmtime(self.access_valid_until))
            which = ("a JWT the IdP does not revoke" if self.access_not_revocable
                     else "a JWT")
            out.append(f"the access token is {which}: a server that checks it without asking "
                       f"the IdP (as pg_oauth does) accepts it until it expires at {when}; a "
                       "DBA can refuse it sooner with oauth.revoke()")
        if self.failed:
            out.append("what could not be revoked stays valid until it expires or the "
                       "IdP's admin revokes it")
        return out


def log_out(p: Profile, env: Mapping[str, str] | None = None) -> Logout:
    """Revoke the profile's refresh token, then its access token, and forget them.

    A device_code profile's refresh token is its sign-in's, shared with the profiles of
    the same client at the same IdP (signin@<hash>.json): logging out of one of them ends
    that sign-in for all of them, at the IdP (revoked) as in the cache (forgotten), and
    says which other profiles will need a sign-in. Keeping it valid at the IdP once no
    cache holds it would only leave a live credential behind."""
    result = Logout(profile=p.name)
    cache = TokenCache(cache_dir(env))
    try:
        # the profile's lock, then the sign-in's (the order obtain() takes them in): no
        # renewal races the revocation
        with cache.entry(p.name, p.fingerprint()) as entry, signin_entry(p, env) as shared:
            _revoke_cached(p, entry, shared, result, env)
            result.forgot = forget(p, env)
    except CacheUnusable:  # no cache on disk: nothing there to revoke
        result.forgot = forget(p, env)
    return result


def _revoke_cached(p: Profile, entry: CacheEntry, shared: CacheEntry, result: Logout,
                   env: Mapping[str, str] | None) -> None:
    # the sign-in's refresh token; one in the profile's own file is a refresh_token
    # profile's, or a device_code profile's from before sign-ins were shared
    refresh = list(dict.fromkeys(t for t in (shared.refresh_token, entry.refresh_token) if t))
    tokens = [("refresh_token", token) for token in refresh]
    if entry.access_token:
        tokens.append(("access_token", entry.access_token))
        result.access_valid_until = number_claim(unverified_claims(entry.access_token), "exp")
    if shared.refresh_token:
        result.signed_out = [other.name for other in signin_siblings(p, env)]
    if tokens and p.flow in IDP_FLOWS:
        _revoke_all(p, tokens, result)


def _revoke_all(p: Profile, tokens: list[tuple[str, str]], result: Logout) -> None:
    try:
        client = OAuthClient(p)
    except ClientError as exc:
        result.failed.append(f"the tokens of profile {p.name!r}: {exc}")
        return
    try:
        endpoint = _revocation_endpoint(p, client, result)
        if endpoint is None:
            return
        for hint, token in tokens:
            error, failure = _revoke(client, endpoint, token, hint)
            if failure is None:
                result.revoked.append(hint)
            elif hint == "access_token" and error == "unsupported_token_type":
                # RFC 7009 2.2.1: an IdP need not revoke access tokens (JWTs, as a rule)
                result.access_not_revocable = True
            else:
                result.failed.append(f"{_TOKEN_NAMES[hint]} of profile {p.name!r}: {failure}")
    finally:
        client.close()


def _revocation_endpoint(p: Profile, client: OAuthClient, result: Logout) -> str | None:
    endpoint = client.metadata.get("revocation_endpoint")
    if not endpoint and p.issuer and "issuer" not in client.metadata:
        # the profile's token_endpoint spared the discovery: ask for it now
        try:
            endpoint = discover(p).get("revocation_endpoint")
        except ClientError as exc:
            result.failed.append(f"the tokens of profile {p.name!r}: {exc}")
            return None
    if not endpoint:
        result.not_revoked = (f"the IdP of profile {p.name!r} advertises no "
                              "revocation_endpoint: its tokens stay valid until they expire")
        return None
    return check_url(str(endpoint), "revocation_endpoint")


def _revoke(client: OAuthClient, endpoint: str, token: str,
            hint: str) -> tuple[str | None, str | None]:
    """RFC 7009 section 2: (None, None) when revoked, else the error code (if the IdP
    gave one) and why not (never the token)."""
    p = client.profile
    auth = client.session.client_auth(p.auth_method)
    try:
        resp = client.session.post(endpoint, data={"token": token, "token_type_hint": hint},
                                   auth=auth, withhold_token=True,
                                   headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        return None, http_error_line(exc, endpoint, p)
    if resp.status_code == 200:  # also for a token the IdP no longer knows (2.2)
        return None, None
    try:
        data = resp.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str) and error:
        description = data.get("error_description") if isinstance(data, dict) else None
        text = f"refused by the IdP: {error}"
        if description:
            text += f" ({' '.join(str(description).split())[:300]})"
        return error, text
    return None, f"the revocation endpoint answered HTTP {resp.status_code}"
