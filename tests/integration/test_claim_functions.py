"""oauth.claim_array and oauth.claim_contains ("any of my groups"), the RLS recipes of
docs/rls.md, and the claim functions' per-call-site cache."""

from __future__ import annotations

import psycopg
import pytest

CLAIMS = {
    "groups": ["dba", "analysts", "dba"],
    "tenant_id": "acme",
    "org": {"teams": ["red", 7, None, True, {"x": 1}], "id": 42},
    "https://example.com/roles": ["a.b"],
    "empty": [],
    "nothing": None,
}


@pytest.fixture(scope="module")
def session(cluster, issuer):
    conn = cluster.token_connect("alice", issuer.mint(CLAIMS, sub="alice"))
    yield conn
    conn.close()


def one(conn: psycopg.Connection, query: str, *params):
    return conn.execute(query, params).fetchone()[0]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("groups", ["dba", "analysts", "dba"]),
        ("tenant_id", ["acme"]),
        ("org.teams", ["red", "7", None, "true", '{"x": 1}']),
        ("org.id", ["42"]),
        ("org", ['{"id": 42, "teams": ["red", 7, null, true, {"x": 1}]}']),
        ("https://example.com/roles", ["a.b"]),
        ("empty", []),
        ("nothing", None),
        ("absent", None),
        ("org.absent", None),
    ],
)
def test_claim_array(session, path, expected):
    assert one(session, "SELECT oauth.claim_array(%s)", path) == expected


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("groups", "dba", True),
        ("groups", "analysts", True),
        ("groups", "DBA", False),
        ("groups", "db", False),
        ("tenant_id", "acme", True),
        ("org.teams", "7", True),
        ("org.teams", "red", True),
        ("empty", "", False),
        ("nothing", "", False),
        ("absent", "dba", False),
    ],
)
def test_claim_contains(session, path, value, expected):
    assert one(session, "SELECT oauth.claim_contains(%s, %s)", path, value) is expected


def test_one_call_site_with_many_paths(session):
    """Each call site caches its last answer: another path (row by row) is looked up."""
    rows = session.execute(
        "SELECT oauth.claim(p), oauth.claim_array(p), oauth.claim_contains(p, 'dba') "
        "FROM unnest(ARRAY['groups', 'tenant_id', 'groups', 'absent', 'org.id']) "
        "WITH ORDINALITY AS t(p, n) ORDER BY n").fetchall()
    assert rows == [
        ('["dba", "analysts", "dba"]', ["dba", "analysts", "dba"], True),
        ("acme", ["acme"], False),
        ('["dba", "analysts", "dba"]', ["dba", "analysts", "dba"], True),
        (None, None, False),
        ("42", ["42"], False),
    ]


def test_not_a_token_session(cluster):
    with cluster.admin() as conn:
        assert one(conn, "SELECT oauth.claim_array('groups')") is None
        assert one(conn, "SELECT oauth.claim_contains('groups', 'dba')") is False


def test_rls_recipes_any_of_my_groups(cluster, issuer):
    """docs/rls.md: tenant by a scalar subquery, "any of my groups" three ways."""
    cluster.sql("""
        CREATE TABLE group_docs (group_id text NOT NULL, tenant_id text NOT NULL,
                                 doc text NOT NULL);
        INSERT INTO group_docs VALUES ('dba', 'acme', 'runbook'),
            ('analysts', 'acme', 'dashboards'), ('dba', 'globex', 'other runbook'),
            ('sales', 'acme', 'pipeline');
        ALTER TABLE group_docs ENABLE ROW LEVEL SECURITY;
        GRANT SELECT ON group_docs TO alice, bob;
    """)
    policies = {
        "any": "group_id = ANY ((SELECT oauth.claim_array('groups'))::text[])",
        "any_per_row": "group_id = ANY (oauth.claim_array('groups'))",
        "contains": "oauth.claim_contains('groups', group_id)",
    }
    try:
        token = issuer.mint({"groups": ["dba", "analysts"], "tenant_id": "acme"}, sub="alice")
        for name, predicate in policies.items():
            cluster.sql(f"""
                DROP POLICY IF EXISTS groups ON group_docs;
                CREATE POLICY groups ON group_docs
                    USING (tenant_id = (SELECT oauth.claim('tenant_id')) AND {predicate});
            """)
            with cluster.token_connect("alice", token) as conn:
                docs = sorted(r[0] for r in conn.execute("SELECT doc FROM group_docs"))
                assert docs == ["dashboards", "runbook"], name
            with cluster.token_connect("bob", issuer.mint(sub="bob")) as conn:
                assert conn.execute("SELECT count(*) FROM group_docs").fetchone()[0] == 0, name
    finally:
        cluster.sql("DROP TABLE group_docs")
