"""The pg-oauth command, run as ``python -m pg_oauth_command`` in a subprocess, with every
package of the tree installed (the test venv): pyhook, the client, the development tools."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from unit_support import ROOT

PYTHON = sys.executable  # the project's venv that runs the tests (.venv, or a root's)


def pg_oauth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pg_oauth_command", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def test_dev_issuer_serves_until_terminated(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [PYTHON, "-m", "pg_oauth_command", "dev-issuer", "--dir", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert (tmp_path / "issuer").read_text().strip() == url
        with urllib.request.urlopen(
            url + "/.well-known/openid-configuration", timeout=5
        ) as r:
            assert json.loads(r.read())["issuer"] == url
        # mint and rotate in other processes; the server publishes the new key
        kid = pg_oauth(
            "rotate", "--dir", str(tmp_path), "--alg", "ES256"
        ).stdout.strip()
        assert kid == "es256-2"
        with urllib.request.urlopen(url + "/jwks.json", timeout=5) as r:
            assert kid in [k["kid"] for k in json.loads(r.read())["keys"]]
        out = pg_oauth("mint", "--dir", str(tmp_path), "--sub", "alice", "--aud", "db")
        assert out.returncode == 0, out.stderr
        assert payload(out.stdout.strip())["iss"] == url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_mint_options(tmp_path: Path) -> None:
    before = time.time()
    out = pg_oauth(
        "mint", "--dir", str(tmp_path), "--sub", "bob", "--aud", "db",
        "--issuer", "https://idp.example.com", "--alg", "EdDSA", "--lifetime", "60",
        "--claim", "email=bob@example.com", "groups=[\"a\",\"b\"]",
        "--claim", "level=3", "--claim", "flag=true",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert "\n" not in token and token.count(".") == 2
    claims = payload(token)
    assert claims["iss"] == "https://idp.example.com" and claims["sub"] == "bob"
    assert claims["email"] == "bob@example.com" and claims["groups"] == ["a", "b"]
    assert claims["level"] == 3 and claims["flag"] is True
    assert claims["exp"] - claims["iat"] == 60 and claims["iat"] >= int(before)


def test_mint_expired(tmp_path: Path) -> None:
    out = pg_oauth(
        "mint", "--dir", str(tmp_path), "--sub", "a", "--aud", "db",
        "--issuer", "https://idp.example.com", "--expired",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert payload(out.stdout.strip())["exp"] < time.time() - 600


def test_mint_without_issuer_fails_clearly(tmp_path: Path) -> None:
    out = pg_oauth("mint", "--dir", str(tmp_path), "--sub", "a", "--aud", "db")
    assert out.returncode == 1 and "issuer" in out.stderr
    assert out.stdout == ""


def test_bad_claim_syntax_is_a_usage_error(tmp_path: Path) -> None:
    out = pg_oauth(
        "mint", "--dir", str(tmp_path), "--sub", "a", "--aud", "b", "--claim", "x"
    )
    assert out.returncode == 2 and "key=value" in out.stderr


def test_help_says_development_only_for_the_development_commands() -> None:
    out = pg_oauth("--help")
    assert out.returncode == 0, out.stderr
    operator, _, development = out.stdout.partition("development commands")
    assert "operator commands" in operator
    for name in ("explain", "check", "doctor"):
        assert f"\n  {name} " in operator
    assert "development" not in operator and "production" not in operator
    assert "never for production" in development
    for name in ("dev-issuer", "mint", "rotate"):
        assert f"\n  {name} " in development
    for name in ("dev-issuer", "mint", "rotate"):
        assert pg_oauth(name, "--help").stdout.count("development: ") == 1
    for name in ("explain", "check", "doctor"):
        assert "development" not in pg_oauth(name, "--help").stdout
