"""docs/operations.md's runbook statements, run as written against a real server: the
issuer and the kid of the examples are replaced by the test issuer's, nothing else."""

from __future__ import annotations

import re
import time
from pathlib import Path

import psycopg
import pytest
from conftest import until

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
EXAMPLE_ISSUER = "https://login.example.com"


def section(title: str) -> str:
    text = OPERATIONS.read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    end = text.find("\n### ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def sql_blocks(title: str) -> list[str]:
    return [re.sub(r"^ {3}", "", b, flags=re.MULTILINE)
            for b in re.findall(r"```sql\n(.*?)```", section(title), re.DOTALL)]


def as_written(block: str, issuer: str, kid: str) -> str:
    return block.replace(f"'{EXAMPLE_ISSUER}'", f"'{issuer}'").replace("'…'", f"'{kid}'")


def _alive(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1").fetchone()
        return True
    except psycopg.Error:
        return False


def logged(cluster, jti: str) -> None:
    until(lambda: cluster.sql("SELECT 1 FROM oauth.audit_log WHERE token_id = %s", (jti,)),
          timeout=15, what=f"the audit row of {jti}")


@pytest.fixture
def compromised_key(cluster, issuer):
    """The runbook's SQL of 'A signing key is compromised', and its issuer and kid."""
    blocks = sql_blocks("A signing key is compromised, or the issuer withdrew it")
    yield [as_written(b, issuer.issuer, issuer.current_kid("RS256")) for b in blocks]
    cluster.sql("DELETE FROM oauth.revocations WHERE issuer = %s", (issuer.issuer,))


def test_step5_audit_query_names_issuer_and_outcome(cluster, issuer, compromised_key):
    jti = f"runbook-audit-{time.time_ns()}"
    cluster.token_connect("alice", issuer.mint(sub="alice", jti=jti)).close()
    logged(cluster, jti)
    query = next(b for b in compromised_key if "FROM oauth.audit_log" in b
                 and "oauth.revoke" not in b)
    with psycopg.connect(cluster.admin_dsn("postgres")) as conn:
        cur = conn.execute(query)
        names = [c.name for c in cur.description]
        rows = cur.fetchall()
    assert "issuer" in names and "outcome" in names
    mine = [dict(zip(names, r)) for r in rows if r[names.index("token_id")] == jti]
    assert mine and mine[0]["issuer"] == issuer.issuer and mine[0]["outcome"] == "ok"


def test_revoke_by_token_id_from_the_audit_log_is_one_statement(cluster, issuer, refused,
                                                               compromised_key):
    jti = f"runbook-jti-{time.time_ns()}"
    token = issuer.mint(sub="alice", jti=jti)
    session = cluster.token_connect("alice", token)
    try:
        logged(cluster, jti)
        revoke = next(b for b in compromised_key if "token_id => token_id" in b)
        cluster.sql(revoke)
        until(lambda: not _alive(session), timeout=10, what="the session of a used token")
        assert refused("alice", token) == "revoked"
        assert cluster.sql("SELECT issuer FROM oauth.revocations WHERE token_id = %s",
                           (jti,)) == [(issuer.issuer,)]
    finally:
        session.close()


def test_step5_issued_before_keeps_fresh_tokens_working(cluster, issuer, refused,
                                                        compromised_key):
    old = issuer.mint(sub="alice", now=time.time() - 60)
    session = cluster.token_connect("alice", old)
    try:
        revoke = next(b for b in compromised_key if "issued_before => now()" in b)
        cluster.sql(revoke)
        until(lambda: not _alive(session), timeout=10, what="the old token's session to end")
        assert refused("alice", old) == "revoked"
        time.sleep(1.1)  # iat has whole seconds
        cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    finally:
        session.close()


def test_routine_key_rotation_check_lists_keys_and_fetch_time(cluster, issuer):
    cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    query = next(b for b in sql_blocks("Routine key rotation") if "oauth.jwks_cache" in b)
    rows = cluster.sql(query)
    mine = [r for r in rows if r[0] == issuer.issuer]
    assert mine and mine[0][1] is not None
    assert issuer.current_kid("RS256") in mine[0][2]
