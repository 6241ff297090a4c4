"""Every recipe of docs/cookbook.md, end to end: its SQL is run as written, a token of
the provider's shape is minted (signed by the dev issuer, whose keys replace the
provider's), the login works as the recipe says, and a token that should not get in
is refused with the reason the recipe names."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pg_oauth_dev.dev_issuer import REMOVE

COOKBOOK = Path(__file__).resolve().parents[2] / "docs" / "cookbook.md"
RECIPE = re.compile(r"<!-- recipe: (\S+) -->\s*```sql\n(.*?)```", re.DOTALL)


def token_group() -> str:
    """The group role the DBA guide's pg_hba template names on its token lines."""
    guide = (COOKBOOK.parent / "dba-guide.md").read_text(encoding="utf-8")
    groups = set(re.findall(r"^hostssl\s+all\s+\+(\w+)\s", guide, re.MULTILINE))
    assert len(groups) == 1, groups
    return groups.pop()


def create_role_statement() -> str:
    """The cookbook's CREATE ROLE statement for a token role (role dana)."""
    found = re.findall(r"`(CREATE ROLE dana [^`]*);`", COOKBOOK.read_text(encoding="utf-8"))
    assert len(found) == 1, found
    return found[0] + " "


def recipes() -> dict[str, str]:
    return dict(RECIPE.findall(COOKBOOK.read_text(encoding="utf-8")))


@dataclass
class Recipe:
    issuer: str
    claims: dict[str, Any]
    logins: list[tuple[str, str]]  # (role, database)
    refusals: list[tuple[dict[str, Any], str, str, str]]  # (changes, role, db, reason)
    aud: str | list[str] = ""
    lifetime: int = 3600
    headers: dict[str, Any] = field(default_factory=dict)
    check_claim: tuple[str, str] | None = None  # (path, value) via oauth.claim()


TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CASES: dict[str, Recipe] = {
    "okta": Recipe(
        issuer="https://dev-123456.okta.com/oauth2/default",
        aud="api://pg",
        headers={"typ": REMOVE},
        claims={"ver": 1, "jti": "AT.okta-1", "cid": "0oa1pgclient", "uid": "00u1dana",
                "scp": ["openid", "pg"], "sub": "dana@example.com",
                "groups": ["Everyone", "db-reader"]},
        logins=[("dana", "postgres"), ("app_reader", "postgres")],
        refusals=[({"cid": "0oa1other"}, "dana", "postgres", "missing_claim"),
                  ({}, "app_writer", "postgres", "role_not_allowed")],
    ),
    "entra-v2": Recipe(
        issuer=f"https://login.microsoftonline.com/{TENANT}/v2.0",
        aud="6e74172b-be56-4843-9ff4-e66a39bb12e3",
        lifetime=4500,
        claims={"azp": "04b07795-8ddb-461a-bbee-02f9e1bf7b46", "azpacr": "0",
                "oid": "690222be-ff1a-4d56-abd1-7e4f7d38e474",
                "preferred_username": "erin@contoso.com", "roles": ["db.reader"],
                "scp": "access_as_user", "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqF",
                "tid": TENANT, "ver": "2.0"},
        logins=[("erin", "postgres"), ("entra_reader", "postgres")],
        refusals=[({"azp": "someone-else"}, "erin", "postgres", "audience_mismatch"),
                  ({"lifetime": 3 * 3600}, "erin", "postgres", "lifetime_too_long")],
    ),
    "entra-v1": Recipe(
        issuer=f"https://sts.windows.net/{TENANT}/",
        aud="api://pg-prod",
        lifetime=4500,
        claims={"appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46", "appidacr": "0",
                "oid": "690222be-ff1a-4d56-abd1-7e4f7d38e474", "roles": ["db.admin"],
                "upn": "erin@contoso.com", "unique_name": "erin@contoso.com",
                "scp": "user_impersonation", "sub": "l3_roISQU222bULS9yi2k0XpqpOiMz5H3ZACo1GeXA",
                "tid": TENANT, "ver": "1.0"},
        logins=[("entra_admin", "postgres")],
        refusals=[({"appid": "other-app"}, "entra_admin", "postgres", "missing_claim"),
                  ({"ver": "2.0"}, "entra_admin", "postgres", "missing_claim")],
    ),
    "google": Recipe(
        issuer="https://accounts.google.com",
        aud="1234567890-abc.apps.googleusercontent.com",
        claims={"azp": "1234567890-abc.apps.googleusercontent.com",
                "sub": "110169484474386276334", "hd": "example.com",
                "email": "frank@example.com", "email_verified": True},
        logins=[("frank", "postgres")],
        refusals=[({"hd": REMOVE, "email": "frank@gmail.com"}, "frank", "postgres",
                   "missing_claim"),
                  ({"email_verified": False}, "frank", "postgres", "missing_claim")],
        check_claim=("hd", "example.com"),
    ),
    "keycloak": Recipe(
        issuer="https://sso.example.com/realms/corp",
        aud=["pg.prod", "account"],
        lifetime=300,
        claims={"sub": "f1d2c3b4-0000-4000-8000-000000000001", "typ": "Bearer",
                "azp": "pg-cli",
                "realm_access": {"roles": ["offline_access", "db-analyst"]},
                "resource_access": {"pg.prod": {"roles": ["reader"]},
                                    "account": {"roles": ["manage-account"]}},
                "preferred_username": "gina", "email_verified": True},
        logins=[("kc_analyst", "postgres"), ("kc_reader", "postgres")],
        refusals=[({"typ": "ID"}, "kc_analyst", "postgres", "missing_claim"),
                  ({"azp": "account-console"}, "kc_analyst", "postgres",
                   "audience_mismatch")],
        check_claim=('resource_access."pg.prod".roles', '["reader"]'),
    ),
    "github-actions": Recipe(
        issuer="https://token.actions.githubusercontent.com",
        aud="pg-prod",
        lifetime=300,
        claims={"sub": "repo:octo-org/deploy-tools:environment:production",
                "environment": "production", "ref": "refs/heads/main",
                "repository": "octo-org/deploy-tools", "repository_owner": "octo-org",
                "repository_owner_id": "65", "actor": "octocat",
                "event_name": "workflow_dispatch",
                "job_workflow_ref":
                    "octo-org/deploy-tools/.github/workflows/deploy.yml@refs/heads/main",
                "nbf": "NOW-600"},
        logins=[("deployer", "app")],
        refusals=[({"sub": "repo:octo-org/deploy-tools:pull_request"}, "deployer", "app",
                   "role_not_allowed"),
                  ({}, "deployer", "postgres", "database_not_allowed"),
                  ({"repository_owner_id": "66"}, "deployer", "app", "missing_claim")],
    ),
    "kubernetes": Recipe(
        issuer="https://kubernetes.default.svc.cluster.local",
        aud=["pg"],
        claims={"sub": "system:serviceaccount:billing:invoicer",
                "kubernetes.io": {"namespace": "billing",
                                  "pod": {"name": "invoicer-7d9f", "uid": "p-1"},
                                  "serviceaccount": {"name": "invoicer", "uid": "s-1"}}},
        logins=[("billing_invoicer", "postgres"), ("billing_ro", "postgres")],
        refusals=[({"sub": "system:serviceaccount:default:default",
                    "kubernetes.io": {"namespace": "default", "pod": {"name": "p"}}},
                   "billing_invoicer", "postgres", "role_not_allowed"),
                  ({"kubernetes.io": {"namespace": "billing"}}, "billing_ro", "postgres",
                   "missing_claim"),
                  ({"exp": REMOVE}, "billing_ro", "postgres", "missing_claim")],
        check_claim=('"kubernetes.io".namespace', "billing"),
    ),
}  # fmt: skip


def test_every_recipe_has_a_case() -> None:
    assert set(recipes()) == set(CASES)


@pytest.fixture(scope="module")
def app_database(cluster):
    if not cluster.sql("SELECT 1 FROM pg_database WHERE datname = 'app'"):
        cluster.sql("CREATE DATABASE app")


def run_recipe(cluster, issuer, name: str, case: Recipe) -> None:
    sql = recipes()[name]
    # psql features: the key file is the dev issuer's JWKS here
    jwks = json.dumps(issuer.jwks()).replace("'", "''")
    sql = sql.replace(":'jwks'", f"'{jwks}'")
    sql = "\n".join(line for line in sql.splitlines() if not line.startswith("\\"))
    roles = {role for role, _ in case.logins} | {r[1] for r in case.refusals}
    group = token_group()
    if not cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (group,)):
        cluster.sql(f"CREATE ROLE {group} NOLOGIN")
    for role in sorted(roles):
        if not cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
            # the cookbook's own statement, for this role
            cluster.sql(create_role_statement().replace(" dana ", f' "{role}" '))
        assert cluster.sql("SELECT pg_has_role(%s, %s, 'MEMBER')", (role, group)) == [(True,)]
    cluster.sql(sql)
    # the provider's keys are not reachable from here: use the dev issuer's
    static = cluster.sql("SELECT jwks IS NOT NULL FROM oauth.issuers WHERE issuer = %s",
                         (case.issuer,))  # fmt: skip
    assert static, f"recipe {name} did not create issuer {case.issuer}"
    if not static[0][0]:
        # the dev issuer serves plain http on loopback: a per-issuer choice (issue 19)
        cluster.sql("UPDATE oauth.issuers SET jwks_uri = %s, allow_loopback_http = true "
                    "WHERE issuer = %s",
                    (issuer.issuer + "/jwks.json", case.issuer))  # fmt: skip


def mint(issuer, case: Recipe, changes: dict[str, Any] | None = None) -> str:
    changes = dict(changes or {})
    lifetime = changes.pop("lifetime", case.lifetime)
    now = int(time.time())
    claims = {**case.claims, **changes, "iss": case.issuer}
    for name, value in list(claims.items()):
        if value == "NOW-600":
            claims[name] = now - 600
    # sub comes from the claims (REMOVE leaves it out)
    return issuer.mint(claims, sub=None, aud=case.aud, lifetime=lifetime,
                       headers=case.headers, now=now)  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_recipe(cluster, issuer, refused, app_database, name: str) -> None:
    case = CASES[name]
    run_recipe(cluster, issuer, name, case)
    try:
        for role, database in case.logins:
            with cluster.token_connect(
                role, mint(issuer, case), dbname=database
            ) as conn:
                assert conn.execute("SELECT current_user").fetchone()[0] == role
                if case.check_claim:
                    path, value = case.check_claim
                    got = conn.execute("SELECT oauth.claim(%s)", (path,)).fetchone()[0]
                    assert got.replace(" ", "") == value
        for changes, role, database, reason in case.refusals:
            token = mint(issuer, case, changes)
            assert refused(role, token, dbname=database) == reason, (changes, role)
    finally:
        cluster.sql("DELETE FROM oauth.issuers WHERE issuer = %s", (case.issuer,))
