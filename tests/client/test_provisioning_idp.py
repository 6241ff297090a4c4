"""Provisioning with a real identity provider (oidc-provider): a user signs in with the
device flow, the first login makes the user's role, and the groups the directory gives
at each token decide the memberships (docs/provisioning.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import ClientEnv, IdP, device_sign_in
from pgcluster import Cluster


@pytest.fixture
def provisioning(cluster: Cluster, idp: IdP, workdir: Path) -> Iterator[Path]:
    cluster.sql("CREATE ROLE idp_readers NOLOGIN; CREATE ROLE idp_writers NOLOGIN")
    cluster.sql("INSERT INTO oauth.provisioning (issuer, role_claim, role_pattern, groups_claim,"
                " member_of) VALUES (%s, 'email', %s, 'groups', '{oauth_users}')",
                (idp.issuer, r"([a-z]+)@example\.com"))
    cluster.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) VALUES "
                "(%s, 'db-readers', 'idp_readers'), (%s, 'db-writers', 'idp_writers')",
                (idp.issuer, idp.issuer))
    groups = workdir / "groups.json"
    yield groups
    groups.write_text("{}")
    cluster.sql("DELETE FROM oauth.provisioning")
    for (role,) in cluster.sql("SELECT rolname FROM oauth.provisioned_roles"):
        cluster.sql(f'DROP ROLE IF EXISTS "{role}"')
    cluster.sql("DELETE FROM oauth.provisioned_roles; DELETE FROM oauth.provisioned_memberships")
    cluster.sql("DROP ROLE idp_readers, idp_writers")


def memberships(cluster: Cluster, role: str) -> set[str]:
    return {r[0] for r in cluster.sql(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (role,))}


def test_a_new_user_gets_a_role_and_the_directorys_groups(
        client: ClientEnv, idp: IdP, cluster: Cluster, provisioning: Path) -> None:
    provisioning.write_text(json.dumps({"dora": ["db-readers", "marketing"]}))
    assert cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = 'dora'") == []
    done, _ = device_sign_in(client, idp, "dev", login="dora")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    with cluster.token_connect("dora", token) as conn:
        assert conn.execute("SELECT current_user, oauth.claim('groups')").fetchone() == (
            "dora", '["db-readers", "marketing"]')
    assert memberships(cluster, "dora") == {"oauth_users", "idp_readers"}

    # the directory moves dora from readers to writers; her next token says so
    provisioning.write_text(json.dumps({"dora": ["db-writers"]}))
    client.age_cache("dev")
    fresh = client.token("dev")
    assert fresh != token
    with cluster.token_connect("dora", fresh) as conn:
        assert conn.execute("SELECT pg_has_role('idp_writers', 'USAGE'), "
                            "pg_has_role('idp_readers', 'USAGE')").fetchone() == (True, False)
    assert memberships(cluster, "dora") == {"oauth_users", "idp_writers"}
    changes = [r[0] for r in cluster.sql(
        "SELECT change FROM oauth.audit_log WHERE kind = 'provisioning' AND role = 'dora' "
        "ORDER BY id")]
    assert changes == ["created role dora", "granted oauth_users to dora (member_of)",
                       "granted idp_readers to dora", "granted idp_writers to dora",
                       "revoked idp_readers from dora"]


def test_an_existing_role_the_role_map_admits_is_left_alone(
        client: ClientEnv, idp: IdP, cluster: Cluster, provisioning: Path) -> None:
    # alice was made by the DBA and role_map admits her: provisioning does not touch her
    provisioning.write_text(json.dumps({"alice": ["db-writers"]}))
    done, _ = device_sign_in(client, idp, "dev", login="alice")
    assert done.returncode == 0, done.stderr
    with cluster.token_connect("alice", done.stdout.strip()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    assert memberships(cluster, "alice") == {"oauth_users"}
    assert cluster.sql("SELECT count(*) FROM oauth.provisioned_roles") == [(0,)]
