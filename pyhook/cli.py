"""pyhook's subcommands of ``pg-oauth``, for the server's administrators (``make install``
puts the command on PATH; pg_oauth_command, the client's, finds these through the
entry-point group ``pg_oauth.commands``): ``explain``/``check``, the validator's decision
on a token, ``doctor``, the server's setup checker (``oauth.check_setup()``), and
``uninstall``. Each parses the arguments after its name.

``explain`` and ``check`` with ``--dsn`` run ``oauth.explain`` on the server (the
workers' keys, the role checks), the token a bind parameter in a transaction that
logs no statement (pyhook/server_explain.py). With ``--config``, or ``--dsn`` plus
``--now``/``--no-fetch``, pyhook's validation (the same code the server runs)
runs here against configuration from a JSON file or read from the database.
The token is read from a file or standard input, never from the command line,
where other users could see it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pyhook.jwks_cache import KeyStore
from pyhook.jwks_fetch import FetchError
from pyhook.offline_config import (
    ConfigFileError,
    config_from_database,
    config_from_file,
)
from pyhook.server_explain import explain_on_server
from pyhook.setup_doctor import (
    EXIT_CANNOT_CHECK,
    DoctorError,
    exit_status,
    run_checks,
    summary,
)
from pyhook.sql_rows import explain_rows
from pyhook.validator import validate

# exit codes of explain/check
EXIT_ALLOWED, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2

DSN_HELP = (
    "a libpq connection string, as psql takes it; as root with no user given: "
    "the postgres OS user over the local socket, as `runuser -u postgres -- psql`"
)


def explain(argv: Sequence[str]) -> int:
    """every check of a token login with its input and outcome"""
    return _guarded("explain", _explain, _decision_parser("explain", explain).parse_args(argv))


def check(argv: Sequence[str]) -> int:
    """one line: would this token log in? (exit 0 yes, 1 no, 2 error)"""
    return _guarded("check", _check, _decision_parser("check", check).parse_args(argv))


def doctor(argv: Sequence[str]) -> int:
    """list every risk in the server's setup with its fix (exit 0 none, 1 risks, 2 error)"""
    parser = argparse.ArgumentParser(prog="pg-oauth doctor", description=_summary(doctor))
    parser.add_argument(
        "--dsn",
        default="",
        help="a superuser connection to the database named by pg_oauth.database "
        "(default: libpq's defaults); " + DSN_HELP,
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return _guarded("doctor", _doctor, parser.parse_args(argv))


def uninstall(argv: Sequence[str]) -> int:
    """take pg_oauth out of a cluster in a safe order (token lines, preloads, extension)"""
    parser = argparse.ArgumentParser(
        prog="pg-oauth uninstall",
        description=_summary(uninstall) + ": every token line of pg_hba.conf "
        "becomes reject and the server reloads; pg_oauth leaves shared_preload_libraries, "
        "session_preload_libraries and oauth_validator_libraries and the server restarts; "
        "DROP EXTENSION pg_oauth in every database. As root, on a Debian cluster "
        "(pg_lsclusters). Runs again safely: it does what is left.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--cluster", metavar="VERSION/NAME",
                        help="the cluster, as pg_lsclusters names it (15/main)")
    target.add_argument("--pending", metavar="VERSION",
                        help="only list the clusters of this major that still use pg_oauth "
                        "(exit 1 if any): what the package's removal checks")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan, change nothing")
    parser.add_argument("--cascade", action="store_true",
                        help="DROP EXTENSION ... CASCADE: also what depends on it "
                        "(RLS policies calling oauth.claim(), ...)")
    return _guarded("uninstall", _uninstall, parser.parse_args(argv))


def _summary(command: Callable[..., int]) -> str:
    return (command.__doc__ or "").strip()


def _decision_parser(name: str, command: Callable[..., int]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"pg-oauth {name}", description=_summary(command))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="configuration as a JSON file")
    source.add_argument(
        "--dsn",
        help="run oauth.explain in this database, as a superuser (with --now or "
        "--no-fetch: read oauth.* from it and decide here): " + DSN_HELP,
    )
    parser.add_argument("--role", required=True, help="the requested user")
    parser.add_argument("--database", default="postgres")
    parser.add_argument(
        "--client-addr", default=None, help="client IP address (default: none)"
    )
    parser.add_argument(
        "--token-file",
        default="-",
        help="file holding the token (default: standard input)",
    )
    parser.add_argument(
        "--no-fetch",
        action="store_true",
        help="never use the network: static or cached keys only",
    )
    parser.add_argument(
        "--now", type=float, default=None, help="evaluate at this Unix time"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _guarded(
    name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    try:
        return run(args)
    except ConfigFileError as exc:
        print(f"pg-oauth {name}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"pg-oauth {name}: {exc}", file=sys.stderr)
        return EXIT_ERROR if name in ("explain", "check") else 1


def _no_network(
    url: str, timeout: float, max_bytes: int, etag: str | None = None
) -> bytes:
    raise FetchError("network disabled (--no-fetch)")


def _read_token(path: str) -> str:
    if path == "-":
        return sys.stdin.read().strip()
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read().strip()


def _decide(args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    # first: connecting as root may give up root (pyhook.local_connection)
    token = _read_token(args.token_file)
    if args.dsn and not args.no_fetch and args.now is None:
        rows = explain_on_server(
            args.dsn, token, args.role, args.database, args.client_addr
        )
        return rows, rows[-1]["outcome"] == "pass"
    if args.config:
        config, cached = config_from_file(args.config)
    else:
        config, cached = config_from_database(args.dsn)
    keys = KeyStore(fetch=_no_network) if args.no_fetch else KeyStore()
    for entry in cached:
        issuer = config.issuers.get(entry.issuer)
        if issuer is not None:
            keys.seed(issuer, entry)
    decision = validate(
        token,
        args.role,
        args.database,
        args.client_addr,
        True,
        config,
        keys,
        now=args.now,
        explain=True,
    )
    return explain_rows(decision), decision.ok


def _explain(args: argparse.Namespace) -> int:
    rows, ok = _decide(args)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            print(
                f"{row['step']:>2} {row['name']:<16} {row['outcome']:<5} {row['detail']}"
            )
            if row["input"]:
                print(f"{'':>2} {'':<16} {'':<5} input: {row['input']}")
    return EXIT_ALLOWED if ok else EXIT_REFUSED


def _check(args: argparse.Namespace) -> int:
    rows, ok = _decide(args)
    verdict = rows[-1]
    if args.json:
        print(json.dumps(verdict, ensure_ascii=False))
    else:
        reason, _, detail = verdict["detail"].partition(": ")
        print(f"ok: {detail}" if ok else f"refused: {reason}: {detail}")
    return EXIT_ALLOWED if ok else EXIT_REFUSED


def _doctor(args: argparse.Namespace) -> int:
    try:
        database, findings = run_checks(args.dsn)
    except DoctorError as exc:
        print(f"pg-oauth doctor: {exc}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    if args.json:
        print(json.dumps([vars(f) for f in findings], indent=2, ensure_ascii=False))
    else:
        for finding in findings:
            print(finding.line())
        print(summary(database, findings))
    return exit_status(findings)


def _uninstall(args: argparse.Namespace) -> int:
    from pyhook.uninstall import UninstallError, check_removal, uninstall

    try:
        if args.pending:
            return check_removal(args.pending)
        uninstall(args.cluster, dry_run=args.dry_run, cascade=args.cascade)
    except UninstallError as exc:
        print(f"pg-oauth uninstall: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0
