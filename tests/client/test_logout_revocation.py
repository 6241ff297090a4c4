"""pg-oauth logout revokes the cached tokens at oidc-provider (RFC 7009, its revocation
feature on, advertised in discovery) before it forgets them; when the IdP refuses, the
tokens are forgotten all the same and the command says so. No database."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from client_support import (
    CLEAN_ENV,
    CLIENT_DIR,
    OTHER_RESOURCE,
    ROOT,
    SECRETS,
    USER_CLIENT,
    ClientEnv,
    IdP,
    device_sign_in,
    profiles_toml,
)


@pytest.fixture
def laptop(tmp_path: Path, idp: IdP, workdir: Path) -> ClientEnv:
    config = tmp_path / "config.toml"
    config.write_text(profiles_toml(idp, workdir))
    env = {k: v for k, v in os.environ.items()
           if k not in CLEAN_ENV and not k.startswith("PG_OAUTH_")}
    env.update({"PG_OAUTH_CONFIG": str(config), "PG_OAUTH_CACHE_DIR": str(tmp_path / "cache"),
                "SVC_BASIC_SECRET": SECRETS["svc-basic"], "HOME": str(tmp_path),
                "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)])})
    return ClientEnv(env=env, config=config, cache=tmp_path / "cache",
                     cluster=None)  # type: ignore[arg-type]


def signin_refresh_token(laptop: ClientEnv) -> str:
    """The device sign-in's refresh token: the sign-in's file, not the profile's."""
    [signin] = laptop.cache.glob("signin@*.json")
    assert laptop.cache_entry("dev").get("refresh_token") is None
    return json.loads(signin.read_text())["refresh_token"]


def refresh_at_idp(idp: IdP, refresh_token: str) -> requests.Response:
    return requests.post(f"{idp.issuer}/token", timeout=10,
                         data={"grant_type": "refresh_token", "client_id": USER_CLIENT,
                               "refresh_token": refresh_token})


def test_logout_revokes_the_refresh_token(laptop: ClientEnv, idp: IdP) -> None:
    done, _ = device_sign_in(laptop, idp, "dev")
    assert done.returncode == 0, done.stderr
    refresh_token = signin_refresh_token(laptop)

    out = laptop.run("logout", "-p", "dev")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "pg-oauth: revoked the refresh token of profile 'dev' at the IdP"
    assert "pg-oauth: forgot the cached tokens of profile 'dev'" in lines
    # oidc-provider does not revoke its JWT access tokens: said, and when that one ends
    assert any(line.startswith("pg-oauth: the access token is a JWT the IdP does not "
                               "revoke: ") and "until it expires at " in line for line in lines)
    assert not (laptop.cache / "dev.json").exists()
    assert refresh_token not in out.stderr

    refused = refresh_at_idp(idp, refresh_token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"

    again = laptop.run("logout", "-p", "dev")
    assert again.returncode == 0
    assert again.stderr == "pg-oauth: no cached tokens of profile 'dev'\n"


def test_refused_revocation_still_forgets_and_says_so(laptop: ClientEnv) -> None:
    laptop.token("prod")
    assert (laptop.cache / "prod.json").exists()
    # the client secret changed since (it is not part of what the cache is tied to)
    laptop.env["SVC_BASIC_SECRET"] = "not-the-secret"
    out = laptop.run("logout", "-p", "prod")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0].startswith("pg-oauth: could not revoke the access token of profile "
                               "'prod': refused by the IdP: invalid_client")
    assert "pg-oauth: forgot the cached tokens of profile 'prod'" in lines
    assert lines[-1] == ("pg-oauth: what could not be revoked stays valid until it expires "
                         "or the IdP's admin revokes it")
    assert not (laptop.cache / "prod.json").exists()


def test_logout_ends_the_sign_in_profiles_share(laptop: ClientEnv, idp: IdP) -> None:
    # dev-other: the same client at the same IdP, another database; one sign-in serves both
    with open(laptop.config, "a") as config:
        config.write(f"""
[profile.dev-other]
flow = "device_code"
issuer = "{idp.issuer}"
client_id = "{USER_CLIENT}"
scope = "openid offline_access"
resource = "{OTHER_RESOURCE}"
""")
    done, _ = device_sign_in(laptop, idp, "dev")
    assert done.returncode == 0, done.stderr
    assert laptop.run("token", "-p", "dev-other", "--no-interactive").returncode == 0
    refresh_token = signin_refresh_token(laptop)

    out = laptop.run("logout", "-p", "dev")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "pg-oauth: revoked the refresh token of profile 'dev' at the IdP"
    assert ("pg-oauth: the sign-in was shared with profile 'dev-other': they need pg-oauth "
            "login again once their cached tokens expire") in lines
    assert list(laptop.cache.glob("signin@*")) == []
    refused = refresh_at_idp(idp, refresh_token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"

    # dev-other's cached token serves until renewal, which then needs a sign-in
    assert laptop.run("token", "-p", "dev-other", "--no-interactive").returncode == 0
    renew = laptop.run("token", "-p", "dev-other", "--no-interactive", "--force")
    assert renew.returncode == 1
    assert "profile 'dev-other' needs a sign-in" in renew.stderr
    # nothing left to revoke for it: its access token only
    out = laptop.run("logout", "-p", "dev-other")
    assert "the sign-in was shared" not in out.stderr
    assert "pg-oauth: forgot the cached tokens of profile 'dev-other'" in out.stderr.splitlines()
