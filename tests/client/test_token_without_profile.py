"""pg-oauth token without a profile: the options make a transient profile (as `aws rds
generate-db-auth-token --hostname` needs no file), checked like one from the config file,
against oidc-provider. Nothing is cached and no PG_OAUTH_* variable is used. No database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from client_support import (
    CLEAN_ENV,
    CLIENT_DIR,
    RESOURCE,
    ROOT,
    SECRETS,
    USER_CLIENT,
    IdP,
)
from pg_oauth_client.jwt_peek import unverified_claims


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in CLEAN_ENV and not k.startswith("PG_OAUTH_")}
    env.update({"PG_OAUTH_CONFIG": str(tmp_path / "no-config.toml"),
                "PG_OAUTH_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path),
                "SVC_BASIC_SECRET": SECRETS["svc-basic"],
                "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)])})
    return env


def pg_oauth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pg_oauth_client", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_client_credentials_from_options(env: dict[str, str], idp: IdP,
                                         tmp_path: Path) -> None:
    # PG_OAUTH_* would make a profile of the environment: the options ignore them
    env.update({"PG_OAUTH_CLIENT_ID": "svc-post", "PG_OAUTH_RESOURCE": "urn:elsewhere"})
    done = pg_oauth(env, "token", "--issuer", idp.issuer, "--client-id", "svc-basic",
                    "--client-secret-env", "SVC_BASIC_SECRET", "--resource", RESOURCE)
    assert done.returncode == 0, done.stderr
    claims = unverified_claims(done.stdout.strip()) or {}
    assert (claims["iss"], claims["aud"], claims["client_id"]) == (
        idp.issuer, RESOURCE, "svc-basic")
    assert not (tmp_path / "cache").exists()  # one-off: nothing left behind

    # private_key_jwt, and -o json, the same way
    done = pg_oauth(env, "token", "-o", "json", "--issuer", idp.issuer, "--client-id",
                    "svc-jwt", "--private-key-file", str(idp.private_key_file),
                    "--private-key-kid", "svc-jwt-1", "--resource", RESOURCE)
    assert done.returncode == 0, done.stderr
    assert '"profile": "(command line)"' in done.stdout


def test_device_flow_from_options(env: dict[str, str], idp: IdP) -> None:
    # no client secret: a public client signs a person in
    proc = subprocess.Popen([sys.executable, "-m", "pg_oauth_client", "token", "--issuer",
                             idp.issuer, "--client-id", USER_CLIENT, "--scope", "openid",
                             "--resource", RESOURCE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    shown = ""
    while "user_code=" not in shown:
        line = proc.stderr.readline()
        assert line, shown
        shown += line
    url = re.search(r"(http://\S+user_code=\S+)", shown)
    assert url and "profile '(command line)'" in shown
    idp.approve(url.group(1), login="bob")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    claims = unverified_claims(out.strip()) or {}
    assert (claims["sub"], claims["aud"]) == ("bob", RESOURCE)


def test_options_are_checked_like_a_profile(env: dict[str, str], idp: IdP) -> None:
    done = pg_oauth(env, "token", "--issuer", idp.issuer, "--client-id", "svc-basic",
                    "--client-secret-env", "UNSET_VARIABLE")
    assert done.returncode == 2
    assert "client_secret_env names UNSET_VARIABLE, which is not set" in done.stderr

    done = pg_oauth(env, "token", "-p", "prod", "--issuer", idp.issuer)
    assert done.returncode == 2 and "--profile and one-off options" in done.stderr

    done = pg_oauth(env, "token", "--issuer", idp.issuer)
    assert done.returncode == 2 and "needs --client-id" in done.stderr

    env["WRONG"] = "not-the-secret"
    done = pg_oauth(env, "token", "--issuer", idp.issuer, "--client-id", "svc-basic",
                    "--client-secret-env", "WRONG", "--resource", RESOURCE)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("pg-oauth: client credentials for profile '(command line)'"
                                  " refused by the issuer: invalid_client")
