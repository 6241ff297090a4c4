"""Taking pg_oauth away leaves no open door: the package's removal refuses while a cluster
still uses it, `pg-oauth uninstall` takes it out in a safe order, and afterwards no line
admits a token role without a password while the postgres peer login still works.

On a cluster set up by the DBA guide from the package (test_dba_guide.py's
fixtures and runner), as root on Debian's packaged major (15 on Debian 12, 17 on 13, a root's).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pgcluster import PG_BIN
from test_dba_guide import (  # noqa: F401 (fixtures)
    DEV_PG_OAUTH,
    MAJOR,
    PACKAGE,
    PACKAGE_PATH,
    ROOT,
    Guide,
    audience,
    clean_env,
    deb_package,
    debian_cluster,
    dev_issuer,
    names_for,
    package_installed,
    without_network,
)

pytestmark = pytest.mark.skipif(PG_BIN != Path(f"/usr/lib/postgresql/{MAJOR}/bin"),
                                reason="the DBA guide follows Debian's packaged PostgreSQL")


def apt(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", "-y", "-q", *args], capture_output=True, text=True,
                          env={**clean_env(PACKAGE_PATH), "DEBIAN_FRONTEND": "noninteractive",
                               **env}, timeout=300, check=False)  # fmt: skip


def pg_oauth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pg-oauth", *args], capture_output=True, text=True, cwd="/",
                          env=clean_env(PACKAGE_PATH), timeout=300, check=False)  # fmt: skip


def set_up_by_the_guide(guide: Guide, keydir: str, workdir: Path) -> None:
    """The guide from the package up to its first token login."""
    for step in ("names", "certificate", "postgresql.conf", "restart", "create-extension"):
        guide.run(step)
    guide.until("both workers idle", lambda: guide.run("workers").stdout.count(" idle ") == 2)
    guide.run("pg_hba.conf")
    guide.run("configuration")
    token = subprocess.run(
        [DEV_PG_OAUTH, "mint", "--dir", keydir, "--sub", "00u1a2b3c4dEXAMPLE",
         "--aud", audience(), "--claim", "email=alice@example.com"],
        capture_output=True, text=True, check=True, env=clean_env()).stdout.strip()
    (workdir / "token.jwt").write_text(token + "\n")
    os.chmod(workdir / "token.jwt", 0o600)
    assert re.search(r"^ alice\s+\| alice@example\.com$", guide.run("first-login").stdout,
                     re.MULTILINE)  # fmt: skip


def login_without_password(guide: Guide, target: str) -> subprocess.CompletedProcess[str]:
    """psql -w as the token role alice: never prompts, no password at all."""
    guide.names += f"\nTARGET=\"{target}\""
    script = 'psql -w -X "$TARGET" -At -c "SELECT current_user"'
    return subprocess.run(["/bin/sh", "-u", "-c", guide.names + "\n" + script],
                          cwd=guide.workdir, env=clean_env(PACKAGE_PATH),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_uninstall_in_a_safe_order_then_remove(tmp_path, request) -> None:
    cluster_name = request.getfixturevalue("debian_cluster")
    deb = request.getfixturevalue("deb_package")
    issuer_url, keydir = request.getfixturevalue("dev_issuer")
    workdir = tmp_path / "dba"
    workdir.mkdir()
    os.chmod(workdir, 0o755)
    log = Path(f"/var/log/postgresql/postgresql-{MAJOR}-{cluster_name}.log")
    guide = Guide(names_for(cluster_name, issuer_url), workdir, log, PACKAGE_PATH)
    spec = f"{MAJOR}/{cluster_name}"
    hba = Path(f"/etc/postgresql/{MAJOR}/{cluster_name}/pg_hba.conf")
    conf = Path(f"/etc/postgresql/{MAJOR}/{cluster_name}/postgresql.conf")
    fqdn = subprocess.run(["hostname", "-f"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    shutil.copy(deb, workdir)
    subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, check=True)
    try:
        guide.run("install-package", prefix=without_network())
        assert package_installed()
        set_up_by_the_guide(guide, keydir, workdir)

        # the package's removal refuses while the cluster preloads pg_oauth: it says why
        # and what to run
        refused = apt("remove", PACKAGE)
        assert refused.returncode != 0 and package_installed(), refused.stdout
        said = refused.stdout + refused.stderr
        assert f"pg-oauth uninstall --cluster {spec}" in said, said
        assert "shared_preload_libraries names pg_oauth" in said, said
        assert "trust line" in said and "PG_OAUTH_FORCE_REMOVE=1" in said, said

        # --dry-run: the plan, and nothing changes
        before = hba.read_text(), conf.read_text()
        plan = pg_oauth("uninstall", "--cluster", spec, "--dry-run")
        assert plan.returncode == 0, plan.stderr
        assert "2 token line(s) become reject" in plan.stdout, plan.stdout
        assert "shared_preload_libraries = 'pg_oauth' -> shared_preload_libraries = ''" \
            in plan.stdout, plan.stdout
        assert "DROP EXTENSION pg_oauth in: postgres" in plan.stdout, plan.stdout
        assert (hba.read_text(), conf.read_text()) == before

        done = pg_oauth("uninstall", "--cluster", spec)
        assert done.returncode == 0, done.stdout + done.stderr
        steps = [line[:2] for line in done.stdout.splitlines() if re.match(r"\d\. ", line)]
        assert steps == ["1.", "2.", "3.", "4."], done.stdout
        assert "reloaded" in done.stdout and "restarted without pg_oauth" in done.stdout
        assert f"apt-get remove {PACKAGE}" in done.stdout
        assert list(hba.parent.glob("pg_hba.conf.pg-oauth-uninstall-*"))  # the backup
        rules = guide.names + "\n$PSQL -At -c \"SELECT auth_method, count(*) FROM " \
            "pg_hba_file_rules WHERE user_name = '{+oauth_users}' GROUP BY 1\""
        guide.names, names = rules, guide.names
        assert guide.run("names").stdout.split() == ["reject|2"]
        guide.names = names

        # again: everything is done already
        again = pg_oauth("uninstall", "--cluster", spec)
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("nothing to do") == 3, again.stdout

        removed = apt("remove", PACKAGE)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not package_installed()

        # no line admits the token role without a password, over TLS or not
        over_tls = login_without_password(guide, f"host={fqdn} port=$PORT dbname=postgres "
                                          "user=alice sslmode=verify-full "
                                          "sslrootcert=/etc/ssl/certs/ssl-cert-snakeoil.pem")
        assert over_tls.returncode != 0 and "alice" not in over_tls.stdout, over_tls
        assert "pg_hba.conf rejects connection" in over_tls.stderr, over_tls.stderr
        plain = login_without_password(guide, "host=localhost port=$PORT dbname=postgres "
                                       "user=alice sslmode=disable")
        assert plain.returncode != 0 and "no password supplied" in plain.stderr, plain.stderr
        socket = login_without_password(guide, "port=$PORT dbname=postgres user=alice")
        assert socket.returncode != 0, socket

        # and the postgres peer login works (no guard refusing every session)
        guide.names += "\n$PSQL -At -c 'SELECT current_user, " \
            "(SELECT count(*) FROM pg_extension WHERE extname = $$pg_oauth$$)'"
        assert guide.run("names").stdout.split()[-1] == "postgres|0"
    finally:
        if not package_installed():  # the rest of the suite needs the files back
            subprocess.run(["make", "-s", "install"], cwd=ROOT, capture_output=True,
                           check=True)  # fmt: skip
