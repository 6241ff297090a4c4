"""The ``pg-oauth`` command: a development issuer, minting and key rotation."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from pyhook.dev_issuer import ISSUER_FILE, SIGNING_ALGORITHMS, DevIssuer


def _claim(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pg-oauth",
        description="pg_oauth development tools (never for production).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "dev-issuer", help="serve a local OIDC issuer until killed"
    )
    serve.add_argument(
        "--dir", required=True, help="key directory (created if missing)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)

    mint = commands.add_parser("mint", help="print a signed token")
    mint.add_argument("--dir", required=True, help="key directory of the dev issuer")
    mint.add_argument("--sub", required=True)
    mint.add_argument("--aud", required=True)
    mint.add_argument(
        "--alg",
        default=None,
        choices=SIGNING_ALGORITHMS,
        help="default RS256, or the alg of --kid",
    )
    mint.add_argument("--lifetime", type=int, default=300, help="seconds (default 300)")
    mint.add_argument(
        "--expired", action="store_true", help="a token that expired an hour ago"
    )
    mint.add_argument(
        "--claim",
        action="extend",
        nargs="+",
        type=_claim,
        default=[],
        metavar="KEY=VALUE",
        help="extra claim; VALUE is JSON if it parses",
    )
    mint.add_argument("--kid", default=None)
    mint.add_argument("--issuer", default=None, help="iss (default: read DIR/issuer)")

    rotate = commands.add_parser("rotate", help="add a signing key and print its kid")
    rotate.add_argument("--dir", required=True)
    rotate.add_argument("--alg", default="RS256", choices=SIGNING_ALGORITHMS)
    rotate.add_argument(
        "--retire",
        action="store_true",
        help="stop publishing the older keys of this alg",
    )
    return parser


def _serve(args: argparse.Namespace) -> int:
    issuer = DevIssuer(args.dir, host=args.host, port=args.port).start()
    url = issuer.issuer
    path = os.path.join(issuer.key_dir, ISSUER_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(url + "\n")
    print(url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    issuer.stop()
    return 0


def _mint(args: argparse.Namespace) -> int:
    issuer = DevIssuer(args.dir)
    claims: dict[str, Any] = {"iss": args.issuer or issuer.issuer}
    now = time.time()
    if args.expired:
        now -= 3600 + args.lifetime
    claims.update(dict(args.claim))
    print(
        issuer.mint(
            claims,
            alg=args.alg,
            kid=args.kid,
            lifetime=args.lifetime,
            sub=args.sub,
            aud=args.aud,
            now=now,
        )
    )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    print(DevIssuer(args.dir).rotate(args.alg, retire=args.retire))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "dev-issuer":
            return _serve(args)
        if args.command == "mint":
            return _mint(args)
        return _rotate(args)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"pg-oauth {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
