"""The ``pg-oauth`` command.

Operator commands, for the server's administrators (``make install`` puts them on
PATH): ``explain``/``check``, the validator's decision on a token, and
``doctor``, the server's setup checker (``oauth.check_setup()``). Development
commands, never for production: ``dev-issuer``, ``mint`` and ``rotate``, a local
issuer and its tokens (docs/dev-tools.md), from the development package
(pg_oauth_dev, devtools/), which no server has.

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
from collections.abc import Sequence
from typing import Any

from pyhook.jwks_cache import FetchError, KeyStore
from pyhook.offline_config import (
    ConfigFileError,
    config_from_database,
    config_from_file,
)
from pyhook.plpython_adapter import explain_rows
from pyhook.server_explain import explain_on_server
from pyhook.setup_doctor import (
    EXIT_CANNOT_CHECK,
    DoctorError,
    exit_status,
    run_checks,
    summary,
)
from pyhook.validator import validate

# exit codes of explain/check
EXIT_ALLOWED, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


OPERATOR_COMMANDS = {
    "explain": "every check of a token login with its input and outcome",
    "check": "one line: would this token log in? (exit 0 yes, 1 no, 2 error)",
    "doctor": "list every risk in the server's setup with its fix "
    "(exit 0 none, 1 risks, 2 error)",
    "uninstall": "take pg_oauth out of a cluster in a safe order "
    "(token lines, preloads, extension)",
}
# the development package (pg_oauth_dev, devtools/; never on a server) owns these
DEVELOPMENT_COMMANDS = {
    "dev-issuer": "serve a local OIDC issuer until killed",
    "mint": "print a token signed by the development issuer's keys",
    "rotate": "add a signing key to the development issuer and print its kid",
}
# the client half (pg_oauth_client, pip-installable without pyhook) owns these
CLIENT_COMMANDS = {
    "token": "print a fresh access token for a profile",
    "psql": "run psql with a fresh token in PGPASSWORD",
    "exec": "run a command with a fresh token in PGPASSWORD",
    "login": "sign in again (device flow)",
    "logout": "forget a profile's cached tokens",
    "profiles": "list the profiles",
}
DSN_HELP = (
    "a libpq connection string, as psql takes it; as root with no user given: "
    "the postgres OS user over the local socket, as `runuser -u postgres -- psql`"
)


def _command_list() -> str:
    def rows(commands: dict[str, str]) -> str:
        return "\n".join(f"  {name:<11} {text}" for name, text in commands.items())

    return (
        "operator commands (the server's administrators):\n"
        f"{rows(OPERATOR_COMMANDS)}\n\n"
        "development commands (a local stand-in issuer and its tokens; "
        "never for production):\n"
        f"{rows(DEVELOPMENT_COMMANDS)}\n\n"
        "client commands (from the client package, pg_oauth_client: docs/clients.md):\n"
        f"{rows(CLIENT_COMMANDS)}\n\n"
        "`pg-oauth COMMAND --help` describes one."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pg-oauth",
        usage="pg-oauth [-h] COMMAND ...",
        description=_command_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command", required=True, help=argparse.SUPPRESS
    )

    for name in ("explain", "check"):
        sub = commands.add_parser(name, description=OPERATOR_COMMANDS[name])
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--config", help="configuration as a JSON file")
        source.add_argument(
            "--dsn",
            help="run oauth.explain in this database, as a superuser (with --now or "
            "--no-fetch: read oauth.* from it and decide here): " + DSN_HELP,
        )
        sub.add_argument("--role", required=True, help="the requested user")
        sub.add_argument("--database", default="postgres")
        sub.add_argument(
            "--client-addr", default=None, help="client IP address (default: none)"
        )
        sub.add_argument(
            "--token-file",
            default="-",
            help="file holding the token (default: standard input)",
        )
        sub.add_argument(
            "--no-fetch",
            action="store_true",
            help="never use the network: static or cached keys only",
        )
        sub.add_argument(
            "--now", type=float, default=None, help="evaluate at this Unix time"
        )
        sub.add_argument("--json", action="store_true", help="machine-readable output")

    doctor = commands.add_parser("doctor", description=OPERATOR_COMMANDS["doctor"])
    doctor.add_argument(
        "--dsn",
        default="",
        help="a superuser connection to the database named by pg_oauth.database "
        "(default: libpq's defaults); " + DSN_HELP,
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    uninstall = commands.add_parser(
        "uninstall",
        description=OPERATOR_COMMANDS["uninstall"] + ": every token line of pg_hba.conf "
        "becomes reject and the server reloads; pg_oauth leaves shared_preload_libraries, "
        "session_preload_libraries and oauth_validator_libraries and the server restarts; "
        "DROP EXTENSION pg_oauth in every database. As root, on a Debian cluster "
        "(pg_lsclusters). Runs again safely: it does what is left.",
    )
    target = uninstall.add_mutually_exclusive_group(required=True)
    target.add_argument("--cluster", metavar="VERSION/NAME",
                        help="the cluster, as pg_lsclusters names it (15/main)")
    target.add_argument("--pending", metavar="VERSION",
                        help="only list the clusters of this major that still use pg_oauth "
                        "(exit 1 if any): what the package's removal checks")
    uninstall.add_argument("--dry-run", action="store_true",
                           help="print the plan, change nothing")
    uninstall.add_argument("--cascade", action="store_true",
                           help="DROP EXTENSION ... CASCADE: also what depends on it "
                           "(RLS policies calling oauth.claim(), ...)")
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        try:
            from pg_oauth_client.cli import main as client_main
        except ImportError:
            print(f"pg-oauth {argv[0]}: a client command: install the client package "
                  "(pip install ./client, docs/clients.md)", file=sys.stderr)
            return EXIT_ERROR
        return client_main(argv)
    if argv and argv[0] in DEVELOPMENT_COMMANDS:
        try:
            from pg_oauth_dev.cli import main as development_main
        except ImportError:
            print(f"pg-oauth {argv[0]}: a development command: install the development "
                  "package (pip install ./devtools, docs/dev-tools.md)", file=sys.stderr)
            return EXIT_ERROR
        return development_main(argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "explain":
            return _explain(args)
        if args.command == "check":
            return _check(args)
        if args.command == "doctor":
            return _doctor(args)
        return _uninstall(args)
    except ConfigFileError as exc:
        print(f"pg-oauth {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"pg-oauth {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR if args.command in ("explain", "check") else 1


if __name__ == "__main__":
    sys.exit(main())
