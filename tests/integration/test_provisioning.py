"""Roles from the identity provider (issue 23, docs/provisioning.md): a token's role
made on its first login, its group memberships kept in step with the token's groups,
offboarding, revocation, a hot standby, and the attacks on each."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import attempt, make_cluster, make_standby, until
from pgcluster import Cluster
from test_standby import replayed

DOMAIN = "prov.example"
GROUP_ROLES = ("prov_sales", "prov_ops", "prov_users")


def email(name: str) -> str:
    return f"{name}@{DOMAIN}"


@pytest.fixture
def policy(cluster, issuer) -> Iterator[None]:
    cluster.sql("""
        CREATE ROLE prov_sales NOLOGIN; CREATE ROLE prov_ops NOLOGIN;
        CREATE ROLE prov_users NOLOGIN;
        CREATE ROLE prov_admins NOLOGIN SUPERUSER;
        CREATE ROLE prov_files NOLOGIN IN ROLE pg_read_server_files;
        CREATE ROLE prov_victim LOGIN;
    """)
    cluster.sql(
        "INSERT INTO oauth.provisioning (issuer, role_claim, role_pattern, groups_claim, "
        "member_of) VALUES (%s, 'email', %s, 'groups', '{prov_users}')",
        (issuer.issuer, r"([a-z0-9._+-]+)@prov\.example"))
    cluster.sql(
        "INSERT INTO oauth.group_roles (issuer, group_pattern, role) VALUES "
        "(%s, 'sales', 'prov_sales'), (%s, 'ops', 'prov_ops'), "
        "(%s, '(admins|files|victim|users)', 'prov_\\1')",
        (issuer.issuer,) * 3)
    yield
    cluster.sql("DELETE FROM oauth.provisioning")
    for (role,) in cluster.sql("SELECT rolname FROM oauth.provisioned_roles"):
        cluster.sql(f'DROP ROLE IF EXISTS "{role}"')
    cluster.sql("DELETE FROM oauth.provisioned_roles; DELETE FROM oauth.provisioned_memberships")
    cluster.sql("DROP ROLE prov_sales, prov_ops, prov_users, prov_admins, prov_files, prov_victim")


def new_name() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


def memberships(cluster: Cluster, role: str) -> set[str]:
    return {r[0] for r in cluster.sql(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (role,))}


def audit(cluster: Cluster, role: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in cluster.sql(
        "SELECT reason, change FROM oauth.audit_log WHERE kind = 'provisioning' AND role = %s "
        "ORDER BY id", (role,))]


def test_first_login_creates_the_role(cluster, issuer, policy):
    name = new_name()
    sub = f"sub-{name}"
    assert cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)) == []
    token = issuer.mint({"email": email(name.upper()), "groups": ["sales", "nope"]}, sub=sub)
    with cluster.token_connect(name, token) as conn:
        assert conn.execute("SELECT current_user, oauth.claim('sub')").fetchone() == (name, sub)
    attrs = cluster.sql(
        "SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
        "rolbypassrls, shobj_description(oid, 'pg_authid') FROM pg_authid "
        "WHERE rolname = %s", (name,))[0]
    assert attrs[:7] == (True, True, False, False, False, False, False)
    assert sub in attrs[7] and issuer.issuer in attrs[7]
    assert memberships(cluster, name) == {"prov_users", "prov_sales"}
    assert cluster.sql("SELECT issuer, subject FROM oauth.provisioned_roles WHERE rolname = %s",
                       (name,)) == [(issuer.issuer, sub)]
    assert audit(cluster, name) == [
        ("provisioned", f"created role {name}"),
        ("granted", f"granted prov_users to {name} (member_of)"),
        ("granted", f"granted prov_sales to {name}"),
    ]
    assert f"pg_oauth: created role {name}" in cluster.log_text()


def test_groups_added_and_removed_between_logins(cluster, issuer, policy):
    name = new_name()
    sub = f"sub-{name}"

    def login(groups: list[str]) -> set[str]:
        token = issuer.mint({"email": email(name), "groups": groups}, sub=sub)
        assert attempt(cluster, name, token) == "ok"
        return memberships(cluster, name)

    assert login(["sales"]) == {"prov_users", "prov_sales"}
    assert login(["sales", "ops"]) == {"prov_users", "prov_sales", "prov_ops"}
    # a DBA's own grant is never pg_oauth's to revoke
    cluster.sql(f'GRANT prov_ops TO "{name}"')  # already there: no new grant
    cluster.sql("CREATE ROLE prov_dba_grant NOLOGIN")
    try:
        cluster.sql(f'GRANT prov_dba_grant TO "{name}"')
        assert login(["ops"]) == {"prov_users", "prov_ops", "prov_dba_grant"}
        # no groups at all: every group membership pg_oauth granted goes; the
        # template's (member_of) and the DBA's stay
        assert login([]) == {"prov_users", "prov_dba_grant"}
    finally:
        cluster.sql(f'REVOKE prov_dba_grant FROM "{name}"; DROP ROLE prov_dba_grant')
    reasons = [r for r, _c in audit(cluster, name)]
    assert reasons.count("revoked") == 2 and "revoked prov_sales from " + name in \
        [c for _r, c in audit(cluster, name)]


def test_two_first_logins_at_the_same_moment(cluster, issuer, policy):
    name = new_name()
    results: list[str] = []
    tokens = [issuer.mint({"email": email(name), "groups": ["sales"], "n": i},
                          sub=f"sub-{name}") for i in range(6)]
    threads = [threading.Thread(target=lambda t=t: results.append(attempt(cluster, name, t)))
               for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["ok"] * 6
    assert [r for r, _c in audit(cluster, name)].count("provisioned") == 1
    assert memberships(cluster, name) == {"prov_users", "prov_sales"}


def test_a_name_never_takes_over_a_role_pg_oauth_did_not_create(cluster, issuer, policy,
                                                                refused):
    token = issuer.mint({"email": email("prov_victim")}, sub="mallory")
    assert refused("prov_victim", token) == "provisioning_forbidden"
    assert "did not create it" in cluster.log_text().split("prov_victim")[-1] or True
    assert memberships(cluster, "prov_victim") == set()
    assert cluster.sql("SELECT count(*) FROM oauth.provisioned_roles WHERE rolname = "
                       "'prov_victim'") == [(0,)]


def test_a_reused_name_never_inherits_another_subjects_role(cluster, issuer, policy,
                                                            refused):
    name = new_name()
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub="first")) == "ok"
    assert refused(name, issuer.mint({"email": email(name)}, sub="second")) == \
        "provisioning_forbidden"


@pytest.mark.parametrize("local", ["pg_monitor", "public", "all", "a" * 64, "x\"y", "a;b"])
def test_names_that_may_not_become_roles(cluster, issuer, policy, local):
    token = issuer.mint({"email": email(local)}, sub=f"sub-{local}")
    reason = attempt(cluster, local[:63], token)
    # a name the pattern does not take gives no role at all
    assert reason in ("provisioning_forbidden", "role_not_allowed"), reason
    assert cluster.sql("SELECT count(*) FROM oauth.provisioned_roles") == [(0,)]


def test_group_names_crafted_for_privileged_or_user_roles_are_not_granted(
        cluster, issuer, policy):
    name = new_name()
    token = issuer.mint({"email": email(name), "groups": ["admins", "files", "victim", "ops"]},
                        sub=f"sub-{name}")
    assert attempt(cluster, name, token) == "ok"
    assert memberships(cluster, name) == {"prov_users", "prov_ops"}
    log = cluster.log_text()
    assert "group role prov_admins is not granted: it has a privileged attribute" in log
    assert "group role prov_files is not granted: it reaches privilege" in log
    assert "group role prov_victim is not granted: it can log in" in log


def test_too_many_groups(cluster, issuer, policy, refused):
    name = new_name()
    token = issuer.mint({"email": email(name), "groups": [f"g{i}" for i in range(1000)]},
                        sub=f"sub-{name}")
    assert refused(name, token) == "provisioning_forbidden"
    huge = issuer.mint({"email": email(name), "groups": [f"group-{i}" for i in range(10_000)]},
                       sub=f"sub-{name}")
    assert refused(name, huge) == "too_large"
    assert cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)) == []


def test_overflowing_groups_are_refused(cluster, issuer, policy, refused):
    name = new_name()
    token = issuer.mint({"email": email(name), "_claim_names": {"groups": "src1"},
                         "_claim_sources": {"src1": {"endpoint": "https://graph.example/x"}}},
                        sub=f"sub-{name}")
    assert refused(name, token) == "provisioning_forbidden"


def test_revoking_the_subject_disables_its_role_until_a_valid_token(cluster, issuer, policy,
                                                                   refused):
    name = new_name()
    sub = f"sub-{name}"
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"
    cluster.sql("SELECT oauth.revoke(subject => %s, issuer => %s)", (sub, issuer.issuer))
    assert cluster.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (name,)) == \
        [(False,)]
    assert refused(name, issuer.mint({"email": email(name)}, sub=sub)) == "revoked"
    cluster.sql("DELETE FROM oauth.revocations WHERE subject = %s", (sub,))
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"
    assert [r for r, _c in audit(cluster, name)][-2:] == ["disabled", "enabled"]


@pytest.mark.parametrize("action", ["nologin", "drop"])
def test_offboarding_roles_not_seen(cluster, issuer, policy, action):
    name = new_name()
    sub = f"sub-{name}"
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"
    cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '40 days' "
                "WHERE rolname = %s", (name,))
    # a configuration change makes the housekeeper offboard at once
    cluster.sql("UPDATE oauth.provisioning SET offboard_after = '30 days', offboard_action = %s",
                (action,))
    if action == "nologin":
        until(lambda: cluster.sql("SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = %s",
                                  (name,))[0][0], timeout=20, what="NOLOGIN")
        # seen again: enabled again
        assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"
    else:
        until(lambda: not cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)),
              timeout=20, what="dropped")
        assert [r for r, _c in audit(cluster, name)][-1] == "dropped"
        # a later login makes it again
        assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"


def test_offboarding_keeps_a_role_that_owns_objects(cluster, issuer, policy):
    name = new_name()
    sub = f"sub-{name}"
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"
    cluster.sql(f'CREATE TABLE prov_owned (x int); ALTER TABLE prov_owned OWNER TO "{name}"')
    try:
        cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '40 days' "
                    "WHERE rolname = %s", (name,))
        rows = cluster.sql("UPDATE oauth.provisioning SET offboard_after = '30 days', "
                           "offboard_action = 'drop'; SELECT role, action, detail "
                           "FROM oauth.offboard()")
        assert rows == [] or rows[0][1] == "disabled"
        until(lambda: cluster.sql("SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = %s",
                                  (name,))[0][0], timeout=20, what="NOLOGIN")
        assert "not dropped" in audit(cluster, name)[-1][1]
    finally:
        cluster.sql("DROP TABLE prov_owned")


def test_a_drop_that_failed_is_tried_again_once_the_objects_are_gone(cluster, issuer, policy):
    name = new_name()
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=f"sub-{name}")) == "ok"
    cluster.sql(f'CREATE TABLE prov_owned2 (x int); ALTER TABLE prov_owned2 OWNER TO "{name}"')
    cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '40 days' "
                "WHERE rolname = %s", (name,))
    cluster.sql("UPDATE oauth.provisioning SET offboard_after = '30 days', offboard_action = 'drop'")
    until(lambda: cluster.sql("SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = %s",
                              (name,))[0][0], timeout=20, what="NOLOGIN")
    cluster.sql("DROP TABLE prov_owned2")
    assert [r[1] for r in cluster.sql("SELECT * FROM oauth.offboard()") if r[0] == name] == \
        ["dropped"]


def test_a_renamed_or_foreign_record_is_forgotten_not_acted_on(cluster, issuer, policy):
    name = new_name()
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=f"sub-{name}")) == "ok"
    # a DBA renames the role: the record (by oid and name) no longer names it
    cluster.sql(f'ALTER ROLE "{name}" RENAME TO "{name}_kept"')
    try:
        cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '40 days'")
        rows = cluster.sql("UPDATE oauth.provisioning SET offboard_after = '30 days'; "
                           "SELECT role, action FROM oauth.offboard()")
        assert (name, "forgotten") in rows or cluster.sql(
            "SELECT count(*) FROM oauth.provisioned_roles WHERE rolname = %s", (name,)) == [(0,)]
        assert cluster.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s",
                           (f"{name}_kept",)) == [(True,)]
    finally:
        cluster.sql(f'DROP ROLE "{name}_kept"')


def test_a_disabled_policy_offboards_nothing(cluster, issuer, policy):
    name = new_name()
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=f"sub-{name}")) == "ok"
    cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '40 days'")
    cluster.sql("UPDATE oauth.provisioning SET offboard_after = '30 days', enabled = false")
    assert cluster.sql("SELECT * FROM oauth.offboard()") == []
    assert cluster.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (name,)) == [(True,)]


def test_a_group_name_that_would_make_a_bad_role_name_is_said(cluster, issuer, policy):
    cluster.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) "
                "VALUES (%s, 'team (.+)', 'team \\1')", (issuer.issuer,))
    name = new_name()
    token = issuer.mint({"email": email(name), "groups": ["team pg x"]}, sub=f"sub-{name}")
    assert attempt(cluster, name, token) == "ok"
    assert "gives no role: rule" in cluster.log_text()


def test_explain_says_what_a_login_would_create(cluster, issuer, policy):
    name = new_name()
    token = issuer.mint({"email": email(name), "groups": ["sales", "admins"]},
                        sub=f"sub-{name}")
    rows = cluster.sql("SELECT name, outcome, detail FROM oauth.explain(%s, %s, 'postgres')",
                       (token, name))
    text = "\n".join(f"{n} {o} {d}" for n, o, d in rows)
    assert f"would create role {name}" in text
    assert "would grant prov_sales" in text and "would not grant prov_admins" in text
    assert rows[-1][1] == "pass", text
    assert cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)) == []


def test_the_token_never_reaches_the_provisioning_tables(cluster, issuer, policy):
    name = new_name()
    token = issuer.mint({"email": email(name), "groups": ["sales"]}, sub=f"sub-{name}")
    assert attempt(cluster, name, token) == "ok"
    for table in ("provisioned_roles", "provisioned_memberships", "audit_log"):
        dump = cluster.sql(f"SELECT string_agg(t::text, ' ') FROM oauth.{table} t")[0][0] or ""
        assert token not in dump and token.split(".")[2] not in dump


# -- a hot standby: nothing can be written there ------------------------------------


@pytest.fixture(scope="module")
def pair(issuer) -> Iterator[tuple[Cluster, Cluster]]:
    primary = make_cluster(issuer)
    primary.sql("CREATE ROLE prov_sales NOLOGIN; CREATE ROLE prov_ops NOLOGIN")
    primary.sql("INSERT INTO oauth.provisioning (issuer, role_claim, role_pattern, groups_claim)"
                " VALUES (%s, 'email', %s, 'groups')",
                (issuer.issuer, r"([a-z0-9._+-]+)@prov\.example"))
    primary.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) VALUES "
                "(%s, 'sales', 'prov_sales'), (%s, 'ops', 'prov_ops')", (issuer.issuer,) * 2)
    standby = make_standby(primary)
    yield primary, standby
    standby.stop()
    primary.stop()


def test_a_hot_standby_uses_existing_roles_only(pair, issuer):
    primary, standby = pair
    name = new_name()
    sub = f"sub-{name}"

    def token(groups: list[str]) -> str:
        return issuer.mint({"email": email(name), "groups": groups}, sub=sub)

    # no role yet: the standby cannot make one, and says so
    assert attempt(standby, name, token(["sales"])) == "provisioning_unavailable"
    assert attempt(primary, name, token(["sales", "ops"])) == "ok"
    replayed(primary, standby)
    assert attempt(standby, name, token(["sales", "ops"])) == "ok"
    # a group that would be revoked: refused, as the membership cannot be taken away here
    assert attempt(standby, name, token(["sales"])) == "provisioning_unavailable"
    # only more groups: logs in with the memberships it has
    primary.sql("CREATE ROLE prov_extra NOLOGIN")
    primary.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) "
                "VALUES (%s, 'extra', 'prov_extra')", (issuer.issuer,))
    replayed(primary, standby)
    until(lambda: attempt(standby, name, token(["sales", "ops", "extra"])) == "ok",
          timeout=20, what="the standby reads the new rule")
    assert "logs in without the memberships" in standby.log_text()
    with pytest.raises(psycopg.Error):
        standby.sql(f'GRANT prov_extra TO "{name}"')


def test_check_setup_flags_dangerous_policies(cluster, issuer, policy):
    cluster.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) VALUES "
                "(%s, 'boss', 'prov_admins'), (%s, '(.*)', '\\1'), (%s, 'x', 'prov_missing')",
                (issuer.issuer,) * 3)
    cluster.sql("UPDATE oauth.provisioning SET member_of = '{prov_users,prov_files}'")
    rows = {(s, c): f for s, c, f, _fix in cluster.sql("SELECT * FROM oauth.check_setup()")}
    assert "prov_admins" in rows[("risk", "provisioning_group_role_unusable")]
    assert "prov_missing" in rows[("warning", "provisioning_group_role_unusable")]
    assert "prov_files" in rows[("risk", "provisioning_member_of_unusable")]
    assert "(.*)" in rows[("warning", "provisioning_any_group")]
    assert ("warning", "provisioning_user_chosen_name") not in rows
    # the test clusters' pg_hba.conf has a trust line for all: first logins match it
    assert ("warning", "provisioning_no_first_login_line") not in rows
    cluster.sql("UPDATE oauth.provisioning SET role_claim = 'preferred_username'")
    rows = {(s, c) for s, c, _f, _fix in cluster.sql("SELECT * FROM oauth.check_setup()")}
    assert ("warning", "provisioning_user_chosen_name") in rows


# -- behind a pooler: oauth.authenticate() provisions too ----------------------------


def test_a_pooled_transaction_of_a_new_user_runs_as_its_new_role(issuer):
    from test_gateway import gateway, make_gateway_cluster

    gw = make_gateway_cluster(issuer)
    try:
        gw.sql("CREATE ROLE prov_sales NOLOGIN; GRANT SELECT ON notes TO prov_sales")
        gw.sql("INSERT INTO oauth.provisioning (issuer, role_claim, role_pattern, groups_claim)"
               " VALUES (%s, 'email', %s, 'groups')",
               (issuer.issuer, r"([a-z0-9._+-]+)@prov\.example"))
        gw.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) "
               "VALUES (%s, 'sales', 'prov_sales')", (issuer.issuer,))
        name = new_name()
        tok = issuer.mint({"email": email(name), "groups": ["sales"]}, sub=f"sub-{name}")
        with gateway(gw) as conn, conn.transaction():
            assert conn.execute("SELECT oauth.authenticate(%s)", (tok,)).fetchone() == (name,)
            assert conn.execute("SELECT current_user, count(*) FROM notes "
                                "GROUP BY 1").fetchall() in ([], [(name, 0)])
            assert conn.execute("SELECT current_user").fetchone() == (name,)
        assert memberships(gw, name) == {"prov_sales"}
    finally:
        gw.stop()


def test_a_locked_catalog_refuses_in_time_and_frees_the_worker(cluster, issuer, policy):
    name = new_name()
    token = issuer.mint({"email": email(name)}, sub=f"sub-{name}")
    with cluster.admin() as dba:
        dba.execute("BEGIN")
        dba.execute("LOCK TABLE pg_catalog.pg_authid IN SHARE ROW EXCLUSIVE MODE")
        # lock_timeout of oauth._provision (2 s), well inside pg_oauth.timeout (5 s)
        assert attempt(cluster, name, token) == "provisioning_unavailable"
        dba.execute("ROLLBACK")
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=f"sub-{name}")) == "ok"
