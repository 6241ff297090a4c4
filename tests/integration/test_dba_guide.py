"""The DBA guide (docs/dba-guide.md), run as written, on a cluster laid out like Debian's own.

Every ```sh block of the guide marked ``<!-- dba-guide: NAME -->`` runs in /bin/sh as
root, in order, after the ``names`` block, of which two values are replaced: ``CLUSTER``
(this test's own cluster, made by pg_createcluster on a free port, dropped at the end)
and ``ISSUER`` (the development issuer, standing in for the IdP). The guide runs twice,
once for each way to install: with ``make install``, the one unmarked block, which the
test run has done already (pgo-itest, make test); and with the Debian package ``make deb``
builds, installed by the ``install-package`` block (left installed: it holds the same
files as make install, built from the same tree). The guide ends with a token login that
works, one that is refused, and a setup without risks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgcluster import PG_BIN, free_port, pg_config, server_major

# The guide is for Debian's packaged PostgreSQL: 15 on Debian 12, 17 on Debian 13, and the
# root's major in a root of scripts/pg-root.sh (pg_createcluster MAJOR, pg_conftool MAJOR).
MAJOR = server_major()
pytestmark = pytest.mark.skipif(PG_BIN != Path(f"/usr/lib/postgresql/{MAJOR}/bin"),
                                reason="the DBA guide follows Debian's packaged PostgreSQL")

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "dba-guide.md"
STEPS = ["names", "install-package", "installed", "certificate", "postgresql.conf", "restart",
         "create-extension", "workers", "pg_hba.conf", "configuration", "first-login",
         "refused-login", "check"]  # fmt: skip
# root's PATH on a stock Debian: the commands as a DBA's shell finds them
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# the same on a server that has only the package: nothing of make install in /usr/local
PACKAGE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGE = f"postgresql-{MAJOR}-pg-oauth"
# the development issuer and its tokens: the test venv's pg-oauth, which has the
# development package (devtools/); no server's pg-oauth does
DEV_PG_OAUTH = str(Path(sys.executable).parent / "pg-oauth")
# the Python the package is built for and the server embeds (3.11 on Debian 12, 3.13 on 13)
PY = sys.version_info
SNAKEOIL = (Path("/etc/ssl/certs/ssl-cert-snakeoil.pem"),
            Path("/etc/ssl/private/ssl-cert-snakeoil.key"))  # fmt: skip


def guide_section() -> str:
    """The guide's steps: the text before its first section (upgrades and removal)."""
    guide = GUIDE.read_text(encoding="utf-8")
    return guide[:guide.index("\n## ")]


def guide_blocks() -> dict[str, str]:
    marked = re.findall(r"<!-- dba-guide: (\S+) -->\n```sh\n(.*?)```", guide_section(),
                        re.DOTALL)  # fmt: skip
    return dict(marked)


def test_every_command_of_the_guide_is_run() -> None:
    blocks = guide_blocks()
    assert list(blocks) == STEPS
    every = re.findall(r"```sh\n(.*?)```", guide_section(), re.DOTALL)
    unmarked = [b for b in every if b not in blocks.values()]
    assert len(unmarked) == 1 and "make install" in unmarked[0], unmarked
    assert "apt-get install ./postgresql-$PGV-pg-oauth_" in blocks["install-package"]


def names_for(cluster: str, issuer: str) -> str:
    """The names block with this test's major, cluster and issuer, nothing else changed."""
    names = guide_blocks()["names"]
    names, n = re.subn(r"^PGV=\S+", f"PGV={MAJOR}", names, flags=re.MULTILINE)
    assert n == 1, names
    names, n = re.subn(r"^CLUSTER=\S+", f"CLUSTER={cluster}", names, flags=re.MULTILINE)
    assert n == 1, names
    names, n = re.subn(r"^ISSUER=\S+", f"ISSUER={issuer}", names, flags=re.MULTILINE)
    assert n == 1, names
    # the development issuer serves plain http on 127.0.0.1: the guide says to say so
    names, n = re.subn(r"^LOOPBACK_HTTP=false", "LOOPBACK_HTTP=true", names,
                       flags=re.MULTILINE)
    assert n == 1, names
    return names


def audience() -> str:
    found = re.search(r"^AUDIENCE=(\S+)", guide_blocks()["names"], re.MULTILINE)
    assert found
    return found.group(1)


def clean_env(path: str = PATH) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "PYTHON", "VIRTUAL_ENV"))}  # fmt: skip
    env["PATH"] = path
    return env


def without_network() -> list[str]:
    """A command prefix that runs it with no network at all (a network namespace of its
    own, only a loopback that is down), where the kernel lets root make one."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return ["unshare", "--net"] if probe.returncode == 0 else []


class Guide:
    """Runs the guide's blocks in a working directory of its own."""

    def __init__(self, names: str, workdir: Path, log: Path, path: str = PATH) -> None:
        self.names = names
        self.workdir = workdir
        self.log = log
        self.path = path

    def run(self, step: str, *, stop_on_error: bool = True,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        # the names block is this test's own (names_for), never the guide's as written
        script = self.names if step == "names" else self.names + "\n" + guide_blocks()[step]
        shell = ["/bin/sh", "-eu" if stop_on_error else "-u", "-c", script]
        out = subprocess.run([*(prefix or []), *shell], cwd=self.workdir,
                             env=clean_env(self.path), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=180,
                             check=False)  # fmt: skip
        if stop_on_error:
            assert out.returncode == 0, f"step {step}:\n{out.stdout}\n{out.stderr}"
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def until(self, what: str, done) -> None:
        deadline = time.time() + 30
        while not done():
            assert time.time() < deadline, f"{what}; server log:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)


@pytest.fixture
def debian_cluster() -> Iterator[str]:
    """A cluster as Debian makes one: /etc/postgresql/MAJOR/NAME, /var/lib/postgresql/MAJOR/NAME,
    run by the postgres OS user, started; never Debian's MAJOR/main."""
    assert os.geteuid() == 0 and shutil.which("pg_createcluster"), "Debian's tools, as root"
    name = f"pgoauth_guide_{os.getpid()}"
    assert name != "main" and not Path(f"/etc/postgresql/{MAJOR}/{name}").exists()
    had_snakeoil = all(p.exists() for p in SNAKEOIL)
    subprocess.run(["pg_createcluster", str(MAJOR), name, "-p", str(free_port()), "--start"],
                   check=True, capture_output=True, cwd="/", env=clean_env())  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["pg_dropcluster", "--stop", str(MAJOR), name], check=False,
                       capture_output=True, cwd="/", env=clean_env())  # fmt: skip
        for leftover in (f"/etc/postgresql/{MAJOR}/{name}", f"/var/lib/postgresql/{MAJOR}/{name}"):
            shutil.rmtree(leftover, ignore_errors=True)
        Path(f"/var/log/postgresql/postgresql-{MAJOR}-{name}.log").unlink(missing_ok=True)
        if not had_snakeoil:  # leave the machine as it was found
            for link in Path("/etc/ssl/certs").iterdir():
                if link.is_symlink() and os.readlink(link) == SNAKEOIL[0].name:
                    link.unlink()
            for path in SNAKEOIL:
                path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[tuple[str, str]]:
    """`pg-oauth dev-issuer` of the development package: (its URL, its key directory)."""
    keydir = tempfile.mkdtemp(prefix="pg_oauth-guide-issuer-")
    proc = subprocess.Popen([DEV_PG_OAUTH, "dev-issuer", "--dir", keydir, "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=clean_env())  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url, keydir
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(keydir, ignore_errors=True)


@pytest.fixture(scope="module")
def deb_package() -> Path:
    """`make deb` in this tree: the package's file."""
    out = subprocess.run(["make", "-s", "deb"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, f"make deb:\n{out.stdout}\n{out.stderr}"
    deb = Path(out.stdout.splitlines()[-1])
    assert deb.parent == ROOT / "dist" and deb.name.startswith(f"{PACKAGE}_"), out.stdout
    assert deb.name.endswith(f"_{arch()}.deb"), deb
    return deb


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def package_installed() -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE],
                            capture_output=True, text=True, check=False).stdout  # fmt: skip
    return status == "install ok installed"


def test_the_package_needs_no_pip_and_no_network(deb_package, tmp_path) -> None:
    """What the package says of itself: what it depends on, and maintainer scripts that
    only byte-compile what it holds."""
    fields = subprocess.run(["dpkg-deb", "-f", str(deb_package), "Package", "Version",
                             "Architecture", "Depends"], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    assert f"Package: {PACKAGE}\n" in fields and f"Architecture: {arch()}\n" in fields
    default_version = re.search(r"^default_version = '(.+)'$",
                                (ROOT / "sql/pg_oauth.control").read_text(), re.MULTILINE)
    assert default_version and f"Version: {default_version.group(1)}+" in fields, fields
    depends = fields.split("Depends: ")[1].strip().split(", ")
    # cffi's library is built for the server's CPython (cryptography's is abi3)
    for needed in (f"postgresql-{MAJOR}", f"postgresql-plpython3-{MAJOR}",
                   f"python3 (>= {PY.major}.{PY.minor})", f"python3 (<< {PY.major}.{PY.minor + 1})",
                   "libpq5"):  # fmt: skip
        assert needed in depends, depends
    control = tmp_path / "DEBIAN"
    subprocess.run(["dpkg-deb", "-e", str(deb_package), str(control)], check=True)
    assert sorted(p.name for p in control.iterdir()) == ["control", "md5sums", "postinst",
                                                         "prerm"]  # fmt: skip
    for script in ("postinst", "prerm"):
        commands = [line for line in (control / script).read_text().splitlines()
                    if not line.lstrip().startswith("#")]  # fmt: skip
        assert not re.search(r"pip|https?:|curl|wget|apt", "\n".join(commands)), commands
    assert "-m compileall" in (control / "postinst").read_text()
    files = subprocess.run(["dpkg-deb", "-c", str(deb_package)], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "__pycache__" not in files and "/usr/local" not in files
    assert f"_cffi_backend.cpython-{PY.major}{PY.minor}-" in files and "_rust.abi3.so" in files


def check_installed_package() -> None:
    """Every file where pg_config says, nothing else but its docs, each as dpkg put it."""
    pkglibdir, sharedir = pg_config("--pkglibdir"), pg_config("--sharedir")
    python = f"{sharedir}/pg_oauth/python"
    listed = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True,
                            check=True).stdout.splitlines()  # fmt: skip
    for path in (f"{pkglibdir}/pg_oauth.so", f"{sharedir}/extension/pg_oauth.control",
                 f"{sharedir}/extension/pg_oauth--1.0.sql", f"{python}/pyhook/__init__.py",
                 f"{python}/jwt/__init__.py", f"{python}/cryptography/__init__.py",
                 f"{python}/psycopg/__init__.py", "/usr/bin/pg-oauth",
                 f"/usr/share/doc/{PACKAGE}/copyright",
                 "/usr/share/man/man1/pg-oauth.1.gz"):  # fmt: skip
        assert path in listed and Path(path).is_file(), path
    places = (f"{pkglibdir}/", f"{sharedir}/extension/pg_oauth", f"{python}/", "/usr/bin/",
              f"/usr/share/doc/{PACKAGE}/", "/usr/share/man/", "/usr/share/lintian/")
    stray = [p for p in listed if Path(p).is_file() and not p.startswith(places)]
    assert not stray, stray
    development = [p for p in listed if "dev_issuer" in p or "pg_oauth_dev" in p]
    assert not development, development  # devtools/ is for development only
    assert "#!/usr/bin/python3 -I" in Path("/usr/bin/pg-oauth").read_text()
    # the files on disk are the package's, and postinst made the byte code
    verify = subprocess.run(["dpkg", "--verify", PACKAGE], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert verify.returncode == 0 and not verify.stdout, verify
    assert list(Path(python, "pyhook", "__pycache__").glob(f"*.cpython-{PY.major}{PY.minor}.pyc"))


@pytest.mark.parametrize("install", ["make install", "package"])
def test_the_dba_guide_as_written(install, debian_cluster, dev_issuer, tmp_path,
                                  request) -> None:  # fmt: skip
    issuer_url, keydir = dev_issuer
    workdir = tmp_path / "dba"
    workdir.mkdir()
    os.chmod(workdir, 0o755)  # runuser -u postgres starts psql in it
    log = Path(f"/var/log/postgresql/postgresql-{MAJOR}-{debian_cluster}.log")
    guide = Guide(names_for(debian_cluster, issuer_url), workdir, log,
                  PATH if install == "make install" else PACKAGE_PATH)  # fmt: skip
    fqdn = subprocess.run(["hostname", "-f"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip

    guide.run("names")
    if install == "package":
        deb = request.getfixturevalue("deb_package")
        shutil.copy(deb, workdir)
        # what make install put there goes with an earlier package: the guide runs on the
        # package's files only; the package is left installed for the tests after this one
        subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, check=True)
        try:
            out = guide.run("install-package", prefix=without_network())
        finally:
            if not package_installed():  # the rest of the suite needs the files back
                subprocess.run(["make", "-s", "install"], cwd=ROOT, capture_output=True,
                               check=True)  # fmt: skip
        assert package_installed(), out
        check_installed_package()
        assert shutil.which("pg-oauth", path=PACKAGE_PATH) == "/usr/bin/pg-oauth"
    out = guide.run("installed").stdout
    assert "pg_oauth.control" in out and "operator commands" in out
    assert "\n  mint " not in out and "development" not in out, out  # devtools/ only

    assert f"DNS:{fqdn}" in guide.run("certificate").stdout
    out = guide.run("postgresql.conf").stdout
    assert "ssl = on" in out and "shared_preload_libraries = pg_oauth" in out

    assert "online" in guide.run("restart").stdout
    guide.until("the workers say they wait for CREATE EXTENSION", lambda: (
        'pg_oauth validator 0 waiting: extension pg_oauth is not installed in database '
        '"postgres" (pg_oauth.database); run CREATE EXTENSION pg_oauth CASCADE there'
        in guide.log_text()))

    guide.run("create-extension")
    guide.until("both workers idle", lambda: guide.run("workers").stdout.count(" idle ") == 2)
    assert "pg_oauth validator 0 ready" in guide.log_text()

    out = guide.run("pg_hba.conf").stdout
    assert out.count("trust") == 2 and "(4 rows)" in out, out
    guide.run("configuration")

    token = subprocess.run(
        [DEV_PG_OAUTH, "mint", "--dir", keydir, "--sub", "00u1a2b3c4dEXAMPLE",
         "--aud", audience(), "--claim", "email=alice@example.com"],
        capture_output=True, text=True, check=True, env=clean_env()).stdout.strip()
    token_file = workdir / "token.jwt"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)

    out = guide.run("first-login").stdout
    assert re.search(r"^ alice\s+\| alice@example\.com$", out, re.MULTILINE), out

    refused = guide.run("refused-login", stop_on_error=False)
    assert 'password authentication failed for user "alice"' in refused.stderr, refused.stderr
    assert re.search(r'pg_oauth: login of "alice" matched pg_hba.conf line \d+ '
                     r"\(host, scram-sha-256\), not a pg_oauth trust line; \"alice\" has no "
                     r"password: if this was a token login, connect with TLS "
                     r"\(sslmode=verify-full\): trust line 4 is hostssl", refused.stdout), refused

    out = guide.run("check").stdout
    lines = out.splitlines()
    # no risk; the token lines accept any address, which the guide says to narrow
    assert 'database "postgres": 0 risks, 2 warnings' in lines, out
    findings = [line for line in lines if line.startswith(("risk:", "warning:"))]
    assert [f.split(": pg_hba.conf line ")[0] for f in findings] == [
        "warning: trust_from_anywhere"] * 2, findings
    # explain: every check, the last one the decision
    assert "decision" in lines[-2] and "ok: role 'alice' allowed" in lines[-2], out
    assert lines[-1].split() == ["input:", "allowed", "roles:", "alice"], out
    guide.names += "\n$PSQL -At -c 'SELECT severity, check_name FROM oauth.check_setup()'"
    assert guide.run("names").stdout.split() == ["warning|trust_from_anywhere"] * 2

    assert token not in guide.log_text()
