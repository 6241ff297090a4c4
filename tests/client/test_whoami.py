"""pg-oauth whoami: what a profile's oidc-provider token says, and with --dsn what the
pg_oauth server makes of it, as the token's own (unprivileged) role can ask. The token is
never shown. Runs through pg-oauth as this tree registers its subcommands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from client_support import RESOURCE, ClientEnv, IdP
from tree_entry_points import tree_entry_points


@pytest.fixture
def tree_client(client: ClientEnv, tmp_path: Path) -> ClientEnv:
    client.env["PYTHONPATH"] = os.pathsep.join(
        [str(tree_entry_points(tmp_path / "entry-points")), client.env["PYTHONPATH"]])
    return client


def rows(stdout: str) -> dict[str, str]:
    return {label.strip(): value.strip() for label, _, value in
            (line.partition(":") for line in stdout.splitlines())}


def test_whoami_decodes_the_token(tree_client: ClientEnv, idp: IdP) -> None:
    token = tree_client.token("prod")
    done = tree_client.run("whoami", "-p", "prod")
    assert done.returncode == 0, done.stderr
    shown = rows(done.stdout)
    assert shown["profile"] == "prod" and shown["issuer"] == idp.issuer
    assert (shown["subject"], shown["client"]) == ("svc-basic", "svc-basic")
    assert shown["audience"] == RESOURCE and shown["cached"] == "yes"
    assert shown["expires"].endswith(" left)") and "UTC" in shown["expires"]
    assert token not in done.stdout + done.stderr

    assert shown["scopes"] == "(none)"  # none asked for

    tree_client.env["PG_OAUTH_SCOPE"] = "db"
    out = json.loads(tree_client.run("whoami", "-p", "prod", "-o", "json",
                                     check=True).stdout)
    assert (out["issuer"], out["subject"], out["audience"]) == (idp.issuer, "svc-basic",
                                                                 RESOURCE)
    assert out["scopes"] == ["db"] and out["expires_at"] > out["issued_at"]
    assert out["from_cache"] is False  # another scope: another token
    assert token not in json.dumps(out)


def test_whoami_dsn_shows_the_login_role(tree_client: ClientEnv, idp: IdP) -> None:
    done = tree_client.run("whoami", "-p", "prod", "--dsn", "dbname=postgres")
    assert done.returncode == 0, done.stderr
    shown = rows(done.stdout)
    assert shown["login role"] == "svc" and shown["member of"] == "oauth_users"
    assert shown["database"] == "postgres"
    assert shown["server saw"].startswith(f"issuer {idp.issuer}, subject svc-basic, until ")

    out = json.loads(tree_client.run("whoami", "-p", "prod", "--dsn", "dbname=postgres",
                                     "-o", "json", check=True).stdout)
    assert out["server"]["current_user"] == "svc"
    assert out["server"]["session"]["login_role"] == "svc"

    # a database without the extension: the login works, oauth.session() is not there
    if not tree_client.cluster.sql("SELECT 1 FROM pg_database WHERE datname = 'no_ext'"):
        tree_client.cluster.sql("CREATE DATABASE no_ext")
    done = tree_client.run("whoami", "-p", "prod", "--dsn", "dbname=no_ext", check=True)
    shown = rows(done.stdout)
    assert (shown["login role"], shown["database"]) == ("svc", "no_ext")
    assert shown["server saw"].startswith("(oauth.session() is not in this database")


def test_whoami_dsn_refused_says_why(tree_client: ClientEnv) -> None:
    token = tree_client.token("other-db")
    done = tree_client.run("whoami", "-p", "other-db", "--dsn", "dbname=postgres")
    assert done.returncode == 2
    # what the token says is still shown: it is what to compare with the refusal
    assert rows(done.stdout)["audience"] == "urn:pg-oauth:otherdb"
    assert "login role" not in done.stdout
    assert "reason=audience_mismatch" in done.stderr
    assert "pg-oauth: the server refused the token of profile 'other-db' for user 'svc'" \
        in done.stderr
    assert token not in done.stderr
