"""Token logins end to end: what gets in, and every class of refusal with its reason."""

from __future__ import annotations

import os
import subprocess
import time

import pgwire
import psycopg
import pytest
from pg_oauth_dev.dev_issuer import forge_hs256_with_public_key


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_logs_in_as_mapped_role(cluster, issuer, alg):
    token = issuer.mint({"email": "alice@example.com"}, sub="alice", alg=alg)
    with cluster.token_connect("alice", token) as conn:
        user, sub, email = conn.execute(
            "SELECT current_user, oauth.claim('sub'), oauth.claim('email')").fetchone()
        assert (user, sub, email) == ("alice", "alice", "alice@example.com")
        issuer_url, subject, expires = conn.execute(
            "SELECT issuer, subject, expires_at FROM oauth.session()").fetchone()
        assert issuer_url == issuer.issuer and subject == "alice"
        assert expires is not None
        assert conn.execute("SELECT oauth.claims() ->> 'aud'").fetchone()[0] == "pg-test"


def test_psql_logs_in_with_token(cluster, issuer):
    token = issuer.mint({"email": "bob@example.com"}, sub="bob")
    query = "SELECT current_user || ' ' || oauth.claim('email')"
    out = subprocess.run(
        ["psql", "-XAtq", cluster.token_dsn("bob"), "-c", query], check=False,
        env={**os.environ, "PGPASSWORD": token}, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "bob bob@example.com"


def test_non_token_session_has_no_claims(cluster):
    assert cluster.sql("SELECT oauth.claims(), oauth.claim('sub')") == [(None, None)]


def test_expired(cluster, issuer, refused):
    assert refused("alice", issuer.mint(sub="alice", lifetime=-120)) == "expired"


def test_not_yet_valid(cluster, issuer, refused):
    token = issuer.mint({"nbf": int(time.time()) + 600}, sub="alice", lifetime=1200)
    assert refused("alice", token) == "not_yet_valid"


def test_wrong_audience(cluster, issuer, refused):
    assert refused("alice", issuer.mint(sub="alice", aud="someone-else")) == "audience_mismatch"


def test_unknown_issuer(cluster, issuer, refused):
    token = issuer.mint({"iss": "https://evil.example.com"}, sub="alice")
    assert refused("alice", token) == "untrusted_issuer"


def test_bad_signature(cluster, issuer, refused):
    # a key the issuer never published, presented under a published kid
    token = issuer.mint(sub="alice", sign_with_unpublished=True)
    assert refused("alice", token) == "bad_signature"
    # a valid token whose payload was altered after signing
    h, _, s = issuer.mint(sub="bob").split(".")
    other = issuer.mint(sub="alice").split(".")[1]
    assert refused("alice", f"{h}.{other}.{s}") == "bad_signature"


def test_unknown_kid(cluster, issuer, refused):
    assert refused("alice", issuer.mint(sub="alice", kid="no-such-key")) == "unknown_key"


def test_alg_none(cluster, issuer, refused):
    token = issuer.mint(sub="alice", alg="none")
    assert token.endswith(".")
    assert refused("alice", token) == "unsupported_alg"


def test_hs256_signed_with_rsa_public_key(cluster, issuer, refused):
    token = issuer.mint(sub="alice", alg="HS256")  # HMAC keyed with the RSA public key PEM
    assert token == forge_hs256_with_public_key(
        issuer._issuer, sub="alice", aud="pg-test", now=None,
        iat=_claims(token)["iat"], nbf=_claims(token)["nbf"], exp=_claims(token)["exp"],
        jti=_claims(token)["jti"])
    assert refused("alice", token) == "unsupported_alg"


def _claims(token: str) -> dict:
    import base64
    import json
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_token_for_alice_used_as_bob(cluster, issuer, refused):
    assert refused("bob", issuer.mint(sub="alice")) == "role_not_allowed"


def test_superuser_role_refused(cluster, issuer, refused):
    assert refused("su", issuer.mint(sub="su")) == "superuser_forbidden"


def test_startup_role_option_refused(cluster, issuer, refused):
    token = issuer.mint(sub="alice")
    assert refused("alice", token, options="-c role=bob") == "startup_option_forbidden"
    assert refused("alice", token, options="--session-authorization=bob") == \
        "startup_option_forbidden"


def test_non_ssl_refused(cluster, issuer, refused):
    assert refused("alice", issuer.mint(sub="alice"), sslmode="disable") == "ssl_required"


def test_non_ssl_never_asks_for_the_password(cluster):
    sock = pgwire.tcp(cluster.port)
    try:
        mtype, body = pgwire.start(sock, "alice")
        # an ErrorResponse, not AuthenticationCleartextPassword ('R' with code 3)
        assert mtype == b"E", (mtype, body)
        assert b"ssl_required" in body
    finally:
        sock.close()


def test_oversize_token(cluster, issuer, refused):
    token = issuer.mint({"pad": "x" * 20000}, sub="alice")
    assert len(token) > 16384
    assert refused("alice", token) == "too_large"


@pytest.mark.parametrize("garbage", ["hunter2", "a.b", "a.b.c.d.e", "Zm9v.YmFy.!!!", "x" * 100])
def test_garbage(cluster, refused, garbage):
    assert refused("alice", garbage) == "malformed"


def test_role_that_does_not_exist(cluster, issuer, refused):
    assert refused("ghost", issuer.mint(sub="ghost")) == "unknown_role"


def test_refusal_detail_levels(cluster, issuer):
    token = issuer.mint(sub="alice", lifetime=-120)
    try:
        cluster.sql("ALTER SYSTEM SET pg_oauth.client_detail = 'full'")
        cluster.reload()
        with pytest.raises(psycopg.OperationalError) as e:
            cluster.token_connect("alice", token)
        assert "reason=expired: " in str(e.value)
        cluster.sql("ALTER SYSTEM SET pg_oauth.client_detail = 'none'")
        cluster.reload()
        with pytest.raises(psycopg.OperationalError) as e:
            cluster.token_connect("alice", token)
        assert "JWT authentication failed" in str(e.value)
        assert "reason=" not in str(e.value)
    finally:
        cluster.sql("ALTER SYSTEM RESET pg_oauth.client_detail")
        cluster.reload()
    # the server log has the whole story regardless
    assert "reason=expired: " in cluster.log_text()


def test_log_connections_names_issuer_and_subject(cluster, issuer):
    token = issuer.mint(sub="alice", jti="jti-log-check")
    cluster.token_connect("alice", token).close()
    log = cluster.log_text()
    assert f"token login authorized: user=alice issuer={issuer.issuer} subject=alice " \
           "token_id=jti-log-check" in log


def test_validate_not_executable_by_public(cluster, issuer):
    token = issuer.mint(sub="alice")
    with cluster.token_connect("alice", token) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM oauth.validate('x', 'alice', 'postgres', NULL, true, 1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO oauth.issuers (issuer, audiences) VALUES ('x', '{y}')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM oauth.role_map")


def test_role_as_startup_parameter_refused_before_the_password(cluster):
    """Drivers other than libpq (asyncpg server_settings, JDBC) send settings as
    startup parameters, not in "options"."""
    for name in ("role", "Session_Authorization"):
        sock = pgwire.unix(cluster.sockdir / f".s.PGSQL.{cluster.port}")
        try:
            mtype, payload = pgwire.start(sock, "alice", **{name: "bob"})
            assert mtype == b"E", (mtype, payload)
            assert b"startup_option_forbidden" in payload
        finally:
            sock.close()
