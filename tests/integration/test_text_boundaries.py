"""Texts that leave the C side (kid, alg, reason, detail, names) are cut at a character
boundary, never inside one (issue 19, finding 1).  pyhook cuts the header's kid to 64
and alg to 16 characters; C kept 63 and 15 bytes of them, so a two-byte character at the
edge left a lone 0xC3 in oauth.audit_log and in the server log, which UTF-8 clients
cannot read and a restore of the configuration database refuses."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from conftest import attempt, until

KID_MARK = "KidEdge"
ALG_MARK = "AlgEdge"


def b64(obj: dict) -> str:
    raw = json.dumps(obj, ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_token(header: dict, issuer_url: str) -> str:
    """A compact JWS by hand: any header, a plausible payload, a signature that fails."""
    payload = {"iss": issuer_url, "sub": "alice", "aud": "pg-test", "jti": uuid.uuid4().hex}
    return f"{b64(header)}.{b64(payload)}.{'A' * 342}"


# 64 characters, 65 bytes: the edge of pyhook's cut falls after the "é"
EDGE_HEADERS = {
    "kid": {"alg": "RS256", "kid": KID_MARK + "A" * (62 - len(KID_MARK)) + "é"},
    "alg": {"alg": ALG_MARK + "A" * (14 - len(ALG_MARK)) + "é", "kid": "k1"},
    # 63 characters, 65 bytes: pyhook keeps it whole, 63 bytes end after one "é"
    "kid2": {"alg": "RS256", "kid": KID_MARK + "B" * (61 - len(KID_MARK)) + "éé"},
}


@pytest.fixture(scope="module")
def edge_rows(cluster, issuer) -> list[tuple]:
    for header in EDGE_HEADERS.values():
        assert attempt(cluster, "alice", unsigned_token(header, issuer.issuer)) != "ok"

    def rows() -> list[tuple]:
        got = cluster.sql(
            "SELECT textsend(kid), textsend(alg), textsend(reason) FROM oauth.audit_log "
            "WHERE strpos(kid, %s) = 1 OR strpos(alg, %s) = 1", (KID_MARK, ALG_MARK))
        return got if len(got) >= len(EDGE_HEADERS) else []

    return until(rows, what="the audit rows of the edge tokens")


def test_audit_log_kid_and_alg_are_valid_utf8(edge_rows):
    for kid, alg, reason in edge_rows:
        for value in (kid, alg, reason):
            if value is not None:
                bytes(value).decode("utf-8")        # strict: raises on a lone 0xC3


def test_audit_log_keeps_whole_characters_at_the_edge(edge_rows):
    kids = {bytes(k).decode() for k, _, _ in edge_rows if k is not None}
    algs = {bytes(a).decode() for _, a, _ in edge_rows if a is not None}
    # 63 bytes of room: 62 ASCII characters and no half of the "é"
    assert KID_MARK + "A" * (62 - len(KID_MARK)) in kids
    assert ALG_MARK + "A" * (14 - len(ALG_MARK)) in algs
    assert KID_MARK + "B" * (61 - len(KID_MARK)) + "é" in kids


def test_audit_rows_pass_the_servers_encoding_check(cluster, edge_rows):
    """What a restore does: the server's own validation of every such row."""
    assert cluster.sql(
        "SELECT count(convert_from(textsend(kid), 'UTF8')) + "
        "count(convert_from(textsend(alg), 'UTF8')) FROM oauth.audit_log "
        "WHERE strpos(kid, %s) = 1 OR strpos(alg, %s) = 1", (KID_MARK, ALG_MARK)
    )[0][0] >= len(EDGE_HEADERS)


def test_server_log_lines_of_the_edge_tokens_are_valid_utf8(cluster, edge_rows):
    raw = cluster.logfile.read_bytes()
    lines = [line for line in raw.splitlines()
             if KID_MARK.encode() in line or ALG_MARK.encode() in line]
    assert lines, "no log line names the edge tokens"
    for line in lines:
        line.decode("utf-8")
