"""Configuration lives only in pg_oauth.database; elsewhere the extension gives the
session functions and refuses to look like configuration.  The decision cache never
admits what a worker would now refuse, whatever skipped the triggers (issue 9)."""

from __future__ import annotations

import psycopg
import pytest
from conftest import make_cluster, refusal, setup_oauth, until


@pytest.fixture(scope="module")
def app_db(cluster):
    cluster.sql("DROP DATABASE IF EXISTS app")
    cluster.sql("CREATE DATABASE app")
    cluster.sql("CREATE EXTENSION pg_oauth CASCADE", dbname="app")
    yield "app"
    cluster.sql("DROP DATABASE app WITH (FORCE)")


def test_client_example_works_in_an_application_database(cluster, issuer, app_db):
    token = issuer.mint(sub="alice", email="alice@example.com",
                        realm_access={"roles": ["reader"]})
    with cluster.token_connect("alice", token, dbname=app_db) as conn:
        assert conn.execute("SELECT current_user, oauth.claim('email'), "
                            "oauth.claim('realm_access.roles'), (oauth.session()).subject"
                            ).fetchone() == ("alice", "alice@example.com", '["reader"]', "alice")


@pytest.mark.parametrize("statement", [
    "INSERT INTO oauth.issuers (issuer, audiences) VALUES ('https://x.example', '{a}')",
    "INSERT INTO oauth.revocations (subject) VALUES ('alice')",
    "DELETE FROM oauth.role_map",
    "TRUNCATE oauth.revocations",
    "SELECT oauth.revoke(subject => 'alice')",
    "SELECT * FROM oauth.explain('a.b.c', 'alice')",
])
@pytest.mark.parametrize("replica", [False, True])
def test_configuration_outside_its_database_is_an_error(cluster, app_db, statement, replica):
    with cluster.admin(app_db) as conn:
        if replica:  # how logical replication and pg_restore --disable-triggers write rows
            conn.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as excinfo:
            conn.execute(statement)
    assert 'lives in database "postgres"' in str(excinfo.value)


def test_revoke_in_an_application_database_does_not_pretend(cluster, issuer, app_db):
    """The reviewer's case: revoke in app said 1, and the token logged in again."""
    token = issuer.mint(sub="alice", jti="app-revoke")
    cluster.token_connect("alice", token).close()
    with pytest.raises(psycopg.Error):
        cluster.sql("SELECT oauth.revoke(token_id => 'app-revoke')", dbname=app_db)
    cluster.token_connect("alice", token).close()  # nothing was revoked, nothing claimed so
    assert cluster.sql("SELECT oauth.revoke(token_id => 'app-revoke')") == [(0,)]
    with pytest.raises(psycopg.OperationalError) as excinfo:
        cluster.token_connect("alice", token).close()
    assert refusal(excinfo) == "revoked"


# -- the decision cache follows every change ---------------------------------------

@pytest.fixture(scope="module")
def own(issuer):
    """A cluster of this module's own: these tests take its configuration apart."""
    c = make_cluster(issuer)
    yield c
    c.stop()


def admitted_twice(cluster, token, role="alice"):
    """Log in twice: the second login is answered by the decision cache."""
    for _ in range(2):
        cluster.token_connect(role, token).close()


def refused_reason(cluster, token, role="alice"):
    with pytest.raises(psycopg.OperationalError) as excinfo:
        cluster.token_connect(role, token).close()
    return refusal(excinfo)


def test_cache_sees_rows_written_as_replication_applies_them(own, issuer):
    token = issuer.mint(sub="alice", jti="cache-replica")
    admitted_twice(own, token)
    with own.admin() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO oauth.revocations (token_id) VALUES ('cache-replica')")
    assert refused_reason(own, token) == "revoked"


def test_cache_sees_rows_written_with_triggers_disabled(own, issuer):
    token = issuer.mint(sub="alice", jti="cache-disabled")
    admitted_twice(own, token)
    own.sql("ALTER TABLE oauth.revocations DISABLE TRIGGER ALL")
    try:
        admitted_twice(own, token)  # disabling alone changes nothing a token depends on
        own.sql("INSERT INTO oauth.revocations (token_id) VALUES ('cache-disabled')")
        assert refused_reason(own, token) == "revoked"
    finally:
        own.sql("ALTER TABLE oauth.revocations ENABLE TRIGGER ALL")


def test_cache_sees_truncate_without_triggers(own, issuer):
    token = issuer.mint(sub="bob", jti="cache-truncate")
    admitted_twice(own, token, role="bob")
    rules = own.sql("SELECT issuer, claim, pattern, role FROM oauth.role_map")
    with own.admin() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE oauth.role_map")
    try:
        assert refused_reason(own, token, role="bob") == "role_not_allowed"
    finally:
        for row in rules:
            own.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, %s, %s, %s)", row)
    admitted_twice(own, token, role="bob")


def test_cache_does_not_outlive_the_extension(own, issuer):
    token = issuer.mint(sub="alice", jti="cache-drop")
    admitted_twice(own, token)
    own.sql("DROP EXTENSION pg_oauth")
    assert refused_reason(own, token).startswith("validator_")
    # and everything comes back with the extension
    own.sql("DROP ROLE alice, bob, carol, su")
    setup_oauth(own, issuer.issuer)
    own.wait_for_workers()
    admitted_twice(own, token)


# -- the owner of pg_oauth.database closes it (issue 19, finding 5) -----------------

@pytest.fixture(scope="module")
def closed(issuer):
    """A server whose configuration database's non-superuser owner set
    ALLOW_CONNECTIONS false, restarted since."""
    c = make_cluster(issuer)
    c.sql("CREATE ROLE cfg_owner NOLOGIN")
    c.sql("CREATE DATABASE app")
    c.sql("CREATE EXTENSION pg_oauth CASCADE", dbname="app")
    c.sql("ALTER DATABASE postgres OWNER TO cfg_owner")
    with c.admin("app") as conn:
        conn.execute("SET ROLE cfg_owner")          # the owner's own right, no superuser
        conn.execute("ALTER DATABASE postgres ALLOW_CONNECTIONS false")
    c.restart()
    yield c
    c.sql("ALTER DATABASE postgres ALLOW_CONNECTIONS true", dbname="app")
    c.stop()


def test_token_login_works_when_the_owner_closes_the_configuration_database(closed, issuer):
    """The workers connect regardless of datallowconn (BGWORKER_BYPASS_ALLOWCONN)."""
    token = issuer.mint(sub="alice")

    def login() -> str:
        try:
            with closed.token_connect("alice", token, dbname="app") as conn:
                return conn.execute("SELECT current_user").fetchone()[0]
        except psycopg.OperationalError as exc:
            if "validator_unavailable" in str(exc):   # workers still starting
                return ""
            raise

    assert until(login, timeout=30, what="a token login after the restart") == "alice"


def test_check_setup_names_a_closed_configuration_database(closed):
    rows = closed.sql("SELECT severity, check_name, finding FROM oauth.check_setup()",
                      dbname="app")
    names = {r[1]: r for r in rows}
    assert "config_database_closed" in names, rows
    assert names["config_database_closed"][0] == "risk"
    owner = names["config_database_owner"][2]
    assert "rename" in owner and "cfg_owner" in owner, owner
