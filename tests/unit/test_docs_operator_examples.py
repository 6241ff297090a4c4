"""The README's, the DBA guide's and the cookbook's ``pg-oauth explain``/``check``/
``doctor`` examples connect the way the DBA guide's step 9 does (``--dsn "port=$PORT"``,
run as root on the database host), which tests/integration/test_dba_guide.py runs as
written: a DSN naming ``user=postgres`` without a host fails there (peer authentication,
as root)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "dba-guide.md", ROOT / "docs" / "cookbook.md"]
COMMAND = re.compile(r"pg-oauth (?:explain|check|doctor) --dsn (\"[^\"]*\"|'[^']*')")


def dsns() -> list[tuple[str, str]]:
    return [(path.name, m.group(1)) for path in DOCS
            for m in COMMAND.finditer(path.read_text(encoding="utf-8"))]  # fmt: skip


def test_operator_examples_connect_as_the_dba_guide_does() -> None:
    found = dsns()
    assert {name for name, _ in found} == {"README.md", "dba-guide.md", "cookbook.md"}
    local = [(name, dsn) for name, dsn in found if "host=" not in dsn]
    assert local and all(dsn == '"port=$PORT"' for _, dsn in local), local
