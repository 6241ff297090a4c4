"""After a token login, what pg_oauth can reach no longer holds the token (issue 19,
finding 3).  Read as root from /proc/PID/mem: the admitted backend, and the shared memory
the validator workers take tokens from.

What pg_oauth cannot reach, and these tests therefore step around:
- PostgreSQL's protocol receive buffer (PqRecvBuffer, static in pqcomm.c, so in the
  postgres executable's static data) keeps the PasswordMessage until the session's
  next messages overwrite it: hits there are not counted;
- inside a validator worker, PL/Python's copies (the argument converted for Python,
  the str objects pyhook makes of it) stay in freed memory until reused: not tested,
  reported in docs/security.md.
"""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="reading another process's memory needs root")


def static_data(pid: int) -> list[tuple[int, int]]:
    """The executable's mappings and the anonymous one right after them (its .bss)."""
    exe = os.readlink(f"/proc/{pid}/exe")
    ranges: list[tuple[int, int]] = []
    follows = False
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            if name == exe or (follows and name == "" and ranges and ranges[-1][1] == start):
                ranges.append((start, end))
                follows = name == exe
            else:
                follows = False
    return ranges


def memory_hits(pid: int, needle: bytes) -> list[tuple[str, int]]:
    """(mapping name, address) of every copy of needle in process pid's memory."""
    hits: list[tuple[str, int]] = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else "[anon]"
            if "r" not in fields[1] or name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            hits += [(name, start + m.start()) for m in re.finditer(re.escape(needle), data)]
    return hits


def signature_of(token: str) -> bytes:
    return token.rsplit(".", 1)[1].encode()


def validator_pids(cluster) -> list[int]:
    return [r[0] for r in cluster.sql(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_oauth validator'")]


def outside_static_data(pid: int, needle: bytes) -> list[tuple[str, int]]:
    ranges = static_data(pid)
    return [h for h in memory_hits(pid, needle)
            if not any(lo <= h[1] < hi for lo, hi in ranges)]


@pytest.mark.parametrize("piece", ["whole", "pieces"])
def test_admitted_backend_keeps_no_copy_of_the_token(cluster, issuer, piece):
    """The PasswordMessage pg_oauth read, and OpenSSL's record buffer
    (SSL_OP_CLEANSE_PLAINTEXT), hold nothing of the token once it was checked;
    "pieces": not even 32 bytes of its signature."""
    token = issuer.mint(sub="alice")
    sig = signature_of(token)
    needles = [sig] if piece == "whole" else [sig[i:i + 32] for i in range(0, len(sig) - 32, 16)]
    with cluster.token_connect("alice", token) as conn:
        pid, ssl = conn.execute("SELECT pid, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                                ).fetchone()
        assert ssl
        found = {n: outside_static_data(pid, n) for n in needles}
        found = {n: h for n, h in found.items() if h}
        assert not found, f"{len(found)} of {len(needles)} remain: {list(found.values())[:3]}"


def test_shared_memory_keeps_no_token(cluster, issuer):
    """The worker wipes the token's shared-memory slot as soon as it copied it out:
    a backend that never saw the token maps the same shared memory, and finds none."""
    tokens = [issuer.mint(sub="alice") for _ in range(3)]
    for token in tokens:
        cluster.token_connect("alice", token).close()
    with cluster.admin() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for token in tokens:
            hits = memory_hits(pid, signature_of(token))
            assert not hits, f"the token is in shared memory at {hits}"


