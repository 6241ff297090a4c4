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
_REASON = re.compile(r"reason=([a-z_]+)(?::\s*([^\r\n]*))?")


@dataclass(frozen=True)
class Refusal:
    user: str
    reason: str | None
    detail: str | None


def find_refusal(text: str) -> Refusal | None:
    """The last pg_oauth refusal in a client's error output, if any."""
    failed = list(_FAILED.finditer(text))
    if not failed:
        return None
    last = failed[-1]
    reason = _REASON.search(text, last.end())
    return Refusal(user=last.group(1).replace('""', '"'),
                   reason=reason.group(1) if reason else None,
                   detail=(reason.group(2) or None) if reason else None)


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
           password_option: str = "") -> list[str]:
    """Lines (without prefix) saying what was refused and what to do about it.
    ``password_option``: the option that gave the child one token for its whole run."""
    claims = unverified_claims(token) or {}
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
    what = {
        "audience_mismatch":
            f"the server accepts other audiences than {_show(aud)}: set resource (or "
            f"audience) in profile {p!r} to one listed in the server's oauth.issuers.audiences"
            " (the DBA can tell, or set pg_oauth.client_detail = full to show it)",
        "untrusted_issuer":
            f"the server does not trust issuer {_show(iss)} (not in oauth.issuers, or "
            "disabled): use a profile for the issuer the server trusts, or ask the DBA",
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
    return [head, token_line, what]
