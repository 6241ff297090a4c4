"""``pg-oauth``: one command, whose subcommands come from the pg_oauth packages installed.

Each package registers its subcommands in the entry-point group ``pg_oauth.commands``: the
entry point's name is the subcommand, its object a function ``(argv) -> int`` that parses
the arguments after the name itself (``prog="pg-oauth NAME"``), and the first line of its
docstring is what ``pg-oauth --help`` says of it. The client registers token, psql, exec,
login, logout, profiles and whoami; pyhook, the server side, explain, check, doctor and uninstall;
the development package (devtools/) dev-issuer, mint and rotate. The packages know the
group's name and nothing of this module; this module imports none of them until a
subcommand of theirs runs.

Standard library only: ``make install`` puts this module beside pyhook on a server, where
the client's dependencies are not installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, distributions

GROUP = "pg_oauth.commands"
EXIT_USAGE = 2
USAGE = "usage: pg-oauth [-h] [--version] COMMAND ..."


@dataclass(frozen=True)
class Package:
    """A package of this project that brings subcommands."""

    title: str  # the heading of its subcommands in --help
    commands: tuple[str, ...]  # what it registers, for the message when it is missing
    how_to_get: str


# By distribution name, in the order --help shows them. Only the messages for a subcommand
# that is not installed read the command names (tests/client/test_command_dispatch.py checks
# them against what each package registers); what runs is what the group holds.
PACKAGES = {
    "pyhook": Package(
        "operator commands (the server's administrators)",
        ("explain", "check", "doctor", "uninstall"),
        "the server package (pyhook), which is not installed here: on the database "
        "server, make install or the Debian package of make deb puts pg-oauth there "
        "with it",
    ),
    "pg-oauth-dev": Package(
        "development commands (a local stand-in issuer and its tokens; "
        "never for production)",
        ("dev-issuer", "mint", "rotate"),
        "the development package (pg_oauth_dev), which is not installed here: "
        "pip install ./devtools from the pg_oauth tree (docs/dev-tools.md); never on a "
        "production server",
    ),
    "pg-oauth-client": Package(
        "client commands (tokens for PostgreSQL logins: docs/clients.md)",
        ("token", "psql", "exec", "login", "logout", "profiles", "whoami"),
        "the client package (pg_oauth_client), which is not installed here: "
        "pip install ./client from the pg_oauth tree (docs/clients.md)",
    ),
}


@dataclass(frozen=True)
class Command:
    name: str
    package: str  # the normalized name of the distribution that registers it
    version: str
    entry_point: EntryPoint


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_commands() -> dict[str, Command]:
    """Every subcommand registered in GROUP by a distribution on sys.path; of two with one
    name, the first on sys.path, as for imports."""
    found: dict[str, Command] = {}
    for dist in distributions():
        package = _normalized(dist.metadata["Name"] or "")
        for entry_point in dist.entry_points:
            if entry_point.group == GROUP:
                found.setdefault(entry_point.name,
                                 Command(entry_point.name, package, dist.version, entry_point))
    return found


def _load(command: Command) -> Callable[[list[str]], int]:
    return command.entry_point.load()


def _summary(command: Command) -> str:
    try:
        doc = _load(command).__doc__ or ""
    except (ImportError, AttributeError) as exc:  # e.g. its own dependencies are missing
        return f"(cannot be loaded: {exc})"
    lines = doc.strip().splitlines()
    return lines[0] if lines else ""


def _help(commands: dict[str, Command]) -> str:
    by_package: dict[str, list[Command]] = {}
    for command in commands.values():
        by_package.setdefault(command.package, []).append(command)
    known = [p for p in PACKAGES if p in by_package]
    sections = []
    for package in known + sorted(set(by_package) - set(PACKAGES)):
        order = PACKAGES[package].commands if package in PACKAGES else ()
        ranked = sorted(by_package[package],
                        key=lambda c: (order.index(c.name) if c.name in order else len(order),
                                       c.name))
        title = PACKAGES[package].title if package in PACKAGES else f"commands of {package}"
        rows = "\n".join(f"  {c.name:<11} {_summary(c)}" for c in ranked)
        sections.append(f"{title}:\n{rows}")
    if not sections:
        sections.append("no commands installed: they come with pg_oauth's packages "
                        "(the client: pip install ./client; the server: make install)")
    return "\n\n".join([USAGE, *sections, "`pg-oauth COMMAND --help` describes one."])


def _not_installed(name: str) -> str:
    for package in PACKAGES.values():
        if name in package.commands:
            return f"pg-oauth: {name} comes with {package.how_to_get}"
    return f"pg-oauth: no command {name!r} (pg-oauth --help lists the ones installed here)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = installed_commands()
    if not args:
        print(_help(commands), file=sys.stderr)
        return EXIT_USAGE
    name, rest = args[0], args[1:]
    if name in ("-h", "--help"):
        print(_help(commands))
        return 0
    if name == "--version":
        packages = sorted({(c.package, c.version) for c in commands.values()})
        print("pg-oauth", ", ".join(f"{p} {v}" for p, v in packages) or "(no commands)")
        return 0
    if name not in commands:
        print(USAGE, file=sys.stderr)
        print(_not_installed(name), file=sys.stderr)
        return EXIT_USAGE
    try:
        run = _load(commands[name])
    except (ImportError, AttributeError) as exc:
        print(f"pg-oauth {name}: cannot be loaded ({exc}): reinstall the package that "
              f"brings it ({commands[name].package})", file=sys.stderr)
        return EXIT_USAGE
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
