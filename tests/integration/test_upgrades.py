"""Every released version of the extension updates to what a fresh install of
default_version creates, object for object.

The schema is compared with `pg_dump --binary-upgrade -s`: a plain dump leaves out an
extension's own objects, this one lists them all (as pg_upgrade needs them). Normalised
only where two installs of the same SQL differ anyway: object ids, xids, LSNs and the
dump's random \\restrict key.

While default_version is itself the only release (1.0), there is nothing older to update:
the tests then check that the server installs the frozen 1.0 script byte for byte, and
prove the comparison on a throwaway extension (pg_oauth_probe, 1.0 frozen plus a 1.1 and
its upgrade script) in the server's extension directory.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AUDIENCE, CLUSTERS, attempt, until
from pgcluster import PG_BIN, Cluster, pg_config

ROOT = Path(__file__).resolve().parents[2]
SQL = ROOT / "sql"


def default_version() -> str:
    found = re.search(r"^default_version = '(.+)'$", (SQL / "pg_oauth.control").read_text(),
                      re.MULTILINE)  # fmt: skip
    assert found
    return found.group(1)


def frozen_versions() -> list[str]:
    return sorted(m.group(1) for p in SQL.glob("pg_oauth--*.sql")
                  if (m := re.fullmatch(r"pg_oauth--([^-]+)\.sql", p.name)))  # fmt: skip


_UNSTABLE = re.compile(r"^(SELECT pg_catalog\.binary_upgrade_set_next_.*|SET relfrozenxid = .*"
                       r"|\\(un)?restrict .*|-- .*)$")  # fmt: skip


def normalised(dump: str) -> list[str]:
    out = []
    for line in dump.splitlines():
        if _UNSTABLE.match(line):
            continue
        line = re.sub(r"WHERE oid = '\d+'", "WHERE oid = <oid>", line)
        # binary_upgrade_create_empty_extension: the configuration tables' oids
        line = re.sub(r"'\{\d+(,\d+)*\}'", lambda m: re.sub(r"\d+", "<oid>", m.group(0)), line)
        out.append(line)
    return out


def schema(cluster: Cluster, database: str) -> list[str]:
    dump = subprocess.run([str(PG_BIN / "pg_dump"), "--binary-upgrade", "-s",
                           cluster.admin_dsn(database)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    return normalised(dump)


def installed_by(cluster: Cluster, database: str, extension: str, version: str | None,
                 update: bool) -> list[str]:  # fmt: skip
    """A new database with the extension created at version (None: default_version), then
    updated to default_version when update is set; its schema."""
    cluster.sql(f'CREATE DATABASE "{database}"')
    cluster.sql("CREATE EXTENSION plpython3u", dbname=database)
    at = f" VERSION '{version}'" if version else ""
    cluster.sql(f"CREATE EXTENSION {extension}{at}", dbname=database)
    if update:
        cluster.sql(f"ALTER EXTENSION {extension} UPDATE", dbname=database)
    return schema(cluster, database)


def differences(fresh: list[str], updated: list[str]) -> list[str]:
    import difflib

    return [line for line in difflib.unified_diff(fresh, updated, "fresh", "updated",
                                                  lineterm="", n=1)]  # fmt: skip


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[Cluster]:
    """A server that does not preload pg_oauth: only its SQL is compared here."""
    cluster = Cluster(preload=False).init().start()
    CLUSTERS.append(cluster)
    yield cluster
    cluster.stop()


def test_every_release_updates_to_a_fresh_install(plain_cluster) -> None:
    target = default_version()
    extdir = Path(pg_config("--sharedir")) / "extension"
    # what the server installs for a released default_version is its frozen script
    frozen = SQL / f"pg_oauth--{target}.sql"
    if frozen.exists():
        assert (extdir / frozen.name).read_bytes() == frozen.read_bytes()
    available = {row[0] for row in plain_cluster.sql(
        "SELECT version FROM pg_available_extension_versions WHERE name = 'pg_oauth'")}
    assert set(frozen_versions()) | {target} <= available, available

    fresh = installed_by(plain_cluster, "fresh", "pg_oauth", None, update=False)
    assert any("CREATE TABLE oauth.issuers" in line for line in fresh)
    for version in frozen_versions():
        if version == target:
            continue
        updated = installed_by(plain_cluster, f"from_{version}", "pg_oauth", version,
                               update=True)  # fmt: skip
        assert plain_cluster.sql("SELECT extversion FROM pg_extension WHERE extname = "
                                 "'pg_oauth'", dbname=f"from_{version}") == [(target,)]
        assert not differences(fresh, updated), "\n".join(differences(fresh, updated))


PROBE_CHANGE = """
CREATE FUNCTION oauth.probe_added_in_1_1() RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT 11';
ALTER TABLE oauth.issuers ADD COLUMN probe_note text;
"""


@pytest.fixture
def probe_extension() -> Iterator[Path]:
    """pg_oauth_probe in the server's extension directory: 1.0 as frozen, 1.1 its fresh
    install, and pg_oauth_probe--1.0--1.1.sql (returned, for the test to break)."""
    if os.geteuid() != 0 and not os.access(Path(pg_config("--sharedir")) / "extension",
                                           os.W_OK):  # fmt: skip
        pytest.fail("writing a throwaway extension into the server's sharedir needs root")
    extdir = Path(pg_config("--sharedir")) / "extension"
    control = (SQL / "pg_oauth.control").read_text()
    control = re.sub(r"^default_version = .*$", "default_version = '1.1'", control,
                     flags=re.MULTILINE)  # fmt: skip
    one_oh = (SQL / "pg_oauth--1.0.sql").read_text()
    files = {"pg_oauth_probe.control": control,
             "pg_oauth_probe--1.0.sql": one_oh,
             "pg_oauth_probe--1.1.sql": one_oh + PROBE_CHANGE,
             "pg_oauth_probe--1.0--1.1.sql": PROBE_CHANGE}  # fmt: skip
    for name, text in files.items():
        (extdir / name).write_text(text)
    try:
        yield extdir / "pg_oauth_probe--1.0--1.1.sql"
    finally:
        for name in files:
            (extdir / name).unlink(missing_ok=True)


def test_the_comparison_sees_an_upgrade_script_that_misses_something(
        plain_cluster, probe_extension) -> None:  # fmt: skip
    fresh = installed_by(plain_cluster, "probe_fresh", "pg_oauth_probe", None, update=False)
    assert any("probe_added_in_1_1" in line for line in fresh)
    good = installed_by(plain_cluster, "probe_good", "pg_oauth_probe", "1.0", update=True)
    assert not differences(fresh, good), "\n".join(differences(fresh, good))

    # the same update without the new column: the comparison names what is missing
    probe_extension.write_text(PROBE_CHANGE.split("ALTER TABLE")[0])
    bad = installed_by(plain_cluster, "probe_bad", "pg_oauth_probe", "1.0", update=True)
    missing = [line for line in differences(fresh, bad) if line.startswith("-")]
    assert any("probe_note" in line for line in missing), missing


@pytest.mark.parametrize("version", [v for v in frozen_versions() if v != default_version()])
def test_logins_go_on_from_restart_to_update(issuer, version) -> None:
    """A newer library is loaded at the restart; ALTER EXTENSION pg_oauth UPDATE comes
    after. In between, the configuration database still has the older tables (columns
    added since are missing): token logins work all along, and after the update too."""
    cluster = Cluster(settings={"pg_oauth.rate_limit_failures": 0}).init().start()
    CLUSTERS.append(cluster)
    try:
        cluster.sql("CREATE ROLE alice LOGIN")
        cluster.sql(f"CREATE EXTENSION pg_oauth VERSION '{version}' CASCADE")
        cluster.sql("INSERT INTO oauth.issuers (issuer, audiences) VALUES (%s, %s)",
                    (issuer.issuer, [AUDIENCE]))  # fmt: skip
        # the dev issuer is plain http on loopback: 1.0 has no allow_loopback_http yet
        cluster.sql("UPDATE oauth.issuers SET allow_insecure_http = true")
        cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                    "VALUES (%s, 'sub', 'alice', 'alice')", (issuer.issuer,))  # fmt: skip
        cluster.wait_for_workers()
        assert attempt(cluster, "alice", issuer.mint(sub="alice")) == "ok"
        cluster.sql("SELECT oauth.revoke(subject => 'alice', issuer => %s)", (issuer.issuer,))
        assert attempt(cluster, "alice", issuer.mint(sub="alice")) == "revoked"
        cluster.sql("DELETE FROM oauth.revocations")

        cluster.sql("ALTER EXTENSION pg_oauth UPDATE")
        assert cluster.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_oauth'") \
            == [(default_version(),)]
        assert until(lambda: attempt(cluster, "alice", issuer.mint(sub="alice")) == "ok",
                     timeout=15, what="a login after the update")
    finally:
        cluster.stop()
