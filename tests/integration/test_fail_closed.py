"""Fail closed when pg_oauth is missing from shared_preload_libraries: a trust line
must not become a password-less door.  See docs/security.md for what is covered."""

from __future__ import annotations

import psycopg
import pytest
from conftest import CLUSTERS
from pgcluster import Cluster


@pytest.fixture(scope="module")
def bare():
    """A cluster whose postgresql.conf forgot shared_preload_libraries."""
    c = Cluster(preload=False).init().start()
    CLUSTERS.append(c)
    c.sql("CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; "
          "CREATE ROLE carol LOGIN PASSWORD 'carol-pw'")
    yield c
    c.stop()


def test_role_guard_refuses_trust_login_without_preload(bare, issuer):
    bare.sql("ALTER ROLE alice SET session_preload_libraries = 'pg_oauth'")
    with pytest.raises(psycopg.OperationalError) as e:
        bare.token_connect("alice", issuer.mint(sub="alice")).close()
    msg = str(e.value)
    assert 'JWT authentication failed for user "alice"' in msg
    assert "reason=validator_unavailable" in msg


def test_cluster_wide_guard(bare, issuer):
    bare.sql("ALTER SYSTEM SET session_preload_libraries = 'pg_oauth'")
    bare.reload()
    try:
        with pytest.raises(psycopg.OperationalError, match="JWT authentication failed"):
            bare.token_connect("bob", issuer.mint(sub="bob")).close()
        # a session that authenticated with a real password is not affected
        assert bare.sql("SELECT current_user") == [("postgres",)]
    finally:
        bare.sql("ALTER SYSTEM RESET session_preload_libraries")
        bare.reload()


def test_guard_is_inert_when_preloaded(cluster, issuer):
    """With the library preloaded the same setting changes nothing for valid tokens."""
    cluster.sql("ALTER ROLE alice SET session_preload_libraries = 'pg_oauth'")
    try:
        with cluster.token_connect("alice", issuer.mint(sub="alice")) as conn:
            assert conn.execute("SELECT oauth.claim('sub')").fetchone()[0] == "alice"
    finally:
        cluster.sql("ALTER ROLE alice RESET session_preload_libraries")
