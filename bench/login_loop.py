"""Login latency from a client loop: psycopg connects, one after another.

Methods compared with each other take turns login by login, in a random order each
round, so that the noise of a shared machine (other processes, CPU frequency) and the
after-effects of one login on the next fall on all of them alike.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from testbed import Target

T = TypeVar("T")


@dataclass
class Login:
    """One side of a comparison: where to log in, and with which password or token.
    ``tokens``: a fresh token for every login (else the target's password each time)."""

    name: str
    target: Target
    tokens: Iterator[str] | None = None


# fixed, so that a run can be repeated turn for turn
_SEED = 20261206


def turn_order(items: Sequence[T], round_index: int) -> list[T]:
    """The order of one round: a random permutation, the same one for the same round
    (seeded by it), so callers may ask again to match results to items. Random, not
    rotated: in a fixed cycle each method always follows the same one and inherits its
    after-effects (a cycle read trust 0.3-0.4 ms low under load, issue 24)."""
    order = list(items)
    random.Random(_SEED + round_index).shuffle(order)
    return order


def one_login(target: Target, password: str | None) -> float:
    """Seconds for one successful login (connect); the connection is then closed."""
    started = time.perf_counter()
    conn = psycopg.connect(target.conninfo(), password=password, connect_timeout=20)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def login_latencies(target: Target, count: int) -> list[float]:
    """Seconds taken by each of ``count`` logins, one after another."""
    return [one_login(target, target.password) for _ in range(count)]


def interleaved_latencies(logins: Sequence[Login], count: int) -> dict[str, list[float]]:
    """``count`` logins of each, taking turns login by login."""
    out: dict[str, list[float]] = {login.name: [] for login in logins}
    for i in range(count):
        for login in turn_order(logins, i):
            password = next(login.tokens) if login.tokens else login.target.password
            out[login.name].append(one_login(login.target, password))
    return out


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction 0.5 is the median)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)
