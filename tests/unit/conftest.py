"""Fixtures for the unit tests of pyhook: real keys, real signatures, no PostgreSQL."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pg_oauth_dev.dev_issuer import DevIssuer
from unit_support import (
    ALL_ALGS,
    AUD,
    DEFAULT_RULES,
    ISS,
    NOW,
    issuer_row,
    no_network,
)

from pyhook.config import Config
from pyhook.decision import Decision
from pyhook.jwks_cache import KeyStore
from pyhook.validator import validate


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    """A dev issuer (not serving) with a key for every supported alg."""
    issuer = DevIssuer(str(tmp_path_factory.mktemp("dev-keys")))
    for alg in ALL_ALGS:
        issuer.current_kid(alg)
    return issuer


@pytest.fixture(scope="session")
def static_jwks(dev: DevIssuer) -> str:
    return json.dumps(dev.jwks())


@pytest.fixture
def mint(dev: DevIssuer) -> Callable[..., str]:
    """mint(claims=None, **kw): a token of ISS for AUD, issued at NOW."""

    def _mint(claims: dict[str, Any] | None = None, **kw: Any) -> str:
        kw.setdefault("aud", AUD)
        kw.setdefault("now", NOW)
        return dev.mint({"iss": ISS, **(claims or {})}, **kw)

    return _mint


@pytest.fixture
def config(static_jwks: str) -> Callable[..., Config]:
    """config(rules=DEFAULT_RULES, **issuer columns): one issuer with static keys."""

    def _config(rules: list[dict[str, Any]] | None = None, **issuer: Any) -> Config:
        issuer.setdefault("jwks", static_jwks)
        rows = DEFAULT_RULES if rules is None else rules
        return Config.from_rows([issuer_row(**issuer)], rows, 1)

    return _config


@pytest.fixture
def check(config: Callable[..., Config]) -> Callable[..., Decision]:
    """check(token, role='alice', ...): validate against the static-key issuer at NOW."""

    def _check(
        token: Any,
        role: str = "alice",
        *,
        database: str = "app",
        client_addr: str | None = "10.0.0.5",
        cfg: Config | None = None,
        keys: KeyStore | None = None,
        now: float = NOW,
    ) -> Decision:
        return validate(
            token,
            role,
            database,
            client_addr,
            True,
            cfg or config(),
            keys or KeyStore(fetch=no_network),
            now=now,
        )

    return _check


@pytest.fixture
def http_server() -> Iterator[Callable[..., str]]:
    """http_server(handler_class) -> base URL of a real server on 127.0.0.1."""
    import threading
    from http.server import ThreadingHTTPServer

    servers: list[ThreadingHTTPServer] = []

    def start(handler: type) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.block_on_close = False
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
