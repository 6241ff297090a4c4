"""pg-oauth token without a profile: the options make a transient profile (as `aws rds
generate-db-auth-token --hostname` needs no file), checked like one from the config file,
against oidc-provider. Nothing is cached and no PG_OAUTH_* variable is used. No database."""

from __future__ import annotations

import os
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
    ClientEnv,
    IdP,
    device_sign_in,
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


def test_device_flow_from_options(env: dict[str, str], idp: IdP, tmp_path: Path) -> None:
    # no client secret: a public client signs a person in, at a terminal
    options = ("--issuer", idp.issuer, "--client-id", USER_CLIENT, "--scope", "openid",
               "--resource", RESOURCE)
    laptop = ClientEnv(env=env, config=tmp_path / "no-config.toml", cache=tmp_path / "cache",
                       cluster=None)  # type: ignore[arg-type]
    done, shown = device_sign_in(laptop, idp, None, login="bob", command=("token", *options))
    assert done.returncode == 0, done.stderr
    assert "profile '(command line)'" in shown
    claims = unverified_claims(done.stdout.strip()) or {}
    assert (claims["sub"], claims["aud"]) == ("bob", RESOURCE)
    assert not (tmp_path / "cache").exists()  # nothing cached, no sign-in kept

    # no terminal, or --no-interactive: no profile to pg-oauth login with, so say what works
    for more in ((), ("--no-interactive",)):
        done = pg_oauth(env, "token", *options, *more)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("pg-oauth: profile '(command line)' needs a sign-in, "), \
            done.stderr
        assert "pg-oauth login" not in done.stderr
        assert done.stderr.rstrip().endswith(
            "or give a client secret or key (--client-secret-env, --client-secret-file, "
            "--private-key-file)"), done.stderr


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
