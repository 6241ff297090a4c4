"""Time pyhook in-process, under the interpreter and packages the server uses.

Run by time_breakdown.py as ``/usr/bin/python3 validate_timing.py`` with the
installed ``pg_oauth.python_path`` first on sys.path; reads JSON on stdin
({"issuer", "audience", "jwks", "loops", "tokens": {case: token}}) and prints JSON:
microseconds per call of each step, for each case.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import timeit
from typing import Any

PAUSE = 0.003  # about one login's time between two validations at 1 client


def best_per_call(fn: Any, loops: int) -> float:
    """Microseconds per call, best of 5 repeats (the least disturbed)."""
    return min(timeit.repeat(fn, number=loops, repeat=5)) / loops * 1e6


def median_after_pause(fn: Any, loops: int) -> float:
    """Microseconds per call when each call follows a pause, as logins arrive one
    client at a time: caches and predictors have gone cold by then."""
    samples = []
    for _ in range(loops):
        time.sleep(PAUSE)
        started = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return statistics.median(samples)


def main() -> None:
    request = json.load(sys.stdin)
    from jwt.algorithms import get_default_algorithms

    from pyhook.config import Config
    from pyhook.jwks_cache import KeyStore
    from pyhook.sql_rows import decision_row
    from pyhook.validator import validate

    issuer, loops = request["issuer"], int(request["loops"])
    config = Config.from_rows(
        [{"issuer": issuer, "audiences": [request["audience"]], "jwks": request["jwks"],
          "jwks_uri": None}],
        [{"id": 1, "issuer": issuer, "claim": "sub", "pattern": "(alice)", "role": r"\1"}],
        1)
    keys = KeyStore()
    jwks = {k["kid"]: k for k in json.loads(request["jwks"])["keys"]}
    results: dict[str, dict[str, float]] = {}
    for case, token in request["tokens"].items():
        decision = validate(token, "alice", "postgres", "127.0.0.1", True, config, keys)
        if not decision.ok:
            raise SystemExit(f"{case}: refused in-process: {decision.reason} {decision.detail}")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = json.loads(_b64(header_b64))
        algorithm = get_default_algorithms()[header["alg"]]
        key = algorithm.from_jwk(json.dumps(jwks[header["kid"]]))
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        signature = _b64(signature_b64)
        results[case] = {
            "validate": best_per_call(
                lambda t=token: validate(t, "alice", "postgres", "127.0.0.1", True,
                                         config, keys), loops),
            "verify": best_per_call(
                lambda k=key, s=signature, i=signing_input, a=algorithm:
                a.verify(i, k, s), loops),
            "decision_row": best_per_call(lambda d=decision: decision_row(d), loops),
            "validate_after_pause": median_after_pause(
                lambda t=token: validate(t, "alice", "postgres", "127.0.0.1", True,
                                         config, keys), min(loops, 300)),
        }
    json.dump({"python": sys.version.split()[0], "results": results,
               "empty_after_pause": median_after_pause(lambda: None, 300)}, sys.stdout)


def _b64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


if __name__ == "__main__":
    main()
