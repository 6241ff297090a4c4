"""What to do when a pg_oauth server refuses the token: the server says
``FATAL: JWT authentication failed for user "x"`` with ``DETAIL: reason=<code>[: sentence]``;
this turns the code, and the token's own (unverified) claims, into advice."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from pg_oauth_client.jwt_peek import number_claim, unverified_claims

_FAILED = re.compile(r'JWT authentication failed for user "((?:[^"]|"")*)"')
_PASSWORD_FAILED = re.compile(r'password authentication failed for user "((?:[^"]|"")*)"')
_REASON = re.compile(r"reason=([a-z_]+)(?::\s*([^\r\n]*))?")
_NO_TLS_MODES = ("disable", "allow", "prefer")


@dataclass(frozen=True)
class Refusal:
    user: str
    reason: str | None
    detail: str | None


def _last(pattern: re.Pattern[str], text: str) -> Refusal | None:
    """The last match of pattern in text, with the reason= that follows it."""
    failed = list(pattern.finditer(text))
    if not failed:
        return None
    last = failed[-1]
    reason = _REASON.search(text, last.end())
    return Refusal(user=last.group(1).replace('""', '"'),
                   reason=reason.group(1) if reason else None,
                   detail=(reason.group(2) or None) if reason else None)


def find_refusal(text: str) -> Refusal | None:
    """The last pg_oauth refusal in a client's error output, if any."""
    return _last(_FAILED, text)


def find_password_failure(text: str) -> Refusal | None:
    """A token login that pg_hba.conf sent to a password line: PostgreSQL's own
    "password authentication failed", with pg_oauth's reason when the server added it
    (hba_password_line, ssl_required; none with pg_oauth.client_detail = none)."""
    return _last(_PASSWORD_FAILED, text)


def password_advice(refusal: Refusal, profile_name: str, sslmode: str | None) -> list[str]:
    """What to do when a token landed on a password line of pg_hba.conf."""
    p, user = profile_name, refusal.user
    head = (f"the server asked for a password, not a token, for user {user!r} (profile "
            f"{p!r}): this login did not reach pg_oauth's trust lines in pg_hba.conf")
    if refusal.reason:
        head += f" (reason={refusal.reason})"
    lines = [head]
    no_tls = sslmode in _NO_TLS_MODES
    if no_tls or refusal.reason == "ssl_required":
        lines.append(f"the connection used sslmode={sslmode or 'unknown'}, which may not use "
                     "TLS, and token lines are hostssl: use sslmode=verify-full (the "
                     f"profile's sslmode, PGSSLMODE, or ssl in the driver)")
    if refusal.reason == "hba_password_line":
        lines.append(f"the server knows {user!r} as a token role, but an earlier pg_hba.conf "
                     "line sends this connection to password authentication: ask the DBA "
                     "to move pg_oauth's trust line above it (the server log names both)")
    elif not no_tls and refusal.reason != "ssl_required":
        lines.append(f"role {user!r} is not one the token lines admit (not in the group they "
                     "name), or no token line matches this database or address: connect as "
                     "the role your token maps to, or ask the DBA to add the role to the "
                     "token lines' group")
    return lines


def connection_advice(text: str, token: str, profile_name: str, sslmode: str | None,
                      profile_issuer: str | None = None, *,
                      password_option: str = "") -> list[str]:
    """Advice for a failed login's error text (psql's stderr, a driver's exception),
    or [] when it is not a refusal pg-oauth can explain."""
    refusal = find_refusal(text)
    if refusal is not None:
        return advice(refusal, token, profile_name, profile_issuer,
                      password_option=password_option)
    failure = find_password_failure(text)
    if failure is not None:
        return password_advice(failure, profile_name, sslmode)
    return []


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _expired(exp: float | None, profile_name: str, password_option: str) -> str:
    """A token that expired by this machine's clock too simply aged; one that has not
    is the server's clock and this one's disagreeing."""
    p = profile_name
    if exp is None or exp > time.time():
        return ("the token had expired when the server checked it, though this machine's "
                "clock says it is still valid: one of the two clocks is wrong (the server "
                "allows the issuer's leeway); check this machine's clock, then ask the DBA")
    when = time.strftime("%H:%M:%S UTC", time.gmtime(exp))
    if password_option:
        return (f"the token expired at {when}, before this connection: {password_option} "
                "gives the command one token for its whole run; without it, pg-oauth "
                "renews the token while the command runs")
    return (f"the token expired at {when}, before this connection: it was not renewed in "
            f"time (see the messages above), or the program kept it; pg-oauth login "
            f"--profile {p} (or token --force), then run the command again")


def advice(refusal: Refusal, token: str, profile_name: str,
           profile_issuer: str | None = None, *, password_option: str = "") -> list[str]:
    """Lines (without prefix) saying what was refused and what to do about it.
    ``password_option``: the option that gave the child one token for its whole run."""
    peeked = unverified_claims(token)
    claims = peeked or {}
    aud, iss, sub = claims.get("aud"), claims.get("iss"), claims.get("sub")
    exp = number_claim(claims, "exp")
    p, user = profile_name, refusal.user
    head = (f"the server refused the token of profile {p!r} for user {user!r}: "
            f"reason={refusal.reason or 'not shown (pg_oauth.client_detail = none)'}")
    if refusal.detail:
        head += f" ({refusal.detail})"
    token_line = f"the token: iss {_show(iss)}, aud {_show(aud)}, sub {_show(sub)}"
    if exp is not None:
        token_line += f", expires {time.strftime('%H:%M:%S UTC', time.gmtime(exp))}"
    # a sentence after the reason is what client_detail = full adds: it is on already
    ask_full = "" if refusal.detail else \
        " (the DBA can tell, or set pg_oauth.client_detail = full to show it)"
    issuer_setting = (f"set issuer in profile {p!r} (now {profile_issuer}) to the issuer "
                      "the server trusts" if profile_issuer and profile_issuer != iss
                      else f"use a profile whose issuer the server trusts (issuer = ... "
                      f"in profile {p!r})")
    what = {
        "audience_mismatch":
            f"the server accepts other audiences than {_show(aud)}: set resource (or "
            f"audience) in profile {p!r} to one listed in the server's oauth.issuers.audiences"
            + ask_full,
        "untrusted_issuer":
            f"the server does not trust issuer {_show(iss)}, the one the token carries (not "
            f"in oauth.issuers, or disabled): {issuer_setting}, or ask the DBA to trust "
            f"{_show(iss)}",
        "role_not_allowed":
            f"no oauth.role_map rule gives role {user!r} to this token (sub {_show(sub)}): "
            "connect as the role your token maps to, or ask the DBA for a rule",
        "unknown_role":
            f"the token maps to role {user!r} but no such role exists: ask the DBA to create it",
        "role_cannot_login": f"role {user!r} is NOLOGIN: ask the DBA",
        "database_not_allowed":
            "the rule that maps your token does not cover this database: ask the DBA",
        "client_not_allowed":
            "the rule that maps your token does not cover your network address",
        "expired": _expired(exp, p, password_option),
        "not_yet_valid": "the token is not valid yet for the server: check the clocks",
        "lifetime_too_long":
            "the token lives longer than the server allows (max_token_lifetime): ask the "
            "IdP's admin for shorter tokens",
        "unsupported_typ":
            "the server requires another typ header for this issuer (e.g. at+jwt): request "
            "an access token, not an ID token",
        "missing_claim":
            "the token lacks a claim the server requires (sub or required_claims): request "
            "the scope that adds it, or ask the DBA which claim",
        "scope_missing":
            "the server's oauth line names scopes this token does not grant (in scope or "
            f"scp): add them to scope in profile {p!r}, then pg-oauth login --profile "
            f"{p}; the line's scope= option lists them",
        "unsupported_alg": "the token's signing algorithm is not in the issuer's allowlist",
        "unknown_key":
            "the server does not know the token's signing key (yet): try again in a minute",
        "bad_signature":
            "the signature does not verify with the issuer's keys: is this the right issuer?",
        "jwks_unavailable":
            "the server cannot fetch the issuer's keys right now: try again; the DBA sees why "
            "in the server log",
        "revoked": "this token or its subject was revoked by the DBA",
        "malformed":
            "the password is not a JWT the server accepts: the profile must give a JWT "
            "access token",
        "too_large": "the token is larger than pg_oauth.max_token_bytes",
        "ssl_required": "token logins need TLS: use sslmode=verify-full",
        "startup_option_forbidden":
            "token logins may not set role or session_authorization: remove them",
        "superuser_forbidden": f"{user!r} is (or is a member of) a superuser: token logins "
                               "may not use it",
        "privilege_forbidden": f"{user!r} reaches a privilege the server keeps from token "
                               "logins (pg_oauth.allow_privileges)",
        "replication_forbidden": "token logins may not open replication connections",
        "too_many_connections": "this subject holds as many sessions as the server allows",
        "rate_limited": "too many refused logins from this address: wait, then try again",
        "validator_unavailable": "the server's token validator is not running: ask the DBA",
        "validator_timeout": "the server's token validator did not answer in time: try again",
        "validator_error": "the server's token validator failed: the DBA sees why in the log",
    }.get(refusal.reason or "",
          "see the reason codes in the pg_oauth README, or ask the DBA to run "
          "oauth.explain() on a token like this one")
    lines = [head, token_line, what]
    if peeked is None or aud is None:
        lines.append(not_a_database_token(token, p))
    return lines


def not_a_database_token(token: str, profile_name: str) -> str:
    """An opaque token, or a JWT without aud: the IdP was not told which database."""
    what = "is not a JWT (an opaque token)" if unverified_claims(token) is None \
        else "has no aud claim"
    return (f"the token of profile {profile_name!r} {what}: most IdPs issue a JWT with the "
            f"database's audience only when asked for it: set resource = \"...\" (or "
            f"audience = \"...\") in profile {profile_name!r} to the audience in the "
            "server's oauth.issuers.audiences")
