"""What ships as an extension version never changes, and every one of them can be updated.

A released version's install script is frozen in sql/pg_oauth--X.sql, its SHA-256 in
sql/released.sha256. Changes after a release go into sql/src/ (the next version's fresh
install, assembled by make) and, by hand, into sql/pg_oauth--X--Y.sql (docs/upgrades.md).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SQL = Path(__file__).resolve().parents[2] / "sql"


def default_version() -> str:
    found = re.search(r"^default_version = '(.+)'$", (SQL / "pg_oauth.control").read_text(),
                      re.MULTILINE)  # fmt: skip
    assert found
    return found.group(1)


def frozen_versions() -> list[str]:
    return sorted(m.group(1) for p in SQL.glob("pg_oauth--*.sql")
                  if (m := re.fullmatch(r"pg_oauth--([^-]+)\.sql", p.name)))  # fmt: skip


def upgrade_steps() -> dict[str, set[str]]:
    steps: dict[str, set[str]] = {}
    for p in SQL.glob("pg_oauth--*--*.sql"):
        m = re.fullmatch(r"pg_oauth--([^-]+)--([^-]+)\.sql", p.name)
        assert m, p.name
        steps.setdefault(m.group(1), set()).add(m.group(2))
    return steps


def assembled() -> bytes:
    """What make puts into the fresh-install script of default_version."""
    return b"".join(p.read_bytes() for p in sorted((SQL / "src").glob("*.sql")))


def test_every_release_is_frozen_and_unchanged() -> None:
    listed = dict(reversed(line.split()) for line in
                  (SQL / "released.sha256").read_text().splitlines())  # fmt: skip
    assert "1.0" in frozen_versions()  # the first release, as it shipped
    for version in frozen_versions():
        name = f"pg_oauth--{version}.sql"
        assert name in listed, f"{name} is frozen but not in sql/released.sha256"
        digest = hashlib.sha256((SQL / name).read_bytes()).hexdigest()
        assert digest == listed[name], f"{name} changed after its release"
    for name in listed:
        assert (SQL / name).is_file(), f"{name} is released but gone"


def test_the_fresh_install_of_a_released_default_version_is_its_frozen_script() -> None:
    frozen = SQL / f"pg_oauth--{default_version()}.sql"
    if frozen.exists():  # default_version released: sql/src/ must still assemble to it
        assert assembled() == frozen.read_bytes(), (
            "sql/src/ changed after the release of default_version: move default_version on "
            "and write the upgrade script (docs/upgrades.md)")


def test_every_release_has_an_update_path_to_default_version() -> None:
    steps, target = upgrade_steps(), default_version()
    for version in frozen_versions():
        reached, todo = {version}, [version]
        while todo:
            for nxt in steps.get(todo.pop(), ()):
                if nxt not in reached:
                    reached.add(nxt)
                    todo.append(nxt)
        assert target in reached, f"no pg_oauth--{version}--...sql path to {target}"
