"""Tokens over time and when things go wrong, against oidc-provider and a real cluster: a
command that outlives its token, an IdP that is down, an unusable cache directory, no
terminal for a sign-in, one sign-in for the databases of one IdP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import (
    CLIENT_DIR,
    NODE_DIR,
    RESOURCE,
    ROOT,
    SECRETS,
    SHORT_RESOURCE,
    SHORT_TTL,
    USER_CLIENT,
    ClientEnv,
    IdP,
    device_sign_in,
)
from pg_oauth_client.jwt_peek import unverified_claims
from pg_oauth_client.refusal import advice, find_refusal
from pg_oauth_dev.dev_issuer import b64url

# connects, outlives the token it was started with (the server's leeway is 0 here), and
# connects again: libpq reads the passfile at every connection
TWICE = ['sh', '-c', 'psql -XtA -c "SELECT 1" && sleep {pause} && psql -XtA -c "SELECT 2"']


def _append_profiles(client: ClientEnv, text: str) -> None:
    with client.config.open("a") as f:
        f.write(textwrap.dedent(text))


@pytest.fixture
def no_leeway(client: ClientEnv, idp: IdP) -> Iterator[None]:
    """The server accepts no token past its exp (the issuer's leeway is 30 s otherwise)."""
    client.cluster.sql("UPDATE oauth.issuers SET leeway = '0' WHERE issuer = %s", (idp.issuer,))
    try:
        yield
    finally:
        client.cluster.sql("UPDATE oauth.issuers SET leeway = '30 seconds' WHERE issuer = %s",
                           (idp.issuer,))


@pytest.fixture
def short(client: ClientEnv, idp: IdP) -> ClientEnv:
    """Profile 'short-lived': tokens the database accepts, living SHORT_TTL seconds."""
    _append_profiles(client, f"""
        [profile.short-lived]
        flow = "client_credentials"
        issuer = "{idp.issuer}"
        client_id = "svc-basic"
        client_secret_env = "SVC_BASIC_SECRET"
        resource = "{SHORT_RESOURCE}"
        user = "svc"
        """)
    return client


def _advice(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pg-oauth: ")]


# -- exec / psql: a child that outlives its token ---------------------------------------

def test_exec_renews_the_token_while_the_child_runs(short: ClientEnv, no_leeway: None) -> None:
    command = [*TWICE[:2], TWICE[2].format(pause=SHORT_TTL + 2)]
    done = short.run("exec", "-p", "short-lived", "--", *command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2"]
    assert _advice(done.stderr) == []


def test_a_token_that_aged_is_not_blamed_on_the_clock(short: ClientEnv,
                                                      no_leeway: None) -> None:
    # --pgpassword: one token for the whole run, as PGPASSWORD always was
    command = [*TWICE[:2], TWICE[2].format(pause=SHORT_TTL + 2)]
    done = short.run("exec", "-p", "short-lived", "--pgpassword", "--", *command)
    assert done.returncode == 2 and done.stdout.split() == ["1"]
    assert "reason=expired" in done.stderr
    what = _advice(done.stderr)[-1]
    assert "expired at" in what and "--pgpassword" in what and "renews" in what
    assert "clock" not in what


def test_expired_advice_blames_the_clocks_only_when_this_one_says_valid() -> None:
    refusal = find_refusal('FATAL:  JWT authentication failed for user "svc"\n'
                           "DETAIL:  reason=expired\n")
    assert refusal is not None
    header = b64url(b'{"alg":"RS256"}')

    def token(exp: float) -> str:
        return f"{header}.{b64url(json.dumps({'exp': exp}).encode())}.c2ln"

    assert "clock" in advice(refusal, token(4102444800), "prod")[2]  # 2100
    aged = advice(refusal, token(1000000000), "prod")[2]  # 2001
    assert "clock" not in aged and "expired at" in aged


def test_the_passfile_goes_when_pg_oauth_is_terminated(client: ClientEnv) -> None:
    proc = client.popen("exec", "-p", "prod", "--", "sh", "-c",
                        'echo "$PGPASSFILE"; exec sleep 60')
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    assert path.is_file()
    proc.send_signal(signal.SIGTERM)  # passed on to the child; its end removes the file
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not path.parent.exists()


def test_a_forgotten_double_dash_gets_a_hint(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)]),
           "PG_OAUTH_CONFIG": str(tmp_path / "none.toml")}
    for command, hint in (("psql", "pg-oauth psql -p PROFILE -- -c 'SELECT 1'"),
                          ("exec", "pg-oauth exec -p PROFILE -- COMMAND [ARGS...]")):
        done = subprocess.run([sys.executable, "-m", "pg_oauth_client", command, "-p", "x",
                               "-c", "SELECT 1"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 2
        what = "psql arguments" if command == "psql" else "command"
        assert done.stderr.splitlines()[-1] == f"put -- before the {what}: {hint}"


# -- no terminal: no device sign-in that nobody can complete ----------------------------

def test_no_terminal_no_device_sign_in(client: ClientEnv) -> None:
    for command in (("token",), ("psql", "--", "-c", "SELECT 1")):
        done = client.run(command[0], "-p", "dev", *command[1:], stdin=subprocess.DEVNULL)
        assert done.returncode == 1
        assert done.stderr.splitlines() == [(
            "pg-oauth: profile 'dev' needs a sign-in, and this is not a terminal to sign in "
            "from (standard input or error is not a TTY): run pg-oauth login --profile dev "
            "in a terminal first")]


def test_get_token_starts_no_sign_in_unless_asked(client: ClientEnv) -> None:
    script = ("from pg_oauth_client import ClientError, get_token\n"
              "try:\n    get_token('dev')\nexcept ClientError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], env=client.env, capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.stdout.strip() == (
        "profile 'dev' needs a sign-in, which get_token() starts only with "
        "interactive=True: run pg-oauth login --profile dev in a terminal first")
    assert done.stderr == ""


# -- the IdP is down: the cached token while it has the life asked for ------------------

@pytest.fixture
def spare_idp(workdir: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """An oidc-provider of its own, that the test can stop."""
    config = tmp_path / "spare-idp.json"
    config.write_text(json.dumps({
        "resources": [RESOURCE], "access_token_ttl": 300, "device_interval": 1,
        "clients": [{"client_id": "svc-basic", "client_secret": SECRETS["svc-basic"],
                     "grant_types": ["client_credentials"], "redirect_uris": [],
                     "response_types": [], "token_endpoint_auth_method": "client_secret_basic"}],
    }))
    with open(tmp_path / "spare-idp.log", "wb") as log:
        proc = subprocess.Popen([shutil.which("node") or "node", str(NODE_DIR / "oidc_idp.mjs"),
                                 str(config)], stdout=subprocess.PIPE, stderr=log, cwd=NODE_DIR)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, (tmp_path / "spare-idp.log").read_text()
    yield json.loads(line)["issuer"], proc
    proc.kill()
    proc.wait(timeout=10)


def test_idp_down_cached_token_while_it_has_the_life_asked_for(
        client: ClientEnv, spare_idp: tuple[str, subprocess.Popen]) -> None:
    issuer, proc = spare_idp
    _append_profiles(client, f"""
        [profile.spare]
        flow = "client_credentials"
        issuer = "{issuer}"
        client_id = "svc-basic"
        client_secret_env = "SVC_BASIC_SECRET"
        resource = "{RESOURCE}"
        """)
    first = client.token("spare")
    proc.kill()
    proc.wait(timeout=10)

    # 300 s tokens: renewed once less than 187 s are left, handed out while 150 s are
    client.age_cache("spare", seconds=130)
    done = client.run("token", "-p", "spare")
    assert done.returncode == 0 and done.stdout.strip() == first
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0]
    assert "using the cached token of profile 'spare', valid until" in lines[0]

    client.age_cache("spare", seconds=40)  # 130 s left: less than asked for
    done = client.run("token", "-p", "spare")
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0]
    assert "less than asked for (min_valid 300 s, or half its lifetime)" in lines[0]


def test_renewal_starts_ahead_of_what_the_caller_asked_for(client: ClientEnv) -> None:
    first = client.token("prod")
    client.age_cache("prod", seconds=130)  # 170 s left: the IdP is up, so a new one
    assert client.token("prod") != first


# -- an unusable cache directory: one line, and the token in memory ---------------------

def test_unusable_cache_directory_is_one_line(client: ClientEnv, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    client.env["PG_OAUTH_CACHE_DIR"] = str(blocker / "pg-oauth")
    done = client.run("token", "-p", "prod")
    assert done.returncode == 0 and done.stdout.strip()
    assert done.stderr.splitlines() == [(
        f"pg-oauth: cannot use the token cache directory {blocker / 'pg-oauth'} (Not a "
        "directory): tokens are kept in memory, for this process only; set "
        "PG_OAUTH_CACHE_DIR (or XDG_CACHE_HOME) to a directory you can write")]

    # a program's calls share the token kept in memory, and hear of it once
    script = ("from pg_oauth_client import get_token\n"
              "print(get_token('prod') == get_token('prod'))\n")
    done = subprocess.run([sys.executable, "-c", script], env=client.env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.stdout.strip() == "True"
    assert len(done.stderr.splitlines()) == 1 and "kept in memory" in done.stderr


# -- one sign-in for the databases of one IdP --------------------------------------------

def _dev_profile(client: ClientEnv, idp: IdP, name: str, resource: str) -> None:
    _append_profiles(client, f"""
        [profile.{name}]
        flow = "device_code"
        issuer = "{idp.issuer}"
        client_id = "{USER_CLIENT}"
        scope = "openid offline_access"
        resource = "{resource}"
        user = "alice"
        """)


def test_one_sign_in_serves_the_databases_of_one_idp(client: ClientEnv, idp: IdP) -> None:
    _dev_profile(client, idp, "dev-short", SHORT_RESOURCE)
    done, _ = device_sign_in(client, idp, "dev")
    assert done.returncode == 0, done.stderr

    # the refresh token gets a token for the other resource (RFC 8707): no sign-in
    other = client.run("token", "-p", "dev-short", "--no-interactive")
    assert other.returncode == 0 and other.stderr == "", other.stderr
    claims = unverified_claims(other.stdout.strip()) or {}
    assert claims["aud"] == SHORT_RESOURCE and claims["sub"] == "alice"
    psql = client.run("psql", "-p", "dev-short", "--", "-XtA", "-c", "SELECT current_user")
    assert psql.stdout.strip() == "alice", psql.stderr

    assert client.run("logout", "-p", "dev").returncode == 0  # the sign-in goes too
    assert list(client.cache.glob("signin@*")) == []


def test_a_sign_in_the_idp_will_not_extend_says_why(client: ClientEnv, idp: IdP) -> None:
    _dev_profile(client, idp, "dev-short", SHORT_RESOURCE)
    _dev_profile(client, idp, "dev-nowhere", "urn:pg-oauth:nowhere")  # the IdP knows none
    done, shown = device_sign_in(client, idp, "dev")
    assert done.returncode == 0, done.stderr
    assert ("the issuer would not cover urn:pg-oauth:nowhere, urn:pg-oauth:shortdb in the "
            "same sign-in (invalid_target)") in shown  # by profile name

    other = client.run("token", "-p", "dev-short", "--no-interactive")
    assert other.returncode == 1
    assert other.stderr.splitlines() == [(
        "pg-oauth: profile 'dev-short' needs a sign-in of its own (the issuer would not "
        "extend the sign-in to resource urn:pg-oauth:shortdb: invalid_target): run "
        "pg-oauth login --profile dev-short")]
