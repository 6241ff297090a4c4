"""The client's subcommands of ``pg-oauth`` (pg_oauth_command finds them through the
entry-point group ``pg_oauth.commands``): ``token``, ``psql``, ``exec``, ``login``,
``logout``, ``profiles``. Each parses the arguments after its name.

Tokens go to standard output (``token``) or to the child only (``psql``/``exec``: a
private passfile kept fresh while it runs, live_passfile.py; or PGPASSWORD with
``--pgpassword``), never onto a command line or into a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from pg_oauth_client import transient_profile
from pg_oauth_client.errors import ClientError, SignInNeeded
from pg_oauth_client.idp_http import COMMAND_LINE_SOURCE
from pg_oauth_client.jwt_peek import unverified_claims
from pg_oauth_client.live_passfile import LivePassfile
from pg_oauth_client.profile import FLOWS, config_path, load_profile, profile_names
from pg_oauth_client.refusal import connection_advice, not_a_database_token
from pg_oauth_client.revocation import log_out
from pg_oauth_client.tokens import Token, obtain

_SCAN_LIMIT = 64 * 1024  # the tail of the child's stderr kept to find a refusal


def token(argv: Sequence[str]) -> int:
    """print a fresh access token for a profile"""
    return _main("token", argv)


def psql(argv: Sequence[str]) -> int:
    """run psql with a fresh token, renewed while it runs"""
    return _main("psql", argv)


def exec_command(argv: Sequence[str]) -> int:
    """run a command with a fresh token, renewed while it runs"""
    return _main("exec", argv)


def login(argv: Sequence[str]) -> int:
    """sign in again (device flow) or fetch anew"""
    return _main("login", argv)


def logout(argv: Sequence[str]) -> int:
    """revoke a profile's cached tokens at the IdP and forget them"""
    return _main("logout", argv)


def profiles(argv: Sequence[str]) -> int:
    """list the profiles of the config file"""
    return _main("profiles", argv)


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", "-p", default=None,
                   help="profile name (default: $PG_OAUTH_PROFILE, else 'default')")


def _add_freshness(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-valid", type=float, default=None, metavar="SECONDS",
                   help="reuse a cached token only if valid this long (default: the "
                        "profile's min_valid, 300; at most half the token's lifetime)")
    p.add_argument("--no-interactive", action="store_true",
                   help="never start an interactive sign-in: fail instead")


def _parser(name: str) -> argparse.ArgumentParser:
    descriptions = {
        "token": "Print an access token for the profile: the cached one while it stays "
                 "valid long enough, else a new one. Without a profile: --issuer, "
                 "--client-id, --resource and a client secret or key.",
        "login": "A new sign-in for a device_code profile, ignoring any cached refresh "
                 "token; other flows fetch a new token. Prints nothing on standard output.",
        "logout": "Revoke the profile's cached refresh and access tokens at the IdP "
                  "(RFC 7009, when it advertises a revocation_endpoint), then forget them. "
                  "They are forgotten even when the revocation fails (exit status 1).",
        "profiles": f"List the profiles of the config file ({config_path()}).",
    }
    for child, text in (("psql", "run psql"), ("exec", "run a command")):
        descriptions[child] = (text + " with a fresh token in a private password file "
                               "(PGPASSFILE) that is renewed while it runs, and the "
                               "profile's host/port/dbname/user/sslmode as PG* defaults. "
                               "When the server refuses the token, says why and what to do.")
    parser = _Parser(prog=f"pg-oauth {name}", description=descriptions[name])
    parser.set_defaults(command=name)
    if name == "profiles":
        return parser
    _add_profile(parser)
    if name == "token":
        _add_freshness(parser)
        parser.add_argument("--force", action="store_true",
                            help="do not reuse a cached token")
        parser.add_argument("--output", "-o", choices=("token", "json"), default="token",
                            help="token (default) or json with expires_at")
        transient_profile.add_options(parser)
    elif name in ("psql", "exec"):
        _add_freshness(parser)
        parser.add_argument("--pgpassword", action="store_true",
                            help="the token in PGPASSWORD instead, for programs that read "
                                 "no password file; it is not renewed")
        parser.hint = (f"put -- before the {'psql arguments' if name == 'psql' else 'command'}"
                       f": pg-oauth {name} -p PROFILE -- "
                       + ("-c 'SELECT 1'" if name == "psql" else "COMMAND [ARGS...]"))
        parser.add_argument("args", nargs=argparse.REMAINDER,
                            help="-- then the " + ("psql arguments" if name == "psql"
                                                   else "command and its arguments"))
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse's, with a hint after its error (the forgotten -- of psql and exec)."""

    hint = ""

    def error(self, message: str) -> NoReturn:
        if self.hint and "unrecognized arguments" in message:
            message += f"\n{self.hint}"
        super().error(message)


def at_terminal() -> bool:
    """A device sign-in needs someone at a terminal to read the code and to wait."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def reported(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A subcommand's exit status: a ClientError as its one line on stderr, ^C as 130."""
    try:
        return run(args)
    except ClientError as exc:
        print(f"pg-oauth: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("pg-oauth: interrupted", file=sys.stderr)
        return 130


def _main(name: str, argv: Sequence[str]) -> int:
    return reported(_run, _parser(name).parse_args(list(argv)))


def _run(args: argparse.Namespace) -> int:
    if args.command == "profiles":
        return _profiles()
    if args.command == "logout":
        done = log_out(load_profile(args.profile))
        for line in done.lines():
            print(f"pg-oauth: {line}", file=sys.stderr)
        return 0 if done.ok else 1
    if args.command == "login":  # asked for: the code is shown even without a terminal
        token = obtain(args.profile, force=True, sign_in=True, interactive=True)
        print(f"pg-oauth: signed in for profile {token.profile!r}"
              + (f", token valid until {_clock(token.expires_at)}" if token.expires_at else ""),
              file=sys.stderr)
        return 0
    profile = (transient_profile.from_options(args) if args.command == "token" else None
               ) or load_profile(args.profile)
    terminal = at_terminal()
    try:
        token = obtain(profile, min_valid=args.min_valid, force=getattr(args, "force", False),
                       interactive=terminal and not args.no_interactive)
    except SignInNeeded as exc:
        no_tty = (", and this is not a terminal to sign in from (standard input or error is "
                  "not a TTY)")
        if profile.source == COMMAND_LINE_SOURCE:  # no profile to pg-oauth login with
            raise ClientError(
                f"profile {profile.name!r} needs a sign-in"
                + (", and --no-interactive forbids one" if args.no_interactive else no_tty)
                + ": one-off use keeps none for later, so run it in a terminal"
                + (" without --no-interactive" if args.no_interactive else "")
                + ", or give a client secret or key (--client-secret-env, "
                "--client-secret-file, --private-key-file)") from None
        if args.no_interactive or terminal:
            raise
        raise exc.because(no_tty) from None
    if args.command == "token":
        if unverified_claims(token.access_token) is None:  # said on stderr: stdout is the token
            print(f"pg-oauth: warning: {not_a_database_token(token.access_token, profile.name)}",
                  file=sys.stderr)
        if args.output == "json":
            print(json.dumps({
                "profile": token.profile,
                "access_token": token.access_token,
                "expires_at": token.expires_at and int(token.expires_at),
                "expires_in": token.expires_at and max(int(token.expires_at - time.time()), 0),
            }))
        else:
            print(token.access_token)
        return 0
    command = list(args.args)
    if command and command[0] == "--":
        command = command[1:]
    if args.command == "psql":
        command = ["psql", *command]
    if not command:
        print("pg-oauth: exec needs a command: pg-oauth exec -- COMMAND [ARGS...]",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    for key, value in profile.libpq_environment().items():
        env.setdefault(key, value)
    # a token must not go to a server nobody verified: libpq's default (prefer) would
    env.setdefault("PGSSLMODE", "verify-full")
    exe = shutil.which(command[0], path=env.get("PATH"))
    if exe is None:
        print(f"pg-oauth: {command[0]}: command not found", file=sys.stderr)
        return 127
    command[0] = exe
    if args.pgpassword:
        env["PGPASSWORD"] = token.access_token
        return _run_child(command, env, lambda: token.access_token, profile.name,
                          "--pgpassword", profile.issuer)
    env.pop("PGPASSWORD", None)  # libpq would prefer it to the file
    renewal_notices = _first_only()

    def renew() -> Token:
        return obtain(profile, min_valid=args.min_valid, interactive=False,
                      notify=renewal_notices)

    with LivePassfile(token, renew, _stderr_line) as passfile:
        env["PGPASSFILE"] = str(passfile.path)
        return _run_child(command, env, lambda: passfile.token.access_token,
                          profile.name, "", profile.issuer)


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _first_only() -> Callable[[str], None]:
    """The renewals' notices: the first is news, the same every minute is noise."""
    shown: list[str] = []

    def notify(line: str) -> None:
        if not shown:
            shown.append(line)
            _stderr_line(line)

    return notify


_FORWARDED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT")
                   if hasattr(signal, name))


def _run_child(command: list[str], env: dict[str, str], token: Callable[[], str],
               profile_name: str, password_option: str,
               profile_issuer: str | None = None) -> int:
    """Run the command; pass its stderr through as it comes, keeping the tail to find a
    refusal. Ctrl-C is the child's to handle (psql cancels a query); SIGTERM, SIGHUP and
    SIGQUIT are passed on to it, so that the passfile goes when the child does."""
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        if proc is None:
            raise SystemExit(128 + signum)
        proc.send_signal(signum)

    # a handler, not SIG_IGN: handlers are reset by exec, so the child keeps Ctrl-C
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, _ignore_signal)}
    for signum in _FORWARDED:
        previous[signum] = signal.signal(signum, forward)
    try:
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        tail = b""
        err = sys.stderr.buffer
        while chunk := os.read(proc.stderr.fileno(), 65536):
            err.write(chunk)
            err.flush()
            tail = (tail + chunk)[-_SCAN_LIMIT:]
        status = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for line in connection_advice(tail.decode("utf-8", "replace"), token(), profile_name,
                                  env.get("PGSSLMODE"), profile_issuer,
                                  password_option=password_option):
        print(f"pg-oauth: {line}", file=sys.stderr)
    return status if status >= 0 else 128 - status


def _ignore_signal(signum: int, frame: object) -> None:
    """Ctrl-C while the child runs: the child (in the same process group) gets it too."""


def _profiles() -> int:
    names = profile_names()
    if not names:
        print(f"pg-oauth: no profiles in {config_path()}", file=sys.stderr)
        return 0
    for name in names:
        try:
            p = load_profile(name, apply_env=False)
            where = p.issuer or p.token_file or (p.command[0] if p.command else "")
            print(f"{name}\t{p.flow}\t{where}")
        except ClientError as exc:
            print(f"{name}\t(error)\t{exc}")
    return 0


def _clock(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts or 0))


__all__ = ["FLOWS", "exec_command", "login", "logout", "profiles", "psql", "token"]
