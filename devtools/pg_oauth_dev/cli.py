"""The development subcommands of ``pg-oauth`` (pg_oauth_command finds them through the
entry-point group ``pg_oauth.commands``): ``dev-issuer``, ``mint`` and ``rotate``, a local
stand-in issuer and its tokens (docs/dev-tools.md), never for production. Each parses the
arguments after its name.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pg_oauth_dev.dev_issuer import ISSUER_FILE, SIGNING_ALGORITHMS, DevIssuer


def dev_issuer(argv: Sequence[str]) -> int:
    """serve a local OIDC issuer until killed"""
    parser = _parser("dev-issuer", dev_issuer)
    parser.add_argument("--dir", required=True, help="key directory (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    return _guarded("dev-issuer", _serve, parser.parse_args(argv))


def mint(argv: Sequence[str]) -> int:
    """print a token signed by the development issuer's keys"""
    parser = _parser("mint", mint)
    parser.add_argument("--dir", required=True, help="key directory of the dev issuer")
    parser.add_argument("--sub", required=True)
    parser.add_argument("--aud", required=True)
    parser.add_argument("--alg", default=None, choices=SIGNING_ALGORITHMS,
                        help="default RS256, or the alg of --kid")
    parser.add_argument("--lifetime", type=int, default=300, help="seconds (default 300)")
    parser.add_argument("--expired", action="store_true",
                        help="a token that expired an hour ago")
    parser.add_argument("--claim", action="extend", nargs="+", type=_claim, default=[],
                        metavar="KEY=VALUE", help="extra claim; VALUE is JSON if it parses")
    parser.add_argument("--kid", default=None)
    parser.add_argument("--issuer", default=None, help="iss (default: read DIR/issuer)")
    return _guarded("mint", _mint, parser.parse_args(argv))


def rotate(argv: Sequence[str]) -> int:
    """add a signing key to the development issuer and print its kid"""
    parser = _parser("rotate", rotate)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--alg", default="RS256", choices=SIGNING_ALGORITHMS)
    parser.add_argument("--retire", action="store_true",
                        help="stop publishing the older keys of this alg")
    return _guarded("rotate", _rotate, parser.parse_args(argv))


def _parser(name: str, command: Callable[..., int]) -> argparse.ArgumentParser:
    summary = (command.__doc__ or "").strip()
    return argparse.ArgumentParser(prog=f"pg-oauth {name}",
                                   description="development: " + summary)


def _claim(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _guarded(
    name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    try:
        return run(args)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"pg-oauth {name}: {exc}", file=sys.stderr)
        return 1


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
