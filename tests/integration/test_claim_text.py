"""Claim values that leave the validator: identities PostgreSQL text cannot store are
refused, and an unverified issuer never reaches a log line, an audit row or the client
(issue 19, items 2 and 6)."""

from __future__ import annotations

import psycopg
import pytest
from conftest import attempt, until

MARKER = "PAYLOAD-MARKER-5c1f"


def audit_rows(cluster, since):
    return cluster.sql(
        "SELECT reason, issuer, subject, token_id FROM oauth.audit_log "
        "WHERE at >= %s ORDER BY id",
        (since,),
    )


def test_subject_with_nul_is_refused_malformed_and_audited(cluster, issuer):
    since = cluster.sql("SELECT now()")[0][0]
    # "alice\0" would be stored as "alice\ufffd" but compared raw by the revocation check
    assert attempt(cluster, "alice", issuer.mint(sub="alice\x00", jti="nul-sub")) == "malformed"
    assert attempt(cluster, "alice", issuer.mint(sub="alice", jti="surrogate-\ud800")) \
        == "malformed"
    rows = until(lambda: (r := audit_rows(cluster, since=since)) and len(r) >= 2 and r,
                 what="two audit rows")
    assert [r[0] for r in rows] == ["malformed", "malformed"]
    # the rows were written, with text PostgreSQL can store
    assert rows[0][1:4] == (issuer.issuer, "alice\ufffd", "nul-sub")
    assert rows[1][2:4] == ("alice", "surrogate-\ufffd")
    assert "sub claim contains NUL or an unpaired surrogate" in cluster.log_text()
    # the same subject without the NUL still logs in
    assert attempt(cluster, "alice", issuer.mint(sub="alice")) == "ok"


def test_unverified_issuer_reaches_no_log_row_or_client(cluster, issuer):
    iss = f"https://attacker.example/{MARKER}"
    # no valid signature: the issuer check refuses it before the signature is looked at
    token = issuer.mint({"iss": iss}, sub="alice").rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    since = cluster.sql("SELECT now()")[0][0]
    try:
        cluster.sql("ALTER SYSTEM SET pg_oauth.client_detail = 'full'")
        cluster.reload()
        with pytest.raises(psycopg.OperationalError) as excinfo:
            cluster.token_connect("alice", token)
        message = str(excinfo.value)
    finally:
        cluster.sql("ALTER SYSTEM RESET pg_oauth.client_detail")
        cluster.reload()
    assert "reason=untrusted_issuer" in message and "is not configured" in message
    assert MARKER not in message and "attacker" not in message
    rows = until(lambda: audit_rows(cluster, since=since), what="an audit row")
    assert rows[0][0] == "untrusted_issuer"
    dump = cluster.sql("SELECT string_agg(t::text, ' ') FROM oauth.audit_log t")[0][0]
    assert MARKER not in dump
    assert "untrusted_issuer" in cluster.log_text()
    assert [line for line in cluster.log_text().splitlines() if MARKER in line] == []
