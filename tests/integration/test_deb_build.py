"""`make deb` on a build machine as it comes: no git identity, and failures that say what;
and what a server gets, from the package or from `make install`: nothing of the
development tools (devtools/).

The package of Debian's 15 is installed and run by test_dba_guide.py; here only how it is
built and what it holds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pgcluster import PG_BIN, pg_config

ROOT = Path(__file__).resolve().parents[2]
# the development package (devtools/): its modules, and names only its code defines
DEVELOPMENT_FILES = ("pg_oauth_dev", "dev_issuer")
DEVELOPMENT_CODE = (b"forge_hs256", b"DevIssuer")


def make_deb(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """make deb for PG_BIN's server as a user with nothing in HOME and no system git
    configuration: no git identity anywhere (the checkout has none of its own)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DEB_"))}
    clean.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", **env)
    return subprocess.run(["make", "-s", "deb", f"PG_CONFIG={PG_BIN / 'pg_config'}"],
                          cwd=ROOT, env=clean, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def built(out: subprocess.CompletedProcess[str]) -> Path:
    assert out.returncode == 0, f"make deb:\n{out.stdout}\n{out.stderr}"
    deb = Path(out.stdout.splitlines()[-1])
    assert deb.is_file(), out.stdout
    return deb


@pytest.fixture
def empty_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    identity = subprocess.run(["git", "config", "user.name"], cwd=ROOT, capture_output=True,
                              env={"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
                                   "PATH": os.environ["PATH"]}, check=False)  # fmt: skip
    assert identity.returncode == 1, "the checkout itself has a git identity"
    return home


def test_make_deb_needs_no_git_identity(empty_home, tmp_path) -> None:
    deb = built(make_deb(empty_home))
    assert field(deb, "Maintainer") == "pg_oauth developers <root@localhost>"

    # the package's copyright file carries the source tree's license, word for word
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    package = field(deb, "Package")
    copyright_file = (tree / f"usr/share/doc/{package}/copyright").read_text()
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("PostgreSQL License\n\nCopyright (c) ")
    assert ", pg_oauth developers\n" in license_text.splitlines(keepends=True)[2]
    indented = "\n".join(f"  {line}" if line else "  ." for line in license_text.splitlines())
    assert indented in copyright_file, copyright_file
    assert "no license" not in copyright_file
    # and nothing of the development tools
    assert_no_development_tools(tree)


def server_python_tree(root: Path) -> Path:
    """Where make install (under DESTDIR root) put pyhook and the pg-oauth command's modules."""
    return root / pg_config("--sharedir").lstrip("/") / "pg_oauth" / "python"


def assert_no_development_tools(root: Path) -> None:
    """No file under root is a module of the development package or holds its code."""
    found = []
    for path in root.rglob("*"):
        if any(name in path.name for name in DEVELOPMENT_FILES):
            found.append(str(path))
        elif path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {code!r}" for code in DEVELOPMENT_CODE if code in data]
    assert not found, found


def server_pg_oauth(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The tree's pg-oauth (scripts/pg-oauth.in) as the server's Python runs it, its
    modules from the tree instead of where they will be installed."""
    python = server_python_tree(root)
    wrapper = next(root.rglob("bin/pg-oauth")).read_text()
    installed = '"/' + str(python.relative_to(root)) + '"'
    assert wrapper.startswith("#!/usr/bin/python3 -I\n") and installed in wrapper, wrapper
    return subprocess.run(["/usr/bin/python3", "-I", "-c",
                           wrapper.replace(installed, repr(str(python))), *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_make_install_leaves_the_development_tools_out(tmp_path) -> None:
    root = tmp_path / "root"
    out = subprocess.run(["make", "-s", "install", f"PG_CONFIG={PG_BIN / 'pg_config'}",
                          f"DESTDIR={root}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, f"make install:\n{out.stdout}\n{out.stderr}"
    python = server_python_tree(root)
    assert (python / "pyhook" / "validator.py").is_file()
    assert_no_development_tools(root)
    # pg-oauth there: pyhook's subcommands, nothing else; the others say where they are
    entry_points = next(python.glob("pyhook-*.dist-info")) / "entry_points.txt"
    assert entry_points.read_text().split() == [
        "[pg_oauth.commands]", "check", "=", "pyhook.cli:check", "doctor", "=",
        "pyhook.cli:doctor", "explain", "=", "pyhook.cli:explain", "uninstall", "=",
        "pyhook.cli:uninstall"]  # fmt: skip
    done = server_pg_oauth(root, "--help")
    assert done.returncode == 0, done
    assert [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")] \
        == ["explain", "check", "doctor", "uninstall"], done.stdout
    assert "operator commands" in done.stdout and "development" not in done.stdout
    for name in ("dev-issuer", "mint", "rotate"):
        done = server_pg_oauth(root, name, "--help")
        assert done.returncode == 2 and "the development package" in done.stderr, done
    done = server_pg_oauth(root, "token")
    assert done.returncode == 2 and "the client package" in done.stderr, done
    done = server_pg_oauth(root, "doctor", "--help")
    assert done.returncode == 0 and "usage: pg-oauth doctor" in done.stdout, done


def test_deb_maintainer_wins_over_everything(empty_home) -> None:
    deb = built(make_deb(empty_home, DEB_MAINTAINER="Jane DBA <jane@example.com>"))
    assert field(deb, "Maintainer") == "Jane DBA <jane@example.com>"


def test_a_failure_says_what_failed(empty_home) -> None:
    out = subprocess.run(["sh", "scripts/build-deb.sh"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PG_CONFIG": "/nonexistent/pg_config"},
                         check=False)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == "build-deb: no pg_config at '/nonexistent/pg_config' " \
                                 "(set PG_CONFIG)", out.stderr
    # a step that fails with no fail() of its own still names the step
    out = subprocess.run(["sh", "scripts/build-deb.sh"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PG_CONFIG": str(PG_BIN / "pg_config"),
                                         "SERVER_PYTHON": "/bin/false"}, check=False)  # fmt: skip
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("build-deb: "), out.stderr
