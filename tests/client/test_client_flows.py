"""pg-oauth token / psql / exec against a real OpenID provider (oidc-provider) and a real
PostgreSQL with pg_oauth validating that provider's tokens through discovery."""

from __future__ import annotations

import hashlib
import json
import stat
import sys
import time
from pathlib import Path

import psycopg
import pytest
from client_support import RESOURCE, ClientEnv, IdP, device_sign_in
from pg_oauth_client.jwt_peek import unverified_claims
from pg_oauth_dev.dev_issuer import DevIssuer


def psql_who(client: ClientEnv, profile: str) -> str:
    done = client.run("psql", "--profile", profile, "--", "-XtA", "-c",
                      "SELECT current_user || ' ' || oauth.claim('client_id')")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def login_as(client: ClientEnv, user: str, token: str) -> tuple:
    with client.cluster.token_connect(user, token, sslmode="verify-full",
                                      sslrootcert=client.env["PGSSLROOTCERT"]) as conn:
        return conn.execute("SELECT current_user, oauth.claim('client_id'), "
                            "(oauth.session()).token_id").fetchone()


def pg_oauth_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- client credentials: the three client authentication methods ------------------

def test_client_secret_basic_psql_logs_in(client: ClientEnv) -> None:
    # TLS verified by default (PGSSLMODE=verify-full), no password prompt, no token shown
    assert psql_who(client, "prod") == "svc svc-basic"


def test_client_secret_post_and_private_key_jwt(client: ClientEnv) -> None:
    assert login_as(client, "svc", client.token("post"))[1] == "svc-post"
    assert login_as(client, "svc", client.token("keyed"))[1] == "svc-jwt"


def test_tokens_are_oidc_provider_access_tokens(client: ClientEnv, idp: IdP) -> None:
    claims = unverified_claims(client.token("prod")) or {}
    assert claims["iss"] == idp.issuer and claims["aud"] == RESOURCE
    assert claims["sub"] == claims["client_id"] == "svc-basic"


def test_cached_token_is_reused_and_private(client: ClientEnv) -> None:
    first = client.token("prod")
    assert client.token("prod") == first
    assert client.token("prod", "--force") != first
    entry = client.cache / "prod.json"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(client.cache.stat().st_mode) == 0o700


def test_token_is_refreshed_ahead_of_expiry(client: ClientEnv) -> None:
    first = client.token("prod")
    # the IdP's tokens live 300 s; one that has only 100 s left is not handed out
    client.age_cache("prod", seconds=200)
    second = client.token("prod")
    assert second != first
    assert login_as(client, "svc", second)[0] == "svc"


def test_json_output(client: ClientEnv) -> None:
    import json

    out = json.loads(client.run("token", "-p", "prod", "-o", "json", check=True).stdout)
    assert out["profile"] == "prod" and 0 < out["expires_in"] <= 300
    assert unverified_claims(out["access_token"])["exp"] == out["expires_at"]


def test_invalid_client_is_one_line(client: ClientEnv) -> None:
    done = client.run("token", "--profile", "wrong-secret")
    assert done.returncode == 1 and done.stdout == ""
    lines = pg_oauth_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pg-oauth: client credentials for profile 'wrong-secret' "
                               "refused by the issuer: invalid_client")


# -- exec / psql: the token only in the child's environment --------------------------

def test_exec_gives_the_token_in_a_private_passfile_only(client: ClientEnv) -> None:
    token = client.token("prod")
    script = ("import hashlib, os, stat, sys; f = os.environ['PGPASSFILE']; "
              "line = open(f).read(); "
              "print(hashlib.sha256(line.encode()).hexdigest(), "
              "oct(stat.S_IMODE(os.stat(f).st_mode)), "
              "oct(stat.S_IMODE(os.stat(os.path.dirname(f)).st_mode)), "
              "'PGPASSWORD' in os.environ, os.environ['PGUSER'], os.environ['PGSSLMODE'], "
              "len(sys.argv), f)")
    client.env["PGPASSWORD"] = "not-the-token"  # libpq would prefer it to the file
    done = client.run("exec", "--profile", "prod", "--", sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    digest, mode, dir_mode, has_password, user, sslmode, argc, path = done.stdout.split()
    assert digest == hashlib.sha256(f"*:*:*:*:{token}\n".encode()).hexdigest()
    assert (mode, dir_mode, has_password) == ("0o600", "0o700", "False")
    assert (user, sslmode, argc) == ("svc", "verify-full", "1")
    assert token not in done.stderr
    assert not Path(path).parent.exists()  # gone with the child


def test_exec_pgpassword_puts_the_token_in_the_environment(client: ClientEnv) -> None:
    token = client.token("prod")
    script = ("import hashlib, os; "
              "print(hashlib.sha256(os.environ['PGPASSWORD'].encode()).hexdigest(), "
              "'PGPASSFILE' in os.environ)")
    done = client.run("exec", "-p", "prod", "--pgpassword", "--", sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [hashlib.sha256(token.encode()).hexdigest(), "False"]


def test_exec_passes_the_exit_status(client: ClientEnv) -> None:
    done = client.run("exec", "-p", "prod", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert done.returncode == 7


def test_refusal_names_reason_and_what_to_do(client: ClientEnv) -> None:
    # the IdP issues it for another resource; the database accepts only its own
    done = client.run("psql", "--profile", "other-db", "--", "-XtA", "-c", "SELECT 1")
    assert done.returncode == 2
    assert "reason=audience_mismatch" in done.stderr  # psql's own message, passed through
    advice = [line for line in done.stderr.splitlines() if line.startswith("pg-oauth: ")]
    assert "reason=audience_mismatch" in advice[0] and "'svc'" in advice[0]
    assert "aud urn:pg-oauth:otherdb" in advice[1]
    assert "set resource (or audience) in profile 'other-db'" in advice[2]


# -- device authorization grant and refresh tokens -----------------------------------

def test_device_flow_then_refresh_token(client: ClientEnv, idp: IdP) -> None:
    done, shown = device_sign_in(client, idp, "dev", login="alice")
    assert done.returncode == 0, done.stderr
    assert "enter the code" in shown
    first = done.stdout.strip()
    assert login_as(client, "alice", first)[:2] == ("alice", "pg-oauth-cli")
    # the refresh token is the sign-in's, shared with the profiles of the same client
    assert client.cache_entry("dev")["refresh_token"] is None
    assert [json.loads(f.read_text())["refresh_token"] for f in client.cache.glob("signin@*.json")]

    # later: the access token is stale, the refresh token gets a new one, no sign-in
    client.age_cache("dev")
    again = client.run("token", "--profile", "dev", "--no-interactive")
    assert again.returncode == 0 and again.stderr == ""
    second = again.stdout.strip()
    assert second != first
    assert login_as(client, "alice", second)[0] == "alice"
    assert psql_who(client, "dev") == "alice pg-oauth-cli"


def test_device_flow_access_denied(client: ClientEnv, idp: IdP) -> None:
    done, shown = device_sign_in(client, idp, "dev", decision="deny")
    assert done.returncode == 1 and done.stdout == ""
    after = pg_oauth_lines(done.stderr[len(shown):])
    after = [line for line in after if not line.startswith("pg-oauth: waiting")]
    assert len(after) == 1, done.stderr
    assert "access_denied" in after[0] and "declined" in after[0]


def test_expired_refresh_token(client: ClientEnv, idp: IdP) -> None:
    done, _ = device_sign_in(client, idp, "short")
    assert done.returncode == 0, done.stderr
    time.sleep(2)  # the IdP gives this client's refresh tokens one second
    client.age_cache("short")
    again = client.run("token", "--profile", "short", "--no-interactive")
    assert again.returncode == 1 and again.stdout == ""
    lines = pg_oauth_lines(again.stderr)
    assert len(lines) == 1, again.stderr
    assert "invalid_grant" in lines[0]
    assert lines[0].endswith("sign in again: pg-oauth login --profile short")
    # the refused refresh token is forgotten
    assert client.cache_entry("short")["refresh_token"] is None


def test_no_interactive_sign_in_when_told_not_to(client: ClientEnv) -> None:
    done = client.run("token", "--profile", "dev", "--no-interactive")
    assert done.returncode == 1
    assert pg_oauth_lines(done.stderr) == [
        "pg-oauth: profile 'dev' needs a sign-in: run pg-oauth login --profile dev"]


# -- workload tokens: a rotated file, token exchange -----------------------------------

def _workload_token(issuer: DevIssuer) -> str:
    return issuer.mint(sub="system:serviceaccount:prod:reporting", aud="pg-oauth-idp",
                       lifetime=600)


def test_token_file_is_read_again_when_rotated(client: ClientEnv, workdir,
                                               workload_issuer: DevIssuer) -> None:
    path = workdir / "k8s-token"
    first, second = _workload_token(workload_issuer), _workload_token(workload_issuer)
    path.write_text(first + "\n")
    assert client.token("k8s") == first
    path.write_text(second)  # the kubelet replaced it
    assert client.token("k8s") == second


def test_token_exchange_workload_token_in_database_token_out(
        client: ClientEnv, workdir, workload_issuer: DevIssuer, idp: IdP) -> None:
    (workdir / "k8s-token").write_text(_workload_token(workload_issuer))
    token = client.token("exchanged")
    claims = unverified_claims(token) or {}
    assert claims["iss"] == idp.issuer and claims["aud"] == RESOURCE
    assert claims["sub"] == "system:serviceaccount:prod:reporting"
    assert claims["act"] == {"sub": "exchanger"}
    done = client.run("psql", "-p", "exchanged", "--", "-XtA", "-c", "SELECT current_user")
    assert done.stdout.strip() == "reporting", done.stderr


def test_token_exchange_refused_subject_token(client: ClientEnv, workdir) -> None:
    other = DevIssuer(str(workdir / "untrusted-keys"))  # not the issuer the IdP trusts
    other.start()
    try:
        (workdir / "k8s-token").write_text(other.mint(sub="x", aud="pg-oauth-idp"))
    finally:
        other.stop()
    done = client.run("token", "-p", "exchanged")
    assert done.returncode == 1
    lines = pg_oauth_lines(done.stderr)
    assert len(lines) == 1 and "token exchange" in lines[0] and "invalid_grant" in lines[0]


def test_refused_login_leaves_no_token_in_messages(client: ClientEnv) -> None:
    token = client.token("other-db")
    with pytest.raises(psycopg.OperationalError) as err:
        login_as(client, "svc", token)
    assert "reason=audience_mismatch" in str(err.value)
    assert token not in str(err.value)
