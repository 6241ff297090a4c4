# ruff: noqa: F811  (policy: a fixture imported from test_provisioning)
"""Attacks on provisioning (issue 23), from the security review of the feature: each
test here is one way around a promise of docs/provisioning.md, or a check that one
held.  Fixtures and helpers are test_provisioning.py's."""

from __future__ import annotations

import threading

import psycopg
import pytest
from conftest import attempt, until
from test_provisioning import audit, email, memberships, new_name, policy  # noqa: F401


def can_login(cluster, role: str) -> bool | None:
    rows = cluster.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,))
    return rows[0][0] if rows else None


# -- offboarding ---------------------------------------------------------------------


def test_offboarding_never_takes_a_role_that_just_logged_in(cluster, issuer, policy):
    """last_seen moved only once an hour, while offboard_after may be one minute:
    a user who logs in all the time was disabled (or dropped) as "not seen"."""
    name = new_name()
    sub = f"sub-{name}"

    def login() -> None:
        assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"

    cluster.sql("UPDATE oauth.provisioning SET offboard_after = '1 hour', "
                "offboard_action = 'nologin'")
    login()
    # its previous login was 50 minutes ago (not yet due), and it logs in now ...
    cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '50 minutes' "
                "WHERE rolname = %s", (name,))
    login()
    # ... then 15 minutes pass without a login: seen 15 minutes ago, not 65
    cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = last_seen - interval '15 minutes'"
                " WHERE rolname = %s", (name,))
    taken = [r for r in cluster.sql("SELECT role, action, detail FROM oauth.offboard()")
             if r[0] == name]
    assert taken == [], taken
    assert can_login(cluster, name) is True


def test_offboarding_still_takes_a_role_really_not_seen(cluster, issuer, policy):
    """The fix above must not keep roles forever: one not seen for offboard_after
    and more is disabled."""
    name = new_name()
    sub = f"sub-{name}"
    cluster.sql("UPDATE oauth.provisioning SET offboard_after = '1 hour', "
                "offboard_action = 'nologin'")
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"
    cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '2 hours' "
                "WHERE rolname = %s", (name,))
    cluster.sql("SELECT count(*) FROM oauth.offboard()")  # or the housekeeper did
    assert can_login(cluster, name) is False


def test_offboarding_leaves_a_role_with_a_live_session(cluster, issuer, policy):
    """A session still open (its token not yet expired) is a user still there: its role
    was disabled or dropped under it when offboard_after is shorter than a token's life."""
    name = new_name()
    cluster.sql("UPDATE oauth.provisioning SET offboard_after = '1 hour', "
                "offboard_action = 'drop'")
    token = issuer.mint({"email": email(name)}, sub=f"sub-{name}")
    with cluster.token_connect(name, token) as conn:
        cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '2 hours' "
                    "WHERE rolname = %s", (name,))
        cluster.sql("SELECT count(*) FROM oauth.offboard()")
        assert can_login(cluster, name) is True
        assert conn.execute("SELECT current_user").fetchone() == (name,)
    until(lambda: not cluster.sql("SELECT 1 FROM pg_stat_activity WHERE usename = %s",
                                  (name,)), timeout=20, what="the session gone")
    cluster.sql("SELECT count(*) FROM oauth.offboard()")
    assert can_login(cluster, name) is None


def test_a_cached_token_never_admits_a_later_owner_of_the_name(cluster, issuer, policy,
                                                                refused):
    """A's token is cached for role NAME; NAME is offboarded (dropped) and made again
    for subject B (an e-mail address handed on): A's token, presented again, must not
    log in as B's role from the decision cache."""
    name = new_name()
    # offboarding is set up first: a change of oauth.provisioning empties the cache
    cluster.sql("UPDATE oauth.provisioning SET offboard_after = '1 hour', "
                "offboard_action = 'drop'")
    token_a = issuer.mint({"email": email(name)}, sub=f"a-{name}")
    assert attempt(cluster, name, token_a) == "ok"
    assert attempt(cluster, name, token_a) == "ok"  # now in the decision cache
    cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - interval '2 hours' "
                "WHERE rolname = %s", (name,))
    cluster.sql("SELECT count(*) FROM oauth.offboard()")
    assert can_login(cluster, name) is None  # dropped
    token_b = issuer.mint({"email": email(name)}, sub=f"b-{name}")
    assert attempt(cluster, name, token_b) == "ok"
    assert cluster.sql("SELECT subject FROM oauth.provisioned_roles WHERE rolname = %s",
                       (name,)) == [(f"b-{name}",)]
    assert refused(name, token_a) == "provisioning_forbidden"



def test_an_advisory_lock_anyone_can_take_does_not_stall_the_workers(cluster, issuer,
                                                                     policy):
    """Logins and offboarding serialize on pg_advisory_xact_lock(1868658037,
    hashtext(role)), a key any role that can connect to pg_oauth.database may hold
    (advisory locks have no privileges), and the workers wait with lock_timeout 0: a
    held key plus two logins of that name kept both validator workers waiting for
    ever, and every other token login of the cluster timed out."""
    name = new_name()
    cluster.sql("CREATE ROLE prov_locker NOLOGIN")
    try:
        with cluster.admin() as locker:
            locker.execute("SET ROLE prov_locker")
            locker.execute("SELECT pg_advisory_lock(1868658037, hashtext(%s))", (name,))
            token = issuer.mint({"email": email(name)}, sub=f"sub-{name}")
            results: list[str] = []
            threads = [threading.Thread(target=lambda: results.append(
                attempt(cluster, name, token))) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert results == ["provisioning_unavailable"] * 2, results
            other = new_name()
            assert attempt(cluster, other, issuer.mint({"email": email(other)},
                                                        sub=f"sub-{other}")) == "ok"
            # offboarding skips a role whose key is held instead of waiting for it
            locker.execute("SELECT pg_advisory_lock(1868658037, hashtext(%s))", (other,))
            cluster.sql("UPDATE oauth.provisioning SET offboard_after = '1 hour'")
            cluster.sql("UPDATE oauth.provisioned_roles SET last_seen = now() - "
                        "interval '3 hours' WHERE rolname = %s", (other,))
            with cluster.admin() as dba:
                dba.execute("SET statement_timeout = '20s'")
                dba.execute("SELECT count(*) FROM oauth.offboard()")
            assert can_login(cluster, other) is True
            locker.execute("SELECT pg_advisory_unlock_all()")
        assert attempt(cluster, name, token) == "ok"
    finally:
        cluster.sql("DROP ROLE prov_locker")



def test_a_revoked_user_cannot_hold_up_its_revocation(cluster, issuer, policy, refused):
    """disable_on_revoke: the revocation's trigger runs ALTER ROLE ... NOLOGIN in the
    DBA's transaction.  A role may ALTER its own password: a session of the user being
    revoked that did so and stays in its transaction holds the pg_authid row, and the
    revocation waited for it (then failed, "tuple concurrently updated", if that
    transaction committed).  The revocation must go through; disabling is extra."""
    name = new_name()
    sub = f"sub-{name}"
    token = issuer.mint({"email": email(name)}, sub=sub)
    conn = cluster.token_connect(name, token)
    try:
        conn.execute("BEGIN")
        conn.execute("ALTER ROLE CURRENT_USER PASSWORD 'held-row'")
        with cluster.admin() as dba:
            dba.execute("SET statement_timeout = '15s'")
            dba.execute("SELECT oauth.revoke(subject => %s, issuer => %s)", (sub, issuer.issuer))
    finally:
        try:
            conn.close()
        except psycopg.Error:
            pass
    assert cluster.sql("SELECT count(*) FROM oauth.revocations WHERE subject = %s",
                       (sub,)) == [(1,)]
    assert refused(name, issuer.mint({"email": email(name)}, sub=sub)) == "revoked"
    cluster.sql("DELETE FROM oauth.revocations WHERE subject = %s", (sub,))


# -- group roles ---------------------------------------------------------------------


@pytest.fixture
def bridge(cluster, issuer, policy):
    """prov_bridge: NOLOGIN, no privilege, but a member of the LOGIN role prov_victim."""
    cluster.sql("CREATE ROLE prov_bridge NOLOGIN; GRANT prov_victim TO prov_bridge")
    cluster.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) "
                "VALUES (%s, 'bridge', 'prov_bridge')", (issuer.issuer,))
    yield
    for (role,) in cluster.sql("SELECT rolname FROM oauth.provisioned_roles"):
        cluster.sql(f'REVOKE prov_bridge FROM "{role}"')
    cluster.sql("DELETE FROM oauth.group_roles WHERE role = 'prov_bridge'")
    cluster.sql("DROP ROLE prov_bridge")


def test_a_group_role_that_is_a_member_of_a_login_role_is_not_granted(cluster, issuer,
                                                                     bridge):
    """Group roles are NOLOGIN because "membership would let one user act as another":
    a NOLOGIN role that is itself a member of a LOGIN role does exactly that."""
    name = new_name()
    token = issuer.mint({"email": email(name), "groups": ["bridge", "sales"]},
                        sub=f"sub-{name}")
    assert attempt(cluster, name, token) == "ok"
    assert "prov_bridge" not in memberships(cluster, name)
    assert "prov_sales" in memberships(cluster, name)
    with cluster.token_connect(name, token) as conn, pytest.raises(psycopg.Error):
        conn.execute("SET ROLE prov_victim")
    rows = {(s, c): f for s, c, f, _fix in cluster.sql("SELECT * FROM oauth.check_setup()")}
    assert "prov_bridge" in rows[("risk", "provisioning_group_role_unusable")]


def test_a_group_role_that_becomes_a_member_of_a_login_role_is_revoked(cluster, issuer,
                                                                      policy):
    name = new_name()
    sub = f"sub-{name}"
    cluster.sql("CREATE ROLE prov_later NOLOGIN")
    cluster.sql("INSERT INTO oauth.group_roles (issuer, group_pattern, role) "
                "VALUES (%s, 'later', 'prov_later')", (issuer.issuer,))
    try:
        token = issuer.mint({"email": email(name), "groups": ["later"]}, sub=sub)
        assert attempt(cluster, name, token) == "ok"
        assert "prov_later" in memberships(cluster, name)
        cluster.sql("GRANT prov_victim TO prov_later")
        token = issuer.mint({"email": email(name), "groups": ["later"], "n": 2}, sub=sub)
        assert attempt(cluster, name, token) == "ok"
        assert "prov_later" not in memberships(cluster, name)
    finally:
        cluster.sql(f'REVOKE prov_later FROM "{name}"')
        cluster.sql("DELETE FROM oauth.group_roles WHERE role = 'prov_later'")
        cluster.sql("DROP ROLE prov_later")




# -- who writes the provisioning tables ----------------------------------------------


def test_only_superusers_write_the_provisioning_tables(cluster, issuer, policy):
    """Every other table of pg_oauth has the superuser-only write guard (a role with
    pg_write_all_data, or a grant by mistake, must not steer the superuser workers):
    oauth.provisioned_roles had none, and one row there hands any existing role to a
    subject of the writer's choice (the worker even sets LOGIN on a NOLOGIN one)."""
    cluster.sql("CREATE ROLE prov_writer NOLOGIN IN ROLE pg_write_all_data")
    try:
        with pytest.raises(psycopg.Error, match="only superusers"):
            cluster.sql(
                "SET ROLE prov_writer; "
                "INSERT INTO oauth.provisioned_roles (role, rolname, issuer, subject, "
                "disabled_at, disabled_reason) SELECT oid, rolname, "
                f"'{issuer.issuer}', 'mallory', now(), 'inactive' FROM pg_roles "
                "WHERE rolname = 'prov_victim'")
        token = issuer.mint({"email": email("prov_victim")}, sub="mallory")
        assert attempt(cluster, "prov_victim", token) == "provisioning_forbidden"
        for statement in (
            "UPDATE oauth.provisioning SET member_of = '{prov_sales}' WHERE false",
            "DELETE FROM oauth.group_roles WHERE false",
            "DELETE FROM oauth.provisioned_memberships WHERE false",
        ):
            with pytest.raises(psycopg.Error, match="only superusers"):
                cluster.sql("SET ROLE prov_writer; " + statement)
    finally:
        cluster.sql("DELETE FROM oauth.provisioned_roles WHERE subject = 'mallory'")
        cluster.sql("DROP ROLE prov_writer")


def test_provisioning_triggers_fire_for_replicated_rows(cluster, issuer, policy):
    """Rows applied by logical replication (session_replication_role = replica) fire
    only ALWAYS triggers, as the other configuration tables' are: the pattern check,
    the version move and the write guard must hold for them too."""
    with pytest.raises(psycopg.Error, match="invalid row in oauth.group_roles"):
        cluster.sql("SET session_replication_role = replica; "
                    "INSERT INTO oauth.group_roles (issuer, group_pattern, role) "
                    f"VALUES ('{issuer.issuer}', '(', 'prov_sales')")
    cluster.sql("DELETE FROM oauth.group_roles WHERE group_pattern = '('")


# -- the server log --------------------------------------------------------------------


def test_a_subject_writes_no_line_of_its_own_into_the_server_log(cluster, issuer, policy,
                                                                refused):
    """The provisioning log lines and refusals printed the subject raw (the audit line
    of audit_log.c prints control characters as ?): a subject with a line break went
    on on a line of its own (PostgreSQL indents it with a tab in stderr logs; other
    destinations differ).  Low: the subject comes from the identity provider."""
    name = new_name()
    marker = f"FORGED-{name}"
    sub = f"s-{name}\n2026-12-06 00:00:00.000 UTC [1] LOG:  {marker}"
    assert attempt(cluster, name, issuer.mint({"email": email(name)}, sub=sub)) == "ok"
    # another subject asking for the same name: refused, naming the first one
    assert refused(name, issuer.mint({"email": email(name)}, sub=f"o-{name}")) == \
        "provisioning_forbidden"
    log = cluster.log_text()
    printed = f"subject s-{name}?2026-12-06 00:00:00.000 UTC [1] LOG:  {marker})"
    assert f"pg_oauth: created role {name} (issuer {issuer.issuer}, {printed}" in log
    assert f"provisioned for another subject (issuer {issuer.issuer}, {printed}" in log

# -- checks that held (regressions) --------------------------------------------------


def test_a_group_role_that_gains_a_privilege_later_is_revoked(cluster, issuer, policy):
    """Held: the target check runs on every login, and a membership pg_oauth granted
    in a role that is no longer a valid target is revoked."""
    name = new_name()
    sub = f"sub-{name}"
    token = issuer.mint({"email": email(name), "groups": ["ops"]}, sub=sub)
    assert attempt(cluster, name, token) == "ok"
    assert "prov_ops" in memberships(cluster, name)
    cluster.sql("GRANT pg_read_server_files TO prov_ops")
    try:
        token = issuer.mint({"email": email(name), "groups": ["ops"], "n": 2}, sub=sub)
        assert attempt(cluster, name, token) == "ok"
        assert "prov_ops" not in memberships(cluster, name)
    finally:
        cluster.sql("REVOKE pg_read_server_files FROM prov_ops")



# -- a careless DBA ------------------------------------------------------------------


def test_check_setup_flags_roles_named_after_an_unverified_email(cluster, issuer, policy):
    """A role named after an address nobody verified goes to whoever gets a token with
    it first (Entra ID's editable email: the nOAuth attack); check_setup flagged only
    the claims users obviously choose (preferred_username, name, ...)."""
    rows = {(s, c) for s, c, _f, _fix in cluster.sql("SELECT * FROM oauth.check_setup()")}
    assert ("warning", "provisioning_unverified_email") in rows
    (before,), = cluster.sql("SELECT required_claims FROM oauth.issuers WHERE issuer = %s",
                             (issuer.issuer,))
    cluster.sql("UPDATE oauth.issuers SET required_claims = %s WHERE issuer = %s",
                ([*(before or []), "email_verified=true"], issuer.issuer))
    try:
        rows = {(s, c) for s, c, _f, _fix in cluster.sql("SELECT * FROM oauth.check_setup()")}
        assert ("warning", "provisioning_unverified_email") not in rows
    finally:
        cluster.sql("UPDATE oauth.issuers SET required_claims = %s WHERE issuer = %s",
                    (before, issuer.issuer))
