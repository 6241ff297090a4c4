"""Every example marked ``<!-- example: NAME -->`` in docs/clients.md and the README runs
as written, against the test IdP and database, with the profile ``prod`` (client
credentials) and the server in the usual PG* variables. Plus: a pool that opens a
connection hours later gets a token valid then."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from client_support import NODE_DIR, ROOT, ClientEnv, device_sign_in
from node_app import node_modules

EXAMPLE = re.compile(r"<!-- example: (\S+) -->\s*```(\w+)\n(.*?)```", re.DOTALL)
SOURCES = (ROOT / "docs" / "clients.md", ROOT / "README.md")


def examples() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for path in SOURCES:
        for name, lang, code in EXAMPLE.findall(path.read_text(encoding="utf-8")):
            assert name not in found, f"example {name} twice"
            found[name] = (lang, code)
    return found


EXPECTED = {"psql", "psycopg", "psycopg_pool", "sqlalchemy", "asyncpg", "node-postgres",
            "readme-psql", "readme-psycopg"}


def test_every_example_is_tested() -> None:
    assert set(examples()) == EXPECTED


def _user_env(client: ClientEnv, tmp_path: Path) -> dict[str, str]:
    """A user's shell: pg-oauth on PATH, the server in PG* variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "pg-oauth"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pg_oauth_client "$@"\n')
    shim.chmod(0o755)
    env = dict(client.env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.update(PGUSER="svc", PGSSLMODE="verify-full")
    return env


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, client: ClientEnv, tmp_path: Path) -> None:
    lang, code = examples()[name]
    env = _user_env(client, tmp_path)
    if lang == "sh":
        cmd = ["sh", "-c", code]
    elif lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        assert lang == "js"
        script = tmp_path / "example.js"  # a plain .js file: CommonJS
        script.write_text(code)
        node_modules(tmp_path)  # pg, and pg-oauth-client (client/node)
        cmd = ["node", str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].strip("(',") == "svc", done.stdout
    if name == "readme-psycopg":
        assert "svc-basic" in done.stdout


def test_pool_connection_opened_hours_later_gets_a_fresh_token(
        client: ClientEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from pg_oauth_client import psycopg_pool_kwargs
    from psycopg_pool import ConnectionPool

    for key, value in _user_env(client, Path(client.cache).parent).items():
        monkeypatch.setenv(key, value)
    query = "SELECT current_user, (oauth.session()).token_id"
    with ConnectionPool("", kwargs=psycopg_pool_kwargs("prod"), min_size=1, max_size=1,
                        open=True) as pool:
        with pool.connection() as conn:
            user, first_jti = conn.execute(query).fetchone()
            client.age_cache("prod")  # ... hours later
            conn.close()  # given back closed, the pool replaces it with a new connection
        with pool.connection() as conn:
            user2, second_jti = conn.execute(query).fetchone()
    assert user == user2 == "svc"
    assert first_jti != second_jti


def test_async_sqlalchemy_and_asyncpg_pool(client: ClientEnv,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import asyncpg
    from pg_oauth_client import async_token_provider, sqlalchemy_token
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    for key, value in _user_env(client, Path(client.cache).parent).items():
        monkeypatch.setenv(key, value)

    async def both() -> tuple[str, str]:
        pool = await asyncpg.create_pool(password=async_token_provider("prod"), min_size=2,
                                         max_size=2)
        try:
            via_pool = await pool.fetchval("SELECT current_user")
        finally:
            await pool.close()
        engine = sqlalchemy_token(create_async_engine("postgresql+asyncpg://"), "prod")
        try:
            async with engine.connect() as conn:
                via_engine = (await conn.execute(text("SELECT current_user"))).scalar()
        finally:
            await engine.dispose()
        return via_pool, via_engine

    assert asyncio.run(both()) == ("svc", "svc")


def test_wrong_profile_in_a_driver_is_one_clear_error(client: ClientEnv,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pg_oauth_client import ClientError, get_token

    monkeypatch.setenv("PG_OAUTH_CONFIG", str(client.config))
    monkeypatch.setenv("PG_OAUTH_CACHE_DIR", str(client.cache))
    with pytest.raises(ClientError, match="no profile 'nope'"):
        psycopg.connect(password=get_token("nope"))


NODE_LOGIN = """
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pg from 'pg';
const run = promisify(execFile);
const password = async () => (await run('pg-oauth', ['token', '--profile', 'dev'])).stdout.trim();
const client = new pg.Client({ password });
await client.connect();
const { rows } = await client.query("SELECT current_user, oauth.claim('email') AS email");
console.log(rows[0].current_user, rows[0].email);
await client.end();
"""


def test_device_flow_token_with_every_driver(client: ClientEnv, idp, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A person signs in once (device flow, approved over HTTP); psql, psycopg, asyncpg
    and node-postgres then log in as that person with tokens from pg-oauth."""
    import asyncio

    import asyncpg
    from pg_oauth_client import async_token_provider, get_token

    done, _ = device_sign_in(client, idp, "dev", login="alice",
                             command=("psql", "--", "-XtA", "-c", "SELECT current_user"))
    assert done.returncode == 0 and done.stdout.strip() == "alice", done.stderr

    env = {**_user_env(client, tmp_path), "PGUSER": "alice"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with psycopg.connect(password=get_token("dev", interactive=False)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)

    async def via_asyncpg() -> str:
        conn = await asyncpg.connect(password=async_token_provider("dev"))
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == "alice"

    script = tmp_path / "login.mjs"
    script.write_text(NODE_LOGIN)
    (tmp_path / "node_modules").symlink_to(NODE_DIR / "node_modules")
    node = subprocess.run(["node", str(script)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, check=False)
    assert node.returncode == 0, node.stderr
    assert node.stdout.split() == ["alice", "alice@example.com"]
