"""The client's subcommands as this tree's client/pyproject.toml registers them, for a
test venv whose pg-oauth-client was installed from an older tree: a dist-info directory
to put first on PYTHONPATH (pg_oauth_command takes the first registration of a name)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from client_support import CLIENT_DIR


def tree_entry_points(directory: Path) -> Path:
    """Write pg_oauth_client's dist-info under ``directory``; returns ``directory``."""
    project = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())["project"]
    info = directory / "pg_oauth_client-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return directory
