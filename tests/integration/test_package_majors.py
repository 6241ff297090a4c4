"""`make deb` for a PostgreSQL built from source (make PG=18 test): the package of that
major, installed with apt, is what the server loads, and a token login works with it.

Debian's packaged 15 has its own, fuller test: the DBA guide run from the package
(test_dba_guide.py). Here the server is the one PG_BIN names, under its own prefix, so the
package installs there and depends on no Debian PostgreSQL package.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import make_cluster
from pgcluster import DEBIAN_PG15_BIN, PG_BIN, pg_config, server_major

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    PG_BIN == DEBIAN_PG15_BIN or os.geteuid() != 0,
    reason="the package of Debian's 15 is tested by test_dba_guide.py; apt needs root",
)


def test_the_package_of_this_major_installs_and_logs_in(issuer) -> None:
    package = f"postgresql-{server_major()}-pg-oauth"
    out = subprocess.run(["make", "-s", "deb", f"PG_CONFIG={PG_BIN / 'pg_config'}"],
                         cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, f"make deb:\n{out.stdout}\n{out.stderr}"
    deb = Path(out.stdout.strip().splitlines()[-1])
    assert deb.name.startswith(package + "_") and deb.is_file(), out.stdout

    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "postgresql-" not in depends, depends  # a source-built server is no package

    # everything it depends on is on the machine already: apt downloads nothing
    installed = subprocess.run(["apt-get", "install", "--reinstall", "-y", "-q", str(deb)],
                               capture_output=True, text=True, check=False,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert re.search(r"Need to get 0 B/", installed.stdout), installed.stdout
    assert not re.search(r"^Get:\d+ https?:", installed.stdout, re.MULTILINE), installed.stdout
    files = set(subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                               check=True).stdout.split())  # fmt: skip
    for expected in (f"{pg_config('--pkglibdir')}/pg_oauth.so",
                     f"{pg_config('--sharedir')}/extension/pg_oauth.control",
                     f"{pg_config('--sharedir')}/pg_oauth/python/pyhook/validator.py",
                     f"{pg_config('--bindir')}/pg-oauth"):  # fmt: skip
        assert expected in files, expected
    verify = subprocess.run(["dpkg", "--verify", package], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout

    # a new server loads the package's library and pyhook: a token login works
    cluster = make_cluster(issuer)
    try:
        with cluster.token_connect("alice", issuer.mint(sub="alice")) as conn:
            assert conn.execute("SELECT current_user, oauth.claim('sub')").fetchone() == \
                ("alice", "alice")
    finally:
        cluster.stop()
