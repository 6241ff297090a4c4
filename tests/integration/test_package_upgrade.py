"""A newer package installed with apt under a running cluster: token logins keep working,
before and after the restart the DBA guide asks for, and ALTER EXTENSION pg_oauth UPDATE
succeeds. The two packages are built from this tree with different DEB_VERSIONs; the
cluster is set up by the DBA guide (test_dba_guide.py's runner)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pgcluster import PG_BIN
from test_dba_guide import (  # noqa: F401 (fixtures)
    MAJOR,
    PACKAGE,
    PACKAGE_PATH,
    ROOT,
    Guide,
    debian_cluster,
    dev_issuer,
    names_for,
    package_installed,
    without_network,
)
from test_uninstall import apt, set_up_by_the_guide

pytestmark = pytest.mark.skipif(PG_BIN != Path(f"/usr/lib/postgresql/{MAJOR}/bin"),
                                reason="the DBA guide follows Debian's packaged PostgreSQL")


def build(version: str, into: Path) -> Path:
    out = subprocess.run(["make", "-s", "deb", f"DEB_VERSION={version}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, f"make deb:\n{out.stdout}\n{out.stderr}"
    deb = Path(out.stdout.splitlines()[-1])
    assert f"_{version}_" in deb.name, deb
    return Path(shutil.copy(deb, into))  # the next make deb removes dist/'s packages


def installed_version() -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


def test_a_newer_package_under_a_running_cluster(tmp_path, request) -> None:
    cluster_name = request.getfixturevalue("debian_cluster")
    issuer_url, keydir = request.getfixturevalue("dev_issuer")
    workdir = tmp_path / "dba"
    workdir.mkdir()
    os.chmod(workdir, 0o755)
    build("1.0-1~older", workdir)  # the guide installs the only .deb in its directory
    newer = build("1.0-2", tmp_path)
    log = Path(f"/var/log/postgresql/postgresql-{MAJOR}-{cluster_name}.log")
    guide = Guide(names_for(cluster_name, issuer_url), workdir, log, PACKAGE_PATH)
    subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, check=True)
    try:
        guide.run("install-package", prefix=without_network())  # the older: the only one
        assert installed_version() == "1.0-1~older"
        set_up_by_the_guide(guide, keydir, workdir)
        guide.names += "\n$PSQL -At -c 'SELECT pg_postmaster_start_time()'"
        started = guide.run("names").stdout.splitlines()[-1]

        # the upgrade, as apt does it, while the cluster runs: prerm upgrade must not refuse
        upgraded = apt("install", str(newer))
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert installed_version() == "1.0-2"
        assert guide.run("names").stdout.splitlines()[-1] == started  # no restart by apt
        first_login = guide.run("first-login").stdout
        assert re.search(r"^ alice\s+\| alice@example\.com$", first_login, re.MULTILINE)

        # what the DBA guide says to run: restart, then ALTER EXTENSION pg_oauth UPDATE
        guide.run("restart")
        guide.until("both workers idle",
                    lambda: guide.run("workers").stdout.count(" idle ") == 2)  # fmt: skip
        guide.names += "\n$PSQL -c 'ALTER EXTENSION pg_oauth UPDATE' -At " \
            "-c \"SELECT extversion FROM pg_extension WHERE extname = 'pg_oauth'\""
        # both packages hold this tree: the extension is at its default_version
        default = re.search(r"^default_version = '(.+)'$",
                            (ROOT / "sql/pg_oauth.control").read_text(), re.MULTILINE)
        assert default and guide.run("names").stdout.splitlines()[-1] == default.group(1)
        first_login = guide.run("first-login").stdout
        assert re.search(r"^ alice\s+\| alice@example\.com$", first_login, re.MULTILINE)
    finally:
        # the cluster is dropped: the package may go, and make install's files come back
        if package_installed():
            apt("remove", PACKAGE, PG_OAUTH_FORCE_REMOVE="1")
        subprocess.run(["make", "-s", "install"], cwd=ROOT, capture_output=True, check=True)
