"""Per-login cost of a 1 KB and an 8 KB token (printed, never asserted on).

Run ``pytest -s tests/unit/test_token_size_timing.py`` to see the table; the
figures in docs/validation.md come from it. Some PyJWT versions slow down sharply
on large tokens; pyhook only uses PyJWT's algorithm objects, and this measures
both paths so a regression in either shows.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jwt
import pytest
from pg_oauth_dev.dev_issuer import DevIssuer
from unit_support import AUD, ISS, NOW, no_network

from pyhook.config import Config
from pyhook.jwks_cache import KeyStore
from pyhook.validator import validate

ROUNDS = 150


def padded_token(dev: DevIssuer, alg: str, size: int) -> str:
    """A token of about ``size`` bytes: a realistic group list pads it."""
    groups: list[str] = []
    token = dev.mint({"iss": ISS, "groups": groups}, aud=AUD, alg=alg, now=NOW)
    while len(token) < size:
        groups.append(f"team-{len(groups):04d}-readers")
        token = dev.mint({"iss": ISS, "groups": groups}, aud=AUD, alg=alg, now=NOW)
    return token


def median_us(run: Callable[[], object]) -> float:
    run()  # warm: keys parsed, algorithm objects built
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_one_and_eight_kilobyte_tokens(
    alg: str, dev: DevIssuer, config: Callable[..., Config], static_jwks: str
) -> None:
    cfg = config()
    keys = KeyStore(fetch=no_network)
    public = {k["kid"]: k for k in dev.jwks()["keys"]}
    rows = []
    for size in (1024, 8192):
        token = padded_token(dev, alg, size)
        decision = validate(token, "alice", "app", None, True, cfg, keys, now=NOW)
        assert decision.ok, decision.detail
        ours = median_us(
            lambda t=token: validate(t, "alice", "app", None, True, cfg, keys, now=NOW)
        )
        key = jwt.PyJWK(public[dev.current_kid(alg)]).key
        options = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
        theirs = median_us(
            lambda t=token, k=key, o=options: jwt.decode(
                t, k, algorithms=[alg], audience=AUD, options=o
            )
        )
        rows.append((len(token), ours, theirs))
    print(
        f"\n{alg}: token bytes | pyhook validate() us | PyJWT {jwt.__version__} decode() us"
    )
    for size, ours, theirs in rows:
        print(f"{alg}: {size:>11} | {ours:>20.0f} | {theirs:>20.0f}")
