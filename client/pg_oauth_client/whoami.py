"""``pg-oauth whoami``: who a profile's token says you are: its issuer, subject, audience,
scopes and expiry, read from the token (never the token itself). With ``--dsn``, who the
server says you are: a login with the token (psql, as ``pg-oauth psql`` runs it), then
what any logged-in role may ask: ``current_user``, the roles it is a member of, and
``oauth.session()`` where the extension is in that database. Which *other* roles the
token could log in as is ``oauth.explain()``'s, a superuser's."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from pg_oauth_client.cli import at_terminal, reported
from pg_oauth_client.errors import ConfigError, SignInNeeded
from pg_oauth_client.jwt_peek import number_claim, unverified_claims
from pg_oauth_client.profile import Profile, load_profile
from pg_oauth_client.refusal import connection_advice
from pg_oauth_client.tokens import Token, obtain

# one JSON line each; the second only where oauth.session() can be called
_SERVER_QUERY = r"""
SELECT CASE WHEN pg_catalog.to_regprocedure('oauth.session()') IS NULL THEN false
            ELSE pg_catalog.has_function_privilege(
                     pg_catalog.to_regprocedure('oauth.session()'), 'EXECUTE') END
       AS pg_oauth_session \gset
SELECT pg_catalog.json_build_object(
    'current_user', current_user,
    'database', pg_catalog.current_database(),
    'member_of', ARRAY(SELECT r.rolname::text FROM pg_catalog.pg_roles r
                       WHERE r.rolname <> current_user
                         AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')
                       ORDER BY 1));
\if :pg_oauth_session
SELECT pg_catalog.row_to_json(s) FROM oauth.session() s;
\endif
"""


def whoami(argv: Sequence[str]) -> int:
    """show what a profile's token says (issuer, subject, audience, scopes, expiry)"""
    parser = argparse.ArgumentParser(
        prog="pg-oauth whoami",
        description="What the profile's token says: issuer, subject, audience, scopes, "
                    "expiry (the token itself is never shown). With --dsn, also the role "
                    "the server logs the token in as and the roles that role is a member of "
                    "(psql runs the login, as pg-oauth psql does).")
    parser.add_argument("--profile", "-p", default=None,
                        help="profile name (default: $PG_OAUTH_PROFILE, else 'default')")
    parser.add_argument("--dsn", metavar="CONNINFO",
                        help="also log in with the token (a libpq connection string or URI; "
                             "the profile's host/port/dbname/user fill what it leaves out)")
    parser.add_argument("--no-interactive", action="store_true",
                        help="never start an interactive sign-in: fail instead")
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text")
    return reported(_run, parser.parse_args(list(argv)))


def _run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    # as pg-oauth token: a device sign-in only at a terminal, where someone can do it
    terminal = at_terminal()
    try:
        token = obtain(profile, interactive=terminal and not args.no_interactive)
    except SignInNeeded as exc:
        if args.no_interactive or terminal:
            raise
        raise exc.because(", and this is not a terminal to sign in from (standard input "
                          "or error is not a TTY)") from None
    report = token_report(token)
    status = 0
    if args.dsn is not None:
        server, status = _ask_server(args.dsn, token, profile)
        if server is not None:
            report["server"] = server
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        for label, value in _text_rows(report):
            print(f"{label + ':':<14}{value}")
    return status


def token_report(token: Token) -> dict[str, Any]:
    """What the token says about itself, unverified (the server verifies)."""
    claims = unverified_claims(token.access_token)
    report: dict[str, Any] = {"profile": token.profile, "jwt": claims is not None,
                              "from_cache": token.from_cache}
    exp = number_claim(claims, "exp") or token.expires_at
    if claims is not None:
        scopes = claims.get("scope", claims.get("scp"))
        if isinstance(scopes, str):
            scopes = scopes.split()
        report.update({
            "issuer": claims.get("iss"),
            "subject": claims.get("sub"),
            "audience": claims.get("aud"),
            "scopes": scopes if isinstance(scopes, list) else None,
            "client_id": claims.get("client_id", claims.get("azp")),
            "issued_at": number_claim(claims, "iat"),
        })
    report["expires_at"] = exp
    return report


def _text_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("profile", report["profile"])]
    if not report["jwt"]:
        rows.append(("token", "opaque (not a JWT): its claims are the IdP's to tell"))
    else:
        rows += [
            ("issuer", _show(report["issuer"])),
            ("subject", _show(report["subject"])),
            ("audience", _show(report["audience"])),
            ("scopes", _show(report["scopes"], " ")),
            ("client", _show(report["client_id"])),
        ]
        if report.get("issued_at"):
            rows.append(("issued", _clock(report["issued_at"])))
    if report["expires_at"]:
        left = report["expires_at"] - time.time()
        when = _clock(report["expires_at"])
        rows.append(("expires", f"{when} ({_duration(left)} left)" if left > 0
                     else f"{when} (expired)"))
    rows.append(("cached", "yes" if report["from_cache"] else "no (just obtained)"))
    server = report.get("server")
    if server:
        rows.append(("login role", server["current_user"]))
        rows.append(("member of", ", ".join(server["member_of"]) or "(no other role)"))
        rows.append(("database", server["database"]))
        session = server.get("session")
        if session:
            saw = (f"issuer {session['issuer']}, subject {session['subject']}, "
                   f"until {session['expires_at']}")
        else:
            saw = ("(oauth.session() is not in this database: CREATE EXTENSION pg_oauth "
                   "there to ask it)")
        rows.append(("server saw", saw))
    return rows


def _ask_server(dsn: str, token: Token, profile: Profile
                ) -> tuple[dict[str, Any] | None, int]:
    """Log in with the token and ask; (what the server said, exit status)."""
    psql = shutil.which("psql")
    if psql is None:
        raise ConfigError("whoami --dsn runs psql, which is not on PATH: install the "
                          "PostgreSQL client (postgresql-client)")
    env = dict(os.environ)
    for key, value in profile.libpq_environment().items():
        env.setdefault(key, value)
    env.setdefault("PGSSLMODE", "verify-full")  # as pg-oauth psql: no token to an unverified server
    env["PGPASSWORD"] = token.access_token
    done = subprocess.run([psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           "-d", dsn, "-f", "-"], input=_SERVER_QUERY, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        for line in connection_advice(done.stderr, token.access_token, token.profile,
                                      env.get("PGSSLMODE"), profile.issuer):
            print(f"pg-oauth: {line}", file=sys.stderr)
        return None, done.returncode
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    server: dict[str, Any] = json.loads(lines[0])
    server["session"] = json.loads(lines[1]) if len(lines) > 1 else None
    return server, 0


def _show(value: Any, sep: str = ", ") -> str:
    if isinstance(value, list):
        return sep.join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min {seconds % 60} s"
