"""``pg-oauth explain`` and ``pg-oauth check``: the validator's decision, offline."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pg_oauth_command import main
from pg_oauth_dev.dev_issuer import DevIssuer
from test_cli import PYTHON
from unit_support import AUD, ISS, NOW, ROOT

from pyhook.cli import EXIT_ALLOWED, EXIT_ERROR, EXIT_REFUSED
from pyhook.offline_config import ConfigFileError, config_from_document, parse_interval

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def write_config(tmp_path: Path, dev: DevIssuer) -> Callable[..., str]:
    def write(**sections: Any) -> str:
        document: dict[str, Any] = {
            "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": dev.jwks(),
                         "leeway": "30 seconds", "max_token_lifetime": "1 hour"}],
            "role_map": [{"issuer": ISS, "claim": "sub", "pattern": "(alice|bob)",
                          "role": "\\1"}],
        }  # fmt: skip
        document.update(sections)
        path = tmp_path / "pg_oauth.json"
        path.write_text(json.dumps(document))
        return str(path)

    return write


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """run(token, *args) -> (exit code, stdout, stderr), the token on standard input."""

    def _run(token: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


def test_explain_prints_every_check(
    run: Run, write_config: Callable[..., str], dev: DevIssuer
) -> None:
    token = dev.mint({"iss": ISS, "email": "alice@example.com"}, aud=AUD, now=NOW)
    code, out, err = run(
        token, "explain", "--config", write_config(), "--role", "alice",
        "--now", str(NOW + 10), "--no-fetch",
    )  # fmt: skip
    assert (code, err) == (EXIT_ALLOWED, "")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["1", "header", "pass"]
    assert any(line.split()[1:3] == ["rule", "1"] for line in lines)
    assert "decision" in lines[-2] and "ok: role 'alice' allowed" in lines[-2]
    assert lines[-1].split() == ["input:", "allowed", "roles:", "alice"]
    assert "input: iss 'https://issuer.example.com'" in out
    assert token.split(".")[2] not in out and token.split(".")[1] not in out


def test_check_says_why_in_one_line(
    run: Run, write_config: Callable[..., str], dev: DevIssuer
) -> None:
    config = write_config()
    token = dev.mint({"iss": ISS}, aud=AUD, now=NOW, lifetime=60)
    code, out, _ = run(token, "check", "--config", config, "--role", "alice",
                       "--now", str(NOW + 3600))  # fmt: skip
    assert code == EXIT_REFUSED
    assert out.strip() == "refused: expired: token expired 3540 s ago (leeway 30 s)"
    code, out, _ = run(token, "check", "--config", config, "--role", "bob",
                       "--now", str(NOW))  # fmt: skip
    assert code == EXIT_REFUSED and out.startswith("refused: role_not_allowed: ")
    code, out, _ = run(token, "check", "--config", config, "--role", "alice",
                       "--now", str(NOW), "--json")  # fmt: skip
    assert code == EXIT_ALLOWED
    assert json.loads(out)["outcome"] == "pass"


def test_revocations_and_policy_from_the_file(
    run: Run, write_config: Callable[..., str], dev: DevIssuer
) -> None:
    config = write_config(
        revocations=[
            {"subject": "alice", "reason": "left", "expires_at": "2099-01-01T00:00:00Z"}
        ]
    )
    token = dev.mint({"iss": ISS}, aud=AUD, now=NOW)
    code, out, _ = run(token, "check", "--config", config, "--role", "alice",
                       "--now", str(NOW))  # fmt: skip
    assert (
        code == EXIT_REFUSED and out.startswith("refused: revoked: ") and "left" in out
    )


def test_explain_json(
    run: Run, write_config: Callable[..., str], dev: DevIssuer
) -> None:
    token = dev.mint({"iss": ISS}, aud=AUD, now=NOW)
    code, out, _ = run(token, "explain", "--config", write_config(), "--role", "alice",
                       "--now", str(NOW), "--json")  # fmt: skip
    rows = json.loads(out)
    assert code == EXIT_ALLOWED
    assert rows[-1]["name"] == "decision"
    assert {r["name"] for r in rows} >= {"header", "signature", "revocation", "mapping"}


def test_no_fetch_uses_cached_keys_only(
    run: Run, write_config: Callable[..., str], dev: DevIssuer
) -> None:
    token = dev.mint({"iss": ISS}, aud=AUD, now=NOW)
    issuers = [
        {"issuer": ISS, "audiences": [AUD], "jwks_uri": "https://idp.example.com/keys"}
    ]
    code, out, _ = run(token, "check", "--config", write_config(issuers=issuers),
                       "--role", "alice", "--now", str(NOW), "--no-fetch")  # fmt: skip
    assert code == EXIT_REFUSED and "network disabled (--no-fetch)" in out
    cache = [{"issuer": ISS, "jwks_uri": "https://idp.example.com/keys",
              "discovered": False, "jwks": dev.jwks(), "fetched_at": time.time() - 60}]  # fmt: skip
    code, out, _ = run(
        token, "check", "--config", write_config(issuers=issuers, jwks_cache=cache),
        "--role", "alice", "--now", str(NOW), "--no-fetch",
    )  # fmt: skip
    assert code == EXIT_ALLOWED, out


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ({"issuers": [{"issuer": ISS}]}, "audiences"),
        (
            {"issuers": [{"issuer": ISS, "audiences": [AUD], "leeway": "soon"}]},
            "leeway",
        ),
        ({"role_map": [{"issuer": ISS}]}, "pattern"),
        ({"revocations": [{"subject": "a", "expires_at": "tomorrow"}]}, "expires_at"),
        ({"extra": []}, "unknown sections"),
        (
            {"issuers": [{"issuer": ISS, "audiences": [AUD], "require_sub": "no"}]},
            "issuers[0].require_sub",
        ),
        ({"jwks_cache": [{"issuer": ISS}]}, "jwks_cache[0]"),
    ],
)
def test_configuration_errors_exit_2(
    run: Run, write_config: Callable[..., str], sections: dict[str, Any], words: str
) -> None:
    code, out, err = run("x.y.z", "check", "--config", write_config(**sections),
                         "--role", "alice")  # fmt: skip
    assert code == EXIT_ERROR and out == ""
    assert words in err


def test_unreadable_files_exit_2(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert run("x", "check", "--config", str(bad), "--role", "a")[0] == EXIT_ERROR
    missing = str(tmp_path / "missing.json")
    assert run("x", "check", "--config", missing, "--role", "a")[0] == EXIT_ERROR


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), (1.5, 1.5), ("45", 45.0), ("90 s", 90.0), ("5 minutes", 300.0),
     ("1 hour", 3600.0), ("2d", 172800.0), (None, None)],
)  # fmt: skip
def test_intervals(text: Any, seconds: float | None) -> None:
    assert parse_interval(text, "x") == seconds


@pytest.mark.parametrize("text", ["soon", "5 fortnights", True, [], "-1 s"])
def test_bad_intervals(text: Any) -> None:
    with pytest.raises(ConfigFileError):
        parse_interval(text, "x")


def test_require_sub_opt_out_is_read(
    run: Run, write_config: Callable[..., str], dev: DevIssuer
) -> None:
    token = dev.mint({"iss": ISS}, sub=None, aud=AUD, now=NOW)
    code, out, _ = run(token, "check", "--config", write_config(), "--role", "alice",
                       "--now", str(NOW), "--no-fetch")  # fmt: skip
    assert code == EXIT_REFUSED and out.startswith("refused: missing_claim: token has no sub")
    issuers = [{"issuer": ISS, "audiences": [AUD], "jwks": dev.jwks(), "require_sub": False}]
    rules = [{"issuer": ISS, "claim": "aud", "pattern": AUD, "role": "alice"}]
    code, out, _ = run(token, "check", "--config", write_config(issuers=issuers, role_map=rules),
                       "--role", "alice", "--now", str(NOW), "--no-fetch")  # fmt: skip
    assert code == EXIT_ALLOWED, out


def test_document_must_be_an_object() -> None:
    with pytest.raises(ConfigFileError):
        config_from_document([])


def test_token_from_a_file_in_a_subprocess(
    tmp_path: Path, write_config: Callable[..., str], dev: DevIssuer
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(dev.mint({"iss": ISS}, aud=AUD) + "\n")
    out = subprocess.run(
        [PYTHON, "-m", "pg_oauth_command", "check", "--config", write_config(), "--role", "alice",
         "--token-file", str(token_file), "--no-fetch"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (out.returncode, out.stdout.strip()) == (0, "ok: role 'alice' allowed")


def test_the_token_is_not_a_command_line_argument(
    write_config: Callable[..., str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--config", write_config(), "--role", "alice", "eyJ.x.y"])
    assert info.value.code == 2  # argparse: unrecognized argument
