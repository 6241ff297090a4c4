"""Tokens that come from outside OAuth grants: a file the platform rotates (Kubernetes
projected service-account tokens), the GitHub Actions OIDC endpoint, any command."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from pg_oauth_client import __version__
from pg_oauth_client.discovery import http_error_line
from pg_oauth_client.errors import SourceError
from pg_oauth_client.jwt_peek import number_claim, unverified_claims
from pg_oauth_client.profile import Profile

GITHUB_URL_VAR = "ACTIONS_ID_TOKEN_REQUEST_URL"
GITHUB_TOKEN_VAR = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"


def _checked(token: str, where: str) -> str:
    """One line of visible ASCII, as a password must be; a JWT must not have expired."""
    token = token.strip()
    if not token:
        raise SourceError(f"{where} gave no token")
    if any(not (33 <= ord(c) <= 126) for c in token):
        raise SourceError(f"{where} gave text that is not a token (spaces, lines or "
                          "non-ASCII characters)")
    exp = number_claim(unverified_claims(token), "exp")
    if exp is not None and exp <= time.time():
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp))
        raise SourceError(f"{where} gave a token that expired at {when}")
    return token


def read_token_file(path_text: str, profile_name: str) -> str:
    """Read on every call: the platform replaces the file before the token expires."""
    path = Path(path_text).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"profile {profile_name!r}: cannot read token_file {path}: "
                          f"{exc.strerror}") from None
    except UnicodeDecodeError:
        raise SourceError(f"profile {profile_name!r}: token_file {path} is not text") from None
    return _checked(text, f"profile {profile_name!r}: token_file {path}")


def github_actions_token(profile: Profile, env: dict[str, str] | None = None) -> str:
    """An OIDC token for ``profile.audience`` from the runner (needs ``id-token: write``)."""
    env = dict(os.environ) if env is None else env
    url, bearer = env.get(GITHUB_URL_VAR), env.get(GITHUB_TOKEN_VAR)
    if not url or not bearer:
        raise SourceError(
            f"profile {profile.name!r}: {GITHUB_URL_VAR} and {GITHUB_TOKEN_VAR} are not "
            "set: run inside a GitHub Actions job with `permissions: id-token: write`")
    sep = "&" if "?" in url else "?"
    full = f"{url}{sep}{urlencode({'audience': profile.audience})}"
    try:
        resp = requests.get(full, timeout=profile.http_timeout,
                            headers={"Authorization": f"bearer {bearer}",
                                     "Accept": "application/json",
                                     "User-Agent": f"pg-oauth/{__version__}"},
                            verify=profile.ca_file or True)
    except requests.RequestException as exc:
        raise SourceError(f"profile {profile.name!r}: GitHub OIDC token request: "
                          f"{http_error_line(exc, url)}") from None
    if resp.status_code != 200:
        raise SourceError(f"profile {profile.name!r}: the GitHub OIDC token request "
                          f"answered HTTP {resp.status_code}")
    try:
        value = resp.json().get("value")
    except (ValueError, AttributeError):
        value = None
    if not isinstance(value, str):
        raise SourceError(f"profile {profile.name!r}: the GitHub OIDC answer has no value")
    return _checked(value, f"profile {profile.name!r}: GitHub Actions")


def command_token(profile: Profile) -> str:
    """Run the profile's command (no shell); its standard output is the token, or a JSON
    object holding it at ``command_json_field`` (dotted path). Its stderr is the user's."""
    where = f"profile {profile.name!r}: command {profile.command[0]!r}"
    try:
        done = subprocess.run(list(profile.command), stdout=subprocess.PIPE, check=False,
                              timeout=max(profile.http_timeout * 6, 60))
    except FileNotFoundError:
        raise SourceError(f"{where} was not found") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{where} did not finish in time") from None
    except OSError as exc:
        raise SourceError(f"{where} could not run: {exc.strerror}") from None
    if done.returncode != 0:
        raise SourceError(f"{where} exited with status {done.returncode}")
    try:
        out = done.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{where} printed something that is not text") from None
    if profile.command_json_field:
        out = _json_field(out, profile.command_json_field, where)
    return _checked(out, where)


def _json_field(text: str, path: str, where: str) -> str:
    try:
        value: Any = json.loads(text)
    except ValueError:
        raise SourceError(f"{where} did not print JSON (command_json_field is set)") from None
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, str):
        raise SourceError(f"{where}: its JSON has no string at {path!r}")
    return value
