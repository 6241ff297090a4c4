"""A node-postgres application's directory for the client tests: node_modules as
`npm install pg ./client/node` makes it (pg, and pg-oauth-client linked to client/node),
and a script run there with node."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from client_support import CLIENT_DIR, NODE_DIR


def node_modules(directory: Path) -> None:
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        pytest.fail("tests/client/node/node_modules is missing: make node-deps")
    modules = directory / "node_modules"
    modules.mkdir(exist_ok=True)
    for name, target in (("pg", NODE_DIR / "node_modules" / "pg"),
                         ("pg-oauth-client", CLIENT_DIR / "node")):
        if not (modules / name).exists():
            (modules / name).symlink_to(target)


def run_node(script: str, directory: Path, env: dict[str, str], *, name: str = "app.js",
             esm: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run script as directory/name: CommonJS, or an ES module by the directory's
    package.json ("type": "module"), as an application would have it; no .mjs."""
    node_modules(directory)
    if esm:
        (directory / "package.json").write_text('{"type": "module"}\n')
    (directory / name).write_text(script)
    return subprocess.run(["node", name], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=directory, check=False)
