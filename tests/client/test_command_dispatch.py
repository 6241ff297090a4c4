"""One pg-oauth (the client's pg_oauth_command) runs the subcommands that the packages
installed register in the entry-point group pg_oauth.commands, and names the package of
one that is missing.

Most tests run it with the standard library only (python -I -S) and packages made here,
as pip lays them out (a dist-info directory and a module): none, the client's alone, all
of them, one that cannot load. The last ones run it with the tree's own packages, as the
test venv has them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import distribution
from pathlib import Path

import pytest
from client_support import CLIENT_DIR
from pg_oauth_command import GROUP, PACKAGES
from test_client_units import fake_jwt

OWNER = CLIENT_DIR / "pg_oauth_command.py"
VENV_PG_OAUTH = Path(sys.executable).parent / "pg-oauth"


class Site:
    """A directory of packages for the owner to find, and the owner alone beside it."""

    def __init__(self, tmp_path: Path) -> None:
        self.packages = tmp_path / "site"
        self.owner = tmp_path / "owner"
        self.packages.mkdir()
        self.owner.mkdir()
        shutil.copy(OWNER, self.owner)

    def add(self, dist: str, commands: dict[str, str], *, module: str | None = None) -> None:
        """A distribution registering commands (name -> summary); each prints its name and
        arguments as JSON and exits 3."""
        module = module or "fake_" + dist.replace("-", "_")
        info = self.packages / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[{GROUP}]\n"
            + "".join(f"{name} = {module}:{name.replace('-', '_')}\n" for name in commands))
        (self.packages / f"{module}.py").write_text("import json\n" + "".join(
            f"def {name.replace('-', '_')}(argv):\n"
            f"    {summary!r}\n"
            f"    print(json.dumps([{name!r}, argv]))\n"
            f"    return 3\n"
            for name, summary in commands.items()))  # fmt: skip

    def pg_oauth(self, *args: str) -> subprocess.CompletedProcess[str]:
        # -S: no site-packages, so nothing of the venv; -I: no PYTHONPATH, no user site
        code = ("import sys; sys.path[:0] = [sys.argv.pop(1), sys.argv.pop(1)]\n"
                "import pg_oauth_command; sys.exit(pg_oauth_command.main())")
        return subprocess.run([sys.executable, "-I", "-S", "-c", code, str(self.packages),
                               str(self.owner), *args], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


CLIENT = {"token": "print a token", "exec": "run a command"}
SERVER = {"explain": "every check", "check": "one line", "doctor": "every risk",
          "uninstall": "take it out"}  # fmt: skip
DEVELOPMENT = {"dev-issuer": "serve an issuer", "mint": "print a token", "rotate": "a key"}


def test_with_no_package_each_command_names_its_package(site: Site) -> None:
    out = site.pg_oauth("--help")
    assert out.returncode == 0 and "no commands installed" in out.stdout, out
    for name, package in (("explain", "the server package (pyhook)"),
                          ("uninstall", "the server package (pyhook)"),
                          ("mint", "the development package (pg_oauth_dev)"),
                          ("token", "the client package (pg_oauth_client)")):  # fmt: skip
        out = site.pg_oauth(name, "--role", "alice")
        assert out.returncode == 2 and out.stdout == "", out
        assert f"pg-oauth: {name} comes with {package}, which is not installed here" \
            in out.stderr, out.stderr
    out = site.pg_oauth("frobnicate")
    assert out.returncode == 2 and "no command 'frobnicate'" in out.stderr, out
    out = site.pg_oauth()
    assert out.returncode == 2 and out.stderr.startswith("usage: pg-oauth"), out


def test_the_client_alone(site: Site) -> None:
    site.add("pg-oauth-client", CLIENT)
    out = site.pg_oauth("--help")
    assert out.returncode == 0, out
    assert "client commands" in out.stdout and "operator commands" not in out.stdout
    assert "\n  token       print a token\n" in out.stdout, out.stdout
    out = site.pg_oauth("token", "--profile", "prod", "--", "-x")
    assert out.returncode == 3 and json.loads(out.stdout) == ["token", ["--profile", "prod",
                                                                        "--", "-x"]]
    out = site.pg_oauth("explain", "--help")
    assert out.returncode == 2 and "explain comes with the server package" in out.stderr


def test_every_package_brings_its_own(site: Site) -> None:
    site.add("pg-oauth-client", CLIENT)
    site.add("pyhook", SERVER)
    site.add("pg-oauth-dev", DEVELOPMENT)
    site.add("someone-else", {"extra": "a command of another package"})
    out = site.pg_oauth("--help")
    assert out.returncode == 0, out
    text = out.stdout
    headings = ["operator commands", "development commands", "client commands",
                "commands of someone-else"]  # fmt: skip
    assert sorted(headings, key=text.index) == headings, text
    operator = text[text.index("operator"):text.index("development commands")]
    assert [line.split()[0] for line in operator.splitlines()[1:] if line] == list(SERVER)
    for commands in (CLIENT, SERVER, DEVELOPMENT, {"extra": ""}):
        for name in commands:
            out = site.pg_oauth(name, "a", "--b")
            assert (out.returncode, json.loads(out.stdout)) == (3, [name, ["a", "--b"]]), out
    out = site.pg_oauth("--version")
    assert out.stdout.strip() == ("pg-oauth pg-oauth-client 1.0, pg-oauth-dev 1.0, "
                                  "pyhook 1.0, someone-else 1.0"), out


def test_a_package_that_cannot_load_is_named(site: Site) -> None:
    site.add("pyhook", {"explain": "every check"}, module="needs_what_is_missing")
    (site.packages / "needs_what_is_missing.py").write_text("import no_such_module\n")
    out = site.pg_oauth("--help")
    assert out.returncode == 0 and "explain     (cannot be loaded:" in out.stdout, out
    out = site.pg_oauth("explain")
    assert out.returncode == 2 and "pg-oauth explain: cannot be loaded" in out.stderr, out
    assert "(pyhook)" in out.stderr


# -- the tree's packages, as the test venv has them -------------------------------------

def test_each_package_registers_what_the_owner_names() -> None:
    """The owner's table of who brings what (for its messages) is what each registers."""
    for package, expected in PACKAGES.items():
        registered = [e for e in distribution(package).entry_points if e.group == GROUP]
        assert sorted(e.name for e in registered) == sorted(expected.commands), package
        for entry in registered:
            assert (entry.load().__doc__ or "").strip(), f"{entry.name}: no summary"


def test_the_venv_pg_oauth_has_every_subcommand(tmp_path: Path) -> None:
    out = subprocess.run([str(VENV_PG_OAUTH), "--help"], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out
    for package in PACKAGES.values():
        section = out.stdout[out.stdout.index(package.title):]
        section = section[:section.find("\n\n")]
        assert [line.split()[0] for line in section.splitlines()[1:]] == list(package.commands)

    # a client command, through the owner, as `pg-oauth token` and `python -m pg_oauth_client`
    token = fake_jwt({"exp": time.time() + 300})
    (tmp_path / "t").write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_OAUTH_")}
    env.update({"PG_OAUTH_CONFIG": str(tmp_path / "none"), "PG_OAUTH_FLOW": "token_file",
                "PG_OAUTH_TOKEN_FILE": str(tmp_path / "t")})  # fmt: skip
    for command in ([str(VENV_PG_OAUTH)], [sys.executable, "-m", "pg_oauth_client"]):
        done = subprocess.run([*command, "token"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0 and done.stdout.strip() == token, done.stderr
