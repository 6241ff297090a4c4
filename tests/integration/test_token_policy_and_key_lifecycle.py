"""End to end: per-issuer token policy, revocations, oauth.explain, several issuers,
and the key lifecycle -- Cache-Control/ETag, stale-if-error up to jwks_max_stale,
withdrawn keys, and oauth.jwks_cache warming a restarted server and a standby."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import (
    AUDIENCE,
    RecordingIssuer,
    attempt,
    make_cluster,
    make_standby,
    until,
)
from pg_oauth_dev.dev_issuer import DevIssuer
from pgcluster import Cluster, free_port

ROOT = Path(__file__).resolve().parents[2]


# -- token policy on the shared cluster -------------------------------------------------


@pytest.fixture
def policy(cluster: Cluster, issuer: RecordingIssuer) -> Iterator[Callable[..., None]]:
    def set_columns(**columns: object) -> None:
        names = ", ".join(f"{name} = %s" for name in columns)
        cluster.sql(f"UPDATE oauth.issuers SET {names} WHERE issuer = %s",
                    (*columns.values(), issuer.issuer))  # fmt: skip

    yield set_columns
    set_columns(typ=None, required_claims=None, authorized_parties=None)


def test_typ_check(cluster, issuer, refused, policy):
    policy(typ=["at+jwt"])
    assert refused("alice", issuer.mint(sub="alice")) == "unsupported_typ"  # typ JWT
    token = issuer.mint(sub="alice", headers={"typ": "application/at+jwt"})
    cluster.token_connect("alice", token).close()


def test_required_claims_and_azp(cluster, issuer, refused, policy):
    policy(
        required_claims=["email_verified=true", "tenant"], authorized_parties=["cli"]
    )
    good = {"email_verified": True, "tenant": "t1", "azp": "cli"}
    cluster.token_connect("alice", issuer.mint(good, sub="alice")).close()
    assert (
        refused("alice", issuer.mint({**good, "email_verified": False}, sub="alice"))
        == "missing_claim"
    )
    assert (
        refused("alice", issuer.mint({**good, "tenant": None}, sub="alice"))
        == "missing_claim"
    )
    assert (
        refused("alice", issuer.mint({**good, "azp": "web"}, sub="alice"))
        == "audience_mismatch"
    )


def test_required_claims_are_checked_when_written(cluster, issuer):
    with pytest.raises(psycopg.errors.CheckViolation):
        cluster.sql(
            "UPDATE oauth.issuers SET required_claims = '{=x}' WHERE issuer = %s",
            (issuer.issuer,),
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        cluster.sql(
            "UPDATE oauth.issuers SET jwks_refresh_min = '2 hours' WHERE issuer = %s",
            (issuer.issuer,),
        )


@pytest.mark.parametrize(
    ("columns", "revoked"),
    [
        ({"token_id": "rev-1"}, True),
        ({"subject": "bob"}, True),
        ({"issuer": "ISSUER"}, True),
        ({"issuer": "ISSUER", "subject": "alice"}, False),
        ({"subject": "bob", "expires_at": "2000-01-01"}, False),
    ],
)
def test_revocations(cluster, issuer, refused, columns, revoked):
    columns = {k: issuer.issuer if v == "ISSUER" else v for k, v in columns.items()}
    token = issuer.mint(sub="bob", jti="rev-1")
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    (rid,) = cluster.sql(
        f"INSERT INTO oauth.revocations ({names}, reason) VALUES ({marks}, 'test') "
        "RETURNING id", tuple(columns.values()))[0]  # fmt: skip
    try:
        if revoked:
            assert refused("bob", token) == "revoked"
        else:
            cluster.token_connect("bob", token).close()
    finally:
        cluster.sql("DELETE FROM oauth.revocations WHERE id = %s", (rid,))
    # the deletion applies to the next login
    cluster.token_connect("bob", issuer.mint(sub="bob", jti="rev-1")).close()


# -- oauth.explain -------------------------------------------------------------------------


def explain(
    cluster: Cluster, token: str, role: str, database: str = "postgres"
) -> list:
    return cluster.sql("SELECT step, name, outcome, input, detail "
                       "FROM oauth.explain(%s, %s, %s)", (token, role, database))  # fmt: skip


def test_explain_shows_the_whole_trail(cluster, issuer):
    token = issuer.mint({"email": "alice@example.com"}, sub="alice")
    rows = explain(cluster, token, "alice")
    names = [r[1] for r in rows]
    assert names[:5] == ["header", "issuer", "algorithm", "typ", "key"]
    assert "rule 1" in names and names[-2:] == ["role", "decision"]
    assert rows[-1][2] == "pass" and rows[-1][4] == "ok: role 'alice' allowed"
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    text = json.dumps(rows, default=str)
    assert token.split(".")[2] not in text and token.split(".")[1] not in text
    key_row = rows[names.index("key")]
    assert "keys" in key_row[3] and "jwks.json" in key_row[3]


@pytest.mark.parametrize(
    ("user", "mint", "reason"),
    [
        ("alice", {"lifetime": -300}, "expired"),
        ("bob", {}, "role_not_allowed"),
        ("su", {"sub": "su"}, "superuser_forbidden"),
        ("ghost", {"sub": "ghost"}, "unknown_role"),
    ],
)
def test_explain_says_why_a_login_would_fail(cluster, issuer, user, mint, reason):
    token = issuer.mint(**{"sub": "alice", **mint})
    rows = explain(cluster, token, user)
    assert rows[-1][2] == "fail" and rows[-1][4].startswith(reason + ": ")
    failed = [r[1] for r in rows if r[2] == "fail"]
    assert failed[-1] == "decision" and len(failed) >= 2


def test_explain_is_for_superusers_only(cluster, issuer):
    token = issuer.mint(sub="alice")
    with cluster.token_connect("alice", token) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM oauth.explain('x', 'alice')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM oauth.revocations")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM oauth.jwks_cache")


def test_explain_of_garbage(cluster):
    rows = explain(cluster, "not-a-token", "alice")
    assert rows[-1][4].startswith("malformed: ")


def test_keys_are_persisted_public_members_only(cluster, issuer):
    cluster.token_connect("alice", issuer.mint(sub="alice")).close()
    rows = cluster.sql("SELECT jwks_uri, discovered, jwks, fetched_at > now() - interval '1 hour' "
                       "FROM oauth.jwks_cache WHERE issuer = %s", (issuer.issuer,))  # fmt: skip
    assert len(rows) == 1
    uri, discovered, jwks, recent = rows[0]
    assert (uri, discovered, recent) == (issuer.issuer + "/jwks.json", True, True)
    members = {name for key in jwks["keys"] for name in key}
    assert members <= {"kty", "kid", "alg", "use", "n", "e", "crv", "x", "y"}


# -- key lifecycle, on a cluster of its own with one validator worker ---------------------


@pytest.fixture(scope="module")
def second() -> Iterator[RecordingIssuer]:
    """Another issuer on a fixed port, so that it can be stopped and restarted."""
    keydir = tempfile.mkdtemp(prefix="pg_oauth-issuer2-")
    dev = DevIssuer(keydir, port=free_port())
    dev.start()
    yield RecordingIssuer(dev)
    dev.stop()
    shutil.rmtree(keydir, ignore_errors=True)


@pytest.fixture(scope="module")
def solo(issuer, second) -> Iterator[Cluster]:
    """One worker (deterministic key state), the shared issuer and the second one."""
    cluster = make_cluster(issuer, **{"pg_oauth.workers": 1})
    cluster.sql(
        "INSERT INTO oauth.issuers (issuer, audiences, algorithms, jwks_cooldown, "
        "jwks_refresh_min, jwks_max_stale, allow_loopback_http) VALUES (%s, %s, "
        "'{ES256,EdDSA}', '1 second', '1 second', '1 day', true)", (second.issuer, [AUDIENCE]))  # fmt: skip
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'email', 'carol@example\\.com', 'carol')",
                (second.issuer,))  # fmt: skip
    yield cluster
    cluster.stop()


def second_token(second: RecordingIssuer, **kw) -> str:
    kw.setdefault("alg", "ES256")
    return second.mint({"email": "carol@example.com"}, sub="c-1", **kw)


def test_several_issuers_each_with_its_own_policy(solo, issuer, second):
    solo.token_connect("carol", second_token(second)).close()
    solo.token_connect("alice", issuer.mint(sub="alice")).close()
    assert (
        attempt(solo, "carol", second_token(second, alg="RS256")) == "unsupported_alg"
    )
    # the first issuer's mapping does not apply to the second one's tokens
    assert (
        attempt(solo, "alice", second.mint(sub="alice", alg="ES256"))
        == "role_not_allowed"
    )
    solo.sql(
        "UPDATE oauth.issuers SET enabled = false WHERE issuer = %s", (second.issuer,)
    )
    try:
        assert attempt(solo, "carol", second_token(second)) == "untrusted_issuer"
        solo.token_connect("alice", issuer.mint(sub="alice")).close()
    finally:
        solo.sql(
            "UPDATE oauth.issuers SET enabled = true WHERE issuer = %s",
            (second.issuer,),
        )


def test_fetches_are_counted(solo, second):
    solo.token_connect("carol", second_token(second)).close()
    ok, failed = solo.sql("SELECT jwks_fetches_ok, jwks_fetches_failed FROM oauth.stats "
                          "WHERE issuer = %s", (second.issuer,))[0]  # fmt: skip
    assert ok >= 2 and failed == 0  # discovery and JWKS


def test_refresh_honours_max_age_and_etag(solo, second):
    solo.token_connect("carol", second_token(second)).close()
    second.set_cache_control("max-age=1")
    try:
        # an unknown kid makes the worker fetch now, and learn max-age and ETag
        assert (
            attempt(solo, "carol", second_token(second, kid="no-such")) == "unknown_key"
        )
        before = second.not_modified_responses
        # the idle worker refreshes within its next rounds, conditionally
        until(lambda: second.not_modified_responses > before, 30, "a 304 refresh")
        solo.token_connect("carol", second_token(second)).close()
    finally:
        second.set_cache_control("max-age=300")


def test_withdrawn_key_stops_working_after_the_next_fetch(solo, second):
    old_kid = second.current_kid("ES256")
    solo.token_connect("carol", second_token(second)).close()
    second.set_cache_control("max-age=1")
    try:
        new_kid = second.rotate("ES256", retire=True)
        time.sleep(1.2)  # past the unknown-kid refetch cooldown
        # a token with the new kid works at once (unknown kid: one refetch)
        solo.token_connect("carol", second_token(second, kid=new_kid)).close()
        assert (
            attempt(solo, "carol", second_token(second, kid=old_kid)) == "unknown_key"
        )
    finally:
        second.set_cache_control("max-age=300")


def test_stale_if_error_up_to_jwks_max_stale(solo, second):
    solo.sql("UPDATE oauth.issuers SET jwks_max_stale = '6 seconds' WHERE issuer = %s",
             (second.issuer,))  # fmt: skip
    second.set_cache_control("max-age=1")
    try:
        # fresh keys now: a new kid makes the worker fetch (past the 1 s cooldown
        # of the previous unknown-kid refetch)
        kid = second.rotate("ES256")
        time.sleep(1.2)
        solo.token_connect("carol", second_token(second, kid=kid)).close()
        second.set_garbage(True)
        # the last good keys keep working (fresh tokens: no decision cache) ...
        assert attempt(solo, "carol", second_token(second, kid=kid)) == "ok"
        # ... until they are older than jwks_max_stale
        until(lambda: attempt(solo, "carol", second_token(second, kid=kid))
              == "jwks_unavailable", 30, "stale keys refused")  # fmt: skip
        failed = solo.sql("SELECT jwks_fetches_failed FROM oauth.stats WHERE issuer = %s",
                          (second.issuer,))[0][0]  # fmt: skip
        assert failed >= 1
        second.set_garbage(False)
        until(lambda: attempt(solo, "carol", second_token(second, kid=kid)) == "ok",
              30, "keys back after the issuer recovered")  # fmt: skip
    finally:
        second.set_garbage(False)
        second.set_cache_control("max-age=300")
        solo.sql("UPDATE oauth.issuers SET jwks_max_stale = '1 day' WHERE issuer = %s",
                 (second.issuer,))  # fmt: skip


def test_check_command_reads_the_database(solo, second, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(second_token(second))
    python = sys.executable  # the venv that runs the tests (a worktree has no .venv)

    def check(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, "-m", "pg_oauth_command", "check", "--dsn", solo.admin_dsn(),
             "--token-file", str(token_file), "--no-fetch", *args],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip

    # --no-fetch: the keys come from oauth.jwks_cache
    out = check("--role", "carol")
    assert (out.returncode, out.stdout.strip()) == (0, "ok: role 'carol' allowed"), (
        out.stderr
    )
    out = check("--role", "alice")
    assert out.returncode == 1 and out.stdout.startswith("refused: role_not_allowed")


def test_restarted_server_and_standby_start_warm_without_the_issuer(solo, second):
    # keys are in oauth.jwks_cache (the worker wrote them after its fetches)
    assert solo.sql("SELECT count(*) FROM oauth.jwks_cache WHERE issuer = %s",
                    (second.issuer,))[0][0] == 1  # fmt: skip
    tokens = [second_token(second) for _ in range(3)]  # minted while it still runs
    second.stop()
    standby = None
    try:
        solo.restart()
        solo.wait_for_workers()
        assert attempt(solo, "carol", tokens[0]) == "ok"
        rows = explain(solo, tokens[1], "carol")
        key_input = next(r[3] for r in rows if r[1] == "key")
        assert "from oauth.jwks_cache" in key_input
        standby = make_standby(solo)
        assert attempt(standby, "carol", tokens[2]) == "ok"
    finally:
        if standby is not None:
            standby.stop()
        second.start()  # the same port: the issuer URL is unchanged
