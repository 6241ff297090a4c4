"""The client's parts without a database: profiles, token sources, the device-flow poller's
handling of slow_down, refusal parsing. HTTP peers here are small local servers that
speak the documented protocol (the GitHub Actions runner's token endpoint, a scripted
RFC 8628 token endpoint); the real IdP is in test_client_flows.py."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from client_support import CLIENT_DIR, ROOT
from pg_oauth_client.errors import ConfigError, IdPError
from pg_oauth_client.oauth_flows import OAuthClient
from pg_oauth_client.profile import load_profile
from pg_oauth_client.refusal import advice, find_refusal
from pg_oauth_dev.dev_issuer import b64url

Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, dict]]


def fake_jwt(claims: dict) -> str:
    """Shaped like a JWT (the client only reads exp): the signature is not checked here."""
    return ".".join([b64url(b'{"alg":"RS256"}'), b64url(json.dumps(claims).encode()), "c2ln"])


@pytest.fixture
def http_peer() -> Iterator[Callable[[Handler], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handle: Handler) -> str:
        class H(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, data = handle(self.command, self.path, dict(self.headers), body)
                out = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def run_cli(env: dict[str, str], *args: str):
    import subprocess

    full = {k: v for k, v in os.environ.items() if not k.startswith("PG_OAUTH_")}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join([str(CLIENT_DIR), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "pg_oauth_client", *args], env=full,
                          capture_output=True, text=True, timeout=60, check=False)


# -- profiles -------------------------------------------------------------------------

def test_profile_from_environment_alone(tmp_path: Path) -> None:
    env = {"PG_OAUTH_CONFIG": str(tmp_path / "none.toml"), "PG_OAUTH_FLOW": "github-actions",
           "PG_OAUTH_AUDIENCE": "https://db.example.com", "PG_OAUTH_HOST": "db.example.com"}
    p = load_profile(env=env)
    assert (p.name, p.flow, p.audience) == ("default", "github_actions", "https://db.example.com")
    assert p.libpq_environment() == {"PGHOST": "db.example.com"}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[profile.ci]\nflow = "token_file"\ntoken_file = "/a"\n')
    env = {"PG_OAUTH_CONFIG": str(cfg), "PG_OAUTH_PROFILE": "ci", "PG_OAUTH_TOKEN_FILE": "/b"}
    assert load_profile(env=env).token_file == "/b"


def test_config_mistakes_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    env = {"PG_OAUTH_CONFIG": str(cfg)}
    cfg.write_text('[profile.a]\nflow = "client_credentials"\nissuer = "https://i"\n'
                   'client_id = "c"\nclient_secret = "s"\n')
    os.chmod(cfg, 0o644)
    with pytest.raises(ConfigError, match="other users can read it: chmod 600"):
        load_profile("a", env)
    os.chmod(cfg, 0o600)
    assert load_profile("a", env).client_secret == "s"
    with pytest.raises(ConfigError, match=r"no profile 'b' .* \(profiles: a\)"):
        load_profile("b", env)
    cfg.write_text('[profile.a]\nflow = "device_code"\nissuer = "https://i"\nclient = "x"\n')
    with pytest.raises(ConfigError, match="unknown key 'client'"):
        load_profile("a", env)
    cfg.write_text('[profile.a]\nflow = "client_credentials"\nissuer = "https://i"\n'
                   'client_id = "c"\n')
    with pytest.raises(ConfigError, match="needs a client secret"):
        load_profile("a", env)
    done = run_cli(env, "token", "-p", "a")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_cleartext_issuer_refused_off_loopback(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[profile.a]\nflow = "client_credentials"\nissuer = "http://idp.example.com"\n'
                   'client_id = "c"\nclient_secret_env = "S"\n')
    done = run_cli({"PG_OAUTH_CONFIG": str(cfg), "S": "x"}, "token", "-p", "a")
    assert done.returncode == 2
    assert "must be https://" in done.stderr


def test_discovery_checks_the_issuer(http_peer, tmp_path: Path) -> None:
    url = http_peer(lambda m, p, h, b: (200, {"issuer": "https://someone-else.example"}))
    p = load_profile(env={"PG_OAUTH_CONFIG": str(tmp_path / "x"), "PG_OAUTH_FLOW": "device_code",
                          "PG_OAUTH_ISSUER": url, "PG_OAUTH_CLIENT_ID": "c"})
    with pytest.raises(IdPError, match="names issuer 'https://someone-else.example'"):
        OAuthClient(p)


# -- sources: GitHub Actions, a command ---------------------------------------------

def test_github_actions_token(http_peer, tmp_path: Path) -> None:
    token = fake_jwt({"exp": time.time() + 300, "aud": "https://db.example.com"})
    seen: dict = {}

    def runner(method: str, path: str, headers: dict, body: bytes):
        seen.update(query=parse_qs(urlsplit(path).query), auth=headers.get("Authorization"))
        return 200, {"value": token}

    url = http_peer(runner)
    env = {"PG_OAUTH_CONFIG": str(tmp_path / "none"), "PG_OAUTH_CACHE_DIR": str(tmp_path / "c"),
           "PG_OAUTH_FLOW": "github_actions", "PG_OAUTH_AUDIENCE": "https://db.example.com",
           "ACTIONS_ID_TOKEN_REQUEST_URL": f"{url}/token?api-version=2.0",
           "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner-bearer"}
    done = run_cli(env, "token")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == token
    assert seen["query"] == {"api-version": ["2.0"], "audience": ["https://db.example.com"]}
    assert seen["auth"] == "bearer runner-bearer"

    del env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    done = run_cli({**env, "PG_OAUTH_CACHE_DIR": str(tmp_path / "c2")}, "token")
    assert done.returncode == 1
    assert "permissions: id-token: write" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_command_token(tmp_path: Path) -> None:
    token = fake_jwt({"exp": time.time() + 300})
    script = f"import json; print(json.dumps({{'credential': {{'accessToken': '{token}'}}}}))"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[profile.cmd]\nflow = "command"\ncommand = {json.dumps([sys.executable, "-c", script])}\n'
                   'command_json_field = "credential.accessToken"\n'
                   f'[profile.broken]\nflow = "command"\ncommand = "{sys.executable} -c \'raise SystemExit(3)\'"\n')
    env = {"PG_OAUTH_CONFIG": str(cfg), "PG_OAUTH_CACHE_DIR": str(tmp_path / "c")}
    done = run_cli(env, "token", "-p", "cmd")
    assert done.returncode == 0 and done.stdout.strip() == token, done.stderr
    done = run_cli(env, "token", "-p", "broken")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("exited with status 3")


def test_expired_token_from_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(fake_jwt({"exp": time.time() - 60}))
    env = {"PG_OAUTH_CONFIG": str(tmp_path / "none"), "PG_OAUTH_FLOW": "token_file",
           "PG_OAUTH_TOKEN_FILE": str(path)}
    done = run_cli(env, "token")
    assert done.returncode == 1 and "gave a token that expired at" in done.stderr


# -- RFC 8628 polling: interval and slow_down -------------------------------------------

def test_device_flow_honours_interval_and_slow_down(http_peer, tmp_path: Path) -> None:
    answers = iter([(400, {"error": "authorization_pending"}), (400, {"error": "slow_down"}),
                    (400, {"error": "authorization_pending"}),
                    (200, {"access_token": "at", "token_type": "Bearer", "expires_in": 60})])
    base = ""

    def idp(method: str, path: str, headers: dict, body: bytes):
        if path == "/.well-known/openid-configuration":
            return 200, {"issuer": base, "token_endpoint": f"{base}/token",
                         "device_authorization_endpoint": f"{base}/device"}
        if path == "/device":
            return 200, {"device_code": "dc", "user_code": "WXYZ-1234",
                         "verification_uri": f"{base}/activate", "expires_in": 600,
                         "interval": 2}
        assert parse_qs(body.decode())["device_code"] == ["dc"]
        return next(answers)

    base = http_peer(idp)
    p = load_profile(env={"PG_OAUTH_CONFIG": str(tmp_path / "x"), "PG_OAUTH_FLOW": "device_code",
                          "PG_OAUTH_ISSUER": base, "PG_OAUTH_CLIENT_ID": "c"})
    sleeps: list[float] = []
    shown: list[str] = []
    token = OAuthClient(p).device_code(notify=shown.append, sleep=sleeps.append,
                                       clock=lambda: sum(sleeps))
    assert token["access_token"] == "at"
    assert sleeps == [2, 2, 7, 7]  # slow_down adds 5 s to this and every later poll
    assert "enter the code WXYZ-1234" in shown[0] and f"{base}/activate" in shown[0]


# -- refusals -------------------------------------------------------------------------

def test_refusal_found_in_psql_output() -> None:
    text = ('psql: error: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
            'JWT authentication failed for user "alice"\nDETAIL:  reason=audience_mismatch: '
            "audience ['x'] not accepted; expected one of ['db']\n")
    r = find_refusal(text)
    assert r is not None and (r.user, r.reason) == ("alice", "audience_mismatch")
    assert r.detail == "audience ['x'] not accepted; expected one of ['db']"
    lines = advice(r, fake_jwt({"aud": "x", "iss": "https://i", "sub": "s"}), "prod")
    assert "expected one of ['db']" in lines[0] and "aud x" in lines[1]
    assert find_refusal("psql: error: could not connect") is None


def test_scope_missing_advice_names_the_profile_scopes_and_login() -> None:
    r = find_refusal('FATAL:  JWT authentication failed for user "alice"\n'
                     "DETAIL:  reason=scope_missing\n")
    assert r is not None and r.reason == "scope_missing"
    what = advice(r, fake_jwt({"iss": "https://i", "sub": "s"}), "prod")[2]
    assert "scope in profile 'prod'" in what and "pg-oauth login --profile prod" in what
    assert "README" not in what  # the specific advice, not the fallback


# -- strict (pools) through the renewal rules: fresh, usable, the IdP that is down --------

def test_strict_renews_ahead_and_falls_back_only_to_a_long_enough_token(
        http_peer, tmp_path: Path) -> None:
    from pg_oauth_client.errors import ClientError, IdPUnavailable
    from pg_oauth_client.tokens import obtain

    issued: list[tuple[float, float]] = []  # (iat, exp) relative to the request
    state = {"down": False, "requests": 0}

    def idp(method: str, path: str, headers: dict, body: bytes):
        state["requests"] += 1
        if state["down"]:
            return 503, {"error": "temporarily_unavailable"}
        iat, exp = issued.pop(0)
        now = time.time()
        return 200, {"access_token": fake_jwt({"iat": now + iat, "exp": now + exp}),
                     "token_type": "Bearer", "expires_in": int(exp)}

    base = http_peer(idp)
    env = {"PG_OAUTH_CONFIG": str(tmp_path / "none"), "PG_OAUTH_FLOW": "client_credentials",
           "PG_OAUTH_TOKEN_ENDPOINT": f"{base}/token", "PG_OAUTH_CLIENT_ID": "c",
           "PG_OAUTH_CLIENT_SECRET": "s", "PG_OAUTH_CACHE_DIR": str(tmp_path / "cache")}
    notes: list[str] = []

    def get(min_valid: float, strict: bool):
        return obtain(min_valid=min_valid, strict=strict, env=env, notify=notes.append)

    # a token of 40 s, 12 s old: fresh for min_valid 30 the lenient way (half its life)
    issued.append((-12, 28))
    get(30, False)
    assert get(30, False).from_cache and state["requests"] == 1
    # strict wants the whole 30 s: renewal, and with the IdP down no half-lifetime excuse
    state["down"] = True
    with pytest.raises(IdPUnavailable, match=r"less than asked for \(min_valid 30 s\)$"):
        get(30, True)
    # a new token that lives less than a strict min_valid is an error, not handed out
    state["down"] = False
    issued.append((0, 25))
    with pytest.raises(ClientError, match="a new token is valid 2[45] s, but the pool needs "
                                          "one valid 30 s"):
        get(30, True)
    # 40 s, 4 s old: fresh for strict 34 (renewal starts a quarter of the rest ahead of
    # 34 s), not for strict 35, yet usable: with the IdP down, it is handed out
    issued.append((-4, 36))
    assert not get(30, True).from_cache
    assert get(34, True).from_cache
    state["down"] = True
    before, notes[:] = state["requests"], []
    token = get(35, True)
    assert token.from_cache and state["requests"] == before + 1
    assert "using the cached token" in notes[0]
    with pytest.raises(IdPUnavailable, match="less than asked for"):
        get(37, True)
