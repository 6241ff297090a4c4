"""The per-transaction helpers (pg_oauth_client.pooled, client/node) against a real
gateway cluster: the application logs in as the gateway role, as it would through
PgBouncer, and every transaction is authenticated with an end user's token from the
dev issuer. Each helper: two subjects interleaved on one connection see only their own
rows (RLS on oauth.claim('sub')); an error inside rolls back and leaves the connection
unauthenticated; the statement log (log_statement = all) shows oauth.authenticate($1)
and never the token. The examples of docs/clients.md's "Behind a pooler" section run
as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from client_support import CLIENT_DIR, NODE_DIR, ROOT
from pg_oauth_dev.dev_issuer import DevIssuer
from pgcluster import DEFAULT_HBA, Cluster

pytestmark = [pytest.mark.server, pytest.mark.slow]

AUDIENCE = "pg-oauth-gateway"
GATEWAY_PASSWORD = "gateway-secret"
# the gateway logs in with a password, like a pooler's own role; tokens come per transaction
GATEWAY_HBA = DEFAULT_HBA.replace(
    "# token logins",
    "local   all   gateway                 scram-sha-256\n"
    "host    all   gateway  127.0.0.1/32   scram-sha-256\n"
    "# token logins",
)
EXAMPLE = re.compile(r"<!-- pooled-example: (\S+) -->\s*```(\w+)\n(.*?)```", re.DOTALL)
NODE_HELPER = CLIENT_DIR / "node"


@dataclass
class Gateway:
    cluster: Cluster
    issuer: DevIssuer
    minted: list[str] = field(default_factory=list, repr=False)  # never in a report

    def token(self, sub: str) -> str:
        token = self.issuer.mint({"sub": sub}, aud=AUDIENCE)
        self.minted.append(token)
        return token

    def conninfo(self, application_name: str) -> str:
        """The gateway role over the Unix socket, as a local PgBouncer logs in."""
        return (f"host={self.cluster.sockdir} port={self.cluster.port} dbname=postgres "
                f"user=gateway password={GATEWAY_PASSWORD} "
                f"application_name={application_name}")

    def env(self, application_name: str) -> dict[str, str]:
        """The same in libpq's variables, for the examples and node-postgres."""
        return {**os.environ, "PGHOST": str(self.cluster.sockdir),
                "PGPORT": str(self.cluster.port), "PGDATABASE": "postgres",
                "PGUSER": "gateway", "PGPASSWORD": GATEWAY_PASSWORD,
                "PGAPPNAME": application_name,
                "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), str(ROOT)])}

    def statements_of(self, application_name: str) -> list[str]:
        """What the server logged for the connections of that application_name."""
        marker = f" {application_name} LOG:  "
        return [line.split(marker, 1)[1] for line in self.cluster.log_text().splitlines()
                if marker in line]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    keys = tempfile.mkdtemp(prefix="pg_oauth-gateway-issuer-")
    issuer = DevIssuer(keys).start()
    cluster = Cluster(hba=GATEWAY_HBA, settings={
        "pg_oauth.rate_limit_failures": 0,
        "log_statement": "'all'",
        "log_line_prefix": "'%m [%p] %q%u@%d %a '",
    }).init().start()
    gw = Gateway(cluster, issuer)
    try:
        cluster.sql(f"""
            CREATE ROLE gateway LOGIN PASSWORD '{GATEWAY_PASSWORD}';
            ALTER ROLE gateway SET pg_oauth.gateway = on;
            CREATE ROLE tenant NOLOGIN;
            CREATE ROLE app LOGIN IN ROLE tenant;
            CREATE ROLE app2 LOGIN IN ROLE tenant;
            CREATE EXTENSION pg_oauth CASCADE;
            CREATE TABLE notes (id serial PRIMARY KEY, owner text NOT NULL
                                DEFAULT oauth.claim('sub'), body text);
            ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
            CREATE POLICY own ON notes USING (owner = oauth.claim('sub'))
                                        WITH CHECK (owner = oauth.claim('sub'));
            GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO tenant;
            GRANT USAGE ON SEQUENCE notes_id_seq TO tenant;
        """)
        # the dev issuer serves plain http on 127.0.0.1
        cluster.sql("INSERT INTO oauth.issuers (issuer, audiences, allow_loopback_http) "
                    "VALUES (%s, %s, true)", (issuer.issuer, [AUDIENCE]))
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) VALUES "
                    "(%s, 'sub', 'user-.*', 'app'), (%s, 'sub', 'two-.*', 'app'), "
                    "(%s, 'sub', 'two-.*', 'app2')", (issuer.issuer,) * 3)
        cluster.wait_for_workers()
        yield gw
        log = cluster.log_text()
        leaked = sum(any(part in log for part in t.split(".")[1:]) for t in gw.minted)
        assert leaked == 0, f"{leaked} token(s) appeared in the server log"
    finally:
        cluster.destroy()
        issuer.stop()
        shutil.rmtree(keys, ignore_errors=True)


def subjects() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"user-{tag}-a", f"user-{tag}-b"


def assert_token_bound(gw: Gateway, application_name: str, placeholders: str = "$1") -> None:
    """The statement log has oauth.authenticate with a placeholder, never the token."""
    logged = gw.statements_of(application_name)
    assert any(f"oauth.authenticate({placeholders})" in line for line in logged), logged
    assert not any("token_in_statement" in line for line in logged), logged
    # counted, so that a failure does not print the token
    found = sum(part in line for token in gw.minted for part in token.split(".")[1:]
                for line in logged)
    assert found == 0, f"a token in {found} logged statement(s) of {application_name}"


REFUSED = (psycopg.errors.InsufficientPrivilege, "before oauth.authenticate")


# -- psycopg: pooled.transaction ----------------------------------------------------

def test_psycopg_subjects_interleaved_on_one_connection_see_their_own_rows(gateway):
    from pg_oauth_client import pooled

    a, b = subjects()
    tokens = {a: gateway.token(a), b: gateway.token(b)}
    with psycopg.connect(gateway.conninfo("psycopg-helper"), prepare_threshold=None) as conn:
        pids = set()
        for sub in (a, b, a):
            with pooled.transaction(conn, tokens[sub]) as role:
                assert role == "app"
                conn.execute("INSERT INTO notes (body) VALUES (%s)", (f"note of {sub}",))
                pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        for sub in (a, b):
            with pooled.transaction(conn, tokens[sub]):
                assert conn.execute("SELECT current_user, session_user, oauth.claim('sub')"
                                    ).fetchone() == ("app", "gateway", sub)
                rows = conn.execute("SELECT owner, body FROM notes").fetchall()
                assert rows == [(sub, f"note of {sub}")] * (2 if sub == a else 1)
        assert len(pids) == 1
        # between the helper's transactions the server runs nothing
        with pytest.raises(REFUSED[0], match=REFUSED[1]):
            conn.execute("SELECT count(*) FROM notes")
    assert_token_bound(gateway, "psycopg-helper")


def test_psycopg_an_error_inside_rolls_back_and_the_next_transaction_is_unauthenticated(
        gateway):
    from pg_oauth_client import pooled

    sub, _ = subjects()
    token = gateway.token(sub)
    with psycopg.connect(gateway.conninfo("psycopg-helper")) as conn:
        with pytest.raises(ZeroDivisionError), pooled.transaction(conn, token):
            conn.execute("INSERT INTO notes (body) VALUES ('rolled back')")
            1 / 0  # noqa: B018
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with conn.transaction(), pytest.raises(REFUSED[0], match=REFUSED[1]):
            conn.execute("SELECT current_user")
        # psycopg.Rollback ends the block quietly, rolled back too
        with pooled.transaction(conn, token):
            conn.execute("INSERT INTO notes (body) VALUES ('also rolled back')")
            raise psycopg.Rollback
        with pooled.transaction(conn, token):
            assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_psycopg_token_from_the_context_and_a_role_picked(gateway):
    from pg_oauth_client import NoTokenError, pooled

    sub, _ = subjects()
    with psycopg.connect(gateway.conninfo("psycopg-helper")) as conn:
        with pooled.using_token(gateway.token(sub)), pooled.transaction(conn) as role:
            assert conn.execute("SELECT oauth.claim('sub')").fetchone() == (sub,)
        assert role == "app"
        assert pooled.current_end_user() is None
        with pytest.raises(NoTokenError, match="no end-user token"), \
                pooled.transaction(conn):
            pass
        two = gateway.token(f"two-{uuid.uuid4().hex[:8]}")
        with pooled.transaction(conn, two, role="app2") as role:
            assert conn.execute("SELECT current_user").fetchone() == ("app2",)
        assert role == "app2"
        with pooled.using_token(two, role="app2"), pooled.transaction(conn) as role:
            assert role == "app2"
    assert_token_bound(gateway, "psycopg-helper", "$1, $2")


def test_psycopg_the_token_is_bound_even_with_client_side_cursors(gateway):
    from pg_oauth_client import pooled

    sub, _ = subjects()
    with psycopg.connect(gateway.conninfo("psycopg-client-cursor"),
                         cursor_factory=psycopg.ClientCursor) as conn, \
            pooled.transaction(conn, gateway.token(sub)):
        assert conn.execute("SELECT oauth.claim('sub')").fetchone() == (sub,)
    assert_token_bound(gateway, "psycopg-client-cursor")


def test_psycopg_a_refused_token_raises_the_servers_error_and_the_connection_lives_on(
        gateway):
    from pg_oauth_client import pooled

    sub, _ = subjects()
    expired = gateway.issuer.mint({"sub": sub}, aud=AUDIENCE, now=0)
    gateway.minted.append(expired)
    with psycopg.connect(gateway.conninfo("psycopg-helper")) as conn:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification,
                           match="reason=expired"), pooled.transaction(conn, expired):
            pytest.fail("the block ran with a refused token")
        with pooled.transaction(conn, gateway.token(sub)) as role:
            assert role == "app"


def test_psycopg_a_connection_inside_a_transaction_is_refused(gateway):
    from pg_oauth_client import pooled

    sub, _ = subjects()
    with psycopg.connect(gateway.conninfo("psycopg-helper")) as conn:
        conn.execute("SELECT 1")  # psycopg began a transaction
        with pytest.raises(psycopg.ProgrammingError, match="outside any transaction"), \
                pooled.transaction(conn, gateway.token(sub)):
            pass


# -- psycopg_pool: pooled.GatewayPool -----------------------------------------------

def test_gateway_pool_of_one_interleaves_subjects_and_prepares_nothing(gateway):
    from pg_oauth_client import NoTokenError, pooled

    a, b = subjects()
    tokens = {a: gateway.token(a), b: gateway.token(b)}
    with pooled.GatewayPool(gateway.conninfo("psycopg-pool-helper"), min_size=1,
                            max_size=1) as pool:
        pids = set()
        for sub in (a, b, a, b):
            with pooled.using_token(tokens[sub]), pool.connection() as conn:
                assert conn.prepare_threshold is None
                conn.execute("INSERT INTO notes (body) VALUES (%s)", (f"note of {sub}",))
                pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        for sub in (a, b):
            # the token as an argument works as well
            with pool.connection(token=tokens[sub]) as conn:
                for _ in range(10):  # psycopg would prepare it from the 5th time on
                    owners = conn.execute("SELECT DISTINCT owner FROM notes").fetchall()
                assert owners == [(sub,)]
                assert conn.execute("SELECT count(*) FROM pg_prepared_statements"
                                    ).fetchone() == (0,)
        assert len(pids) == 1

        with pytest.raises(RuntimeError, match="boom"), \
                pool.connection(token=tokens[a]) as conn:
            conn.execute("INSERT INTO notes (body) VALUES ('rolled back')")
            raise RuntimeError("boom")
        # the same (only) connection, taken without the helper: not authenticated
        conn = pool.getconn()
        try:
            with pytest.raises(REFUSED[0], match=REFUSED[1]):
                conn.execute("SELECT body FROM notes")
            conn.rollback()
        finally:
            pool.putconn(conn)
        with pool.connection(token=tokens[a]) as conn:
            assert conn.execute("SELECT count(*) FROM notes WHERE body = 'rolled back'"
                                ).fetchone() == (0,)
        with pytest.raises(NoTokenError), pool.connection():
            pass
        assert pool.get_stats().get("requests_num", 0) >= 1
    assert_token_bound(gateway, "psycopg-pool-helper")


def test_gateway_pool_keeps_a_prepare_threshold_that_was_chosen(gateway):
    from pg_oauth_client import pooled

    sub, _ = subjects()
    with pooled.GatewayPool(gateway.conninfo("psycopg-pool-helper"), min_size=1,
                            max_size=1, kwargs=lambda: {"prepare_threshold": 7}) as pool, \
            pool.connection(token=gateway.token(sub)) as conn:
        assert conn.prepare_threshold == 7


# -- SQLAlchemy: pooled.authenticate_on_begin -----------------------------------------

def _engine(gateway: Gateway, application_name: str):
    from sqlalchemy import create_engine
    from sqlalchemy.engine import URL

    url = URL.create("postgresql+psycopg", username="gateway", password=GATEWAY_PASSWORD,
                     database="postgres",
                     query={"host": str(gateway.cluster.sockdir),
                            "port": str(gateway.cluster.port),
                            "application_name": application_name})
    return create_engine(url, pool_size=1, max_overflow=0)


def test_sqlalchemy_subjects_interleaved_on_one_connection_see_their_own_rows(gateway):
    from pg_oauth_client import NoTokenError, pooled
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    a, b = subjects()
    tokens = {a: gateway.token(a), b: gateway.token(b)}
    engine = pooled.authenticate_on_begin(_engine(gateway, "sqlalchemy-helper"))
    try:
        pids = set()
        # the first connection: the dialect's own questions are authenticated too
        for sub in (a, b, a):
            with pooled.using_token(tokens[sub]), engine.begin() as conn:
                conn.execute(text("INSERT INTO notes (body) VALUES (:body)"),
                             {"body": f"note of {sub}"})
                pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar())
                assert conn.connection.driver_connection.prepare_threshold is None
        for sub in (a, b):
            with pooled.using_token(tokens[sub]), Session(engine) as session:
                rows = session.execute(text("SELECT owner, body FROM notes")).all()
                assert rows == [(sub, f"note of {sub}")] * (2 if sub == a else 1)
                assert session.execute(text("SELECT current_user")).scalar() == "app"
        assert len(pids) == 1

        with pytest.raises(RuntimeError, match="boom"), pooled.using_token(tokens[a]), \
                engine.begin() as conn:
            conn.execute(text("INSERT INTO notes (body) VALUES ('rolled back')"))
            raise RuntimeError("boom")
        # a transaction begun with no token: refused before it reaches the server
        with pytest.raises(NoTokenError), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        # the same (only) DBAPI connection, used without SQLAlchemy: not authenticated
        raw = engine.raw_connection()
        try:
            with pytest.raises(REFUSED[0], match=REFUSED[1]):
                raw.cursor().execute("SELECT body FROM notes")
            raw.rollback()
        finally:
            raw.close()
        with pooled.using_token(tokens[a]), engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM notes WHERE body = 'rolled back'")
                                ).scalar() == 0
    finally:
        engine.dispose()
    assert_token_bound(gateway, "sqlalchemy-helper")


def test_sqlalchemy_a_refused_token_raises_the_servers_error_and_the_connection_lives_on(
        gateway):
    from pg_oauth_client import pooled
    from sqlalchemy import exc, text

    sub, _ = subjects()
    expired = gateway.issuer.mint({"sub": sub}, aud=AUDIENCE, now=0)
    gateway.minted.append(expired)
    engine = pooled.authenticate_on_begin(_engine(gateway, "sqlalchemy-helper"))
    try:
        with pooled.using_token(gateway.token(sub)), engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with pytest.raises(exc.DBAPIError, match="reason=expired") as excinfo, \
                pooled.using_token(expired), engine.begin():
            pytest.fail("the block ran with a refused token")
        assert isinstance(excinfo.value.orig, psycopg.errors.InvalidAuthorizationSpecification)
        with pooled.using_token(gateway.token(sub)), engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
    finally:
        engine.dispose()


def test_sqlalchemy_first_connection_without_a_token_is_a_clear_error(gateway):
    from pg_oauth_client import NoTokenError, pooled
    from sqlalchemy import text

    engine = pooled.authenticate_on_begin(_engine(gateway, "sqlalchemy-first"))
    try:
        with pytest.raises(NoTokenError, match="first connection"):
            engine.connect()
        two = gateway.token(f"two-{uuid.uuid4().hex[:8]}")
        with pooled.using_token(two, role="app2"), engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == "app2"
    finally:
        engine.dispose()
    assert_token_bound(gateway, "sqlalchemy-first", "$1, $2")


def test_sqlalchemy_async_engine(gateway):
    import asyncio

    from pg_oauth_client import pooled
    from sqlalchemy import text
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import create_async_engine

    a, b = subjects()
    tokens = {a: gateway.token(a), b: gateway.token(b)}
    url = URL.create("postgresql+psycopg", username="gateway", password=GATEWAY_PASSWORD,
                     database="postgres",
                     query={"host": str(gateway.cluster.sockdir),
                            "port": str(gateway.cluster.port),
                            "application_name": "sqlalchemy-async"})

    async def interleaved() -> list[tuple[str, int, object]]:
        engine = pooled.authenticate_on_begin(
            create_async_engine(url, pool_size=1, max_overflow=0))
        seen = []
        try:
            for sub in (a, b, a):
                with pooled.using_token(tokens[sub]):
                    async with engine.begin() as conn:
                        await conn.execute(text("INSERT INTO notes (body) VALUES ('n')"))
                        row = (await conn.execute(text(
                            "SELECT oauth.claim('sub'), pg_backend_pid(), "
                            "(SELECT count(*) FROM notes)"))).one()
                        raw = await conn.get_raw_connection()
                        seen.append((*row, raw.driver_connection.prepare_threshold))
        finally:
            await engine.dispose()
        return seen

    seen = asyncio.run(interleaved())
    assert [(sub, count) for sub, _, count, _ in seen] == [(a, 1), (b, 1), (a, 2)]
    assert len({pid for _, pid, _, _ in seen}) == 1
    assert {threshold for *_, threshold in seen} == {None}
    assert_token_bound(gateway, "sqlalchemy-async")


# -- node-postgres: client/node ------------------------------------------------------

NODE_SCRIPT = """
import pg from 'pg';
import { authenticatedTransaction, withToken } from 'pg-oauth-client';

const tokens = { a: process.env.TOKEN_A, b: process.env.TOKEN_B };
const pool = new pg.Pool({ max: 1 });
const pids = new Set();
for (const who of ['a', 'b', 'a']) {
  await withToken(pool, tokens[who], async (client) => {
    await client.query('INSERT INTO notes (body) VALUES ($1)', [`note of ${who}`]);
    pids.add((await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
  });
}
const seen = {};
for (const who of ['a', 'b']) {
  seen[who] = await withToken(pool, tokens[who], async (client, role) => {
    const { rows } = await client.query('SELECT owner, body FROM notes ORDER BY id');
    return { role, rows: rows.map((r) => [r.owner, r.body]) };
  });
}
let failed = null;
try {
  await withToken(pool, tokens.a, async (client) => {
    await client.query("INSERT INTO notes (body) VALUES ('rolled back')");
    throw new Error('boom');
  });
} catch (error) {
  failed = error.message;
}
// the same (only) connection, taken without the helper: not authenticated
const bare = await pool.connect();
let after = null;
try {
  await bare.query('SELECT body FROM notes');
} catch (error) {
  after = error.message;
}
bare.release();
const rolledBack = await withToken(pool, tokens.a, async (client) =>
  (await client.query("SELECT count(*)::int AS n FROM notes WHERE body = 'rolled back'")).rows[0].n);
const picked = await withToken(pool, process.env.TOKEN_TWO, async (client, role) => role,
                               { role: 'app2' });
let noToken = null;
try {
  await withToken(pool, undefined, async () => null);
} catch (error) {
  noToken = error.message;
}
await pool.end();
const single = new pg.Client();
await single.connect();
const onClient = await authenticatedTransaction(single, tokens.b, async (client) =>
  (await client.query("SELECT oauth.claim('sub') AS sub")).rows[0].sub);
await single.end();
console.log(JSON.stringify({ pids: pids.size, seen, failed, after, rolledBack, picked,
                             noToken, onClient }));
"""


def node_modules(directory: Path) -> None:
    """What `npm install ./client/node pg` would give an application."""
    modules = directory / "node_modules"
    modules.mkdir()
    (modules / "pg").symlink_to(NODE_DIR / "node_modules" / "pg")
    (modules / "pg-oauth-client").symlink_to(NODE_HELPER)


def run_node(script: str, directory: Path, env: dict[str, str]) -> str:
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        pytest.fail("tests/client/node/node_modules is missing: make node-deps")
    path = directory / "script.mjs"
    path.write_text(script)
    done = subprocess.run(["node", str(path)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=directory, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_node_subjects_interleaved_on_one_connection_see_their_own_rows(gateway, tmp_path):
    a, b = subjects()
    two = f"two-{uuid.uuid4().hex[:8]}"
    node_modules(tmp_path)
    env = {**gateway.env("node-helper"), "TOKEN_A": gateway.token(a),
           "TOKEN_B": gateway.token(b), "TOKEN_TWO": gateway.token(two)}
    out = json.loads(run_node(NODE_SCRIPT, tmp_path, env))
    assert out["pids"] == 1
    assert out["seen"] == {
        "a": {"role": "app", "rows": [[a, "note of a"], [a, "note of a"]]},
        "b": {"role": "app", "rows": [[b, "note of b"]]},
    }
    assert out["failed"] == "boom"
    assert "before oauth.authenticate" in out["after"]
    assert out["rolledBack"] == 0
    assert out["picked"] == "app2"
    assert "no end-user token" in out["noToken"]
    assert out["onClient"] == b
    assert_token_bound(gateway, "node-helper")
    assert_token_bound(gateway, "node-helper", "$1, $2")


# -- the documentation's examples ------------------------------------------------------

def pooled_examples() -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    return {name: (lang, code) for name, lang, code in EXAMPLE.findall(text)}


def test_every_pooled_example_is_tested():
    assert set(pooled_examples()) == {"psycopg", "psycopg_pool", "sqlalchemy",
                                      "node-postgres"}


@pytest.mark.parametrize("name", ["psycopg", "psycopg_pool", "sqlalchemy", "node-postgres"])
def test_pooled_example_runs(name, gateway, tmp_path):
    lang, code = pooled_examples()[name]
    sub, _ = subjects()
    application_name = f"example-{name}"
    env = {**gateway.env(application_name), "END_USER_TOKEN": gateway.token(sub)}
    if lang == "python":
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stderr
        out = done.stdout
    else:
        assert lang == "js"
        node_modules(tmp_path)
        out = run_node(code, tmp_path, env)
    assert out.split()[:2] == ["app", sub], out
    assert_token_bound(gateway, application_name)
