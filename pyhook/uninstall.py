"""``pg-oauth uninstall``: take pg_oauth out of a Debian cluster without opening a door.

With pg_oauth loaded, every ``trust`` line of pg_hba.conf is a token line (and on 18+,
every ``oauth`` line whose validator is pg_oauth): take the library away first and those
lines admit anyone without a password, or, with ``session_preload_libraries`` still naming
it, the guard refuses every login. So the steps go in this order, each only after the one
before it worked:

1. pg_hba.conf: every token line becomes ``reject`` (the original kept above it as a
   comment, the whole file backed up beside it); the server reloads.
2. pg_oauth leaves ``shared_preload_libraries``, ``session_preload_libraries`` and
   ``oauth_validator_libraries`` in the files that set them (postgresql.conf, the files it
   includes, postgresql.auto.conf); the server restarts.
3. ``DROP EXTENSION pg_oauth`` in every database that has it.
4. What remains is printed: removing the package (or ``make uninstall``).

Every step looks at the state first, so running it again does only what is left. The
clusters are Debian's (``pg_lsclusters``: ``/etc/postgresql/<version>/<name>``); the
command runs as root, the SQL as the cluster's owner over its local socket.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LIBRARY = "pg_oauth"
PRELOAD_SETTINGS = (
    "shared_preload_libraries",
    "session_preload_libraries",
    "oauth_validator_libraries",
)
ETC = Path("/etc/postgresql")
MARK = "# pg-oauth uninstall: was:"
FORCE_VARIABLE = "PG_OAUTH_FORCE_REMOVE"


class UninstallError(Exception):
    """A step cannot go on; the message says why and what to do."""


# --- pg_hba.conf -------------------------------------------------------------------------


def _fields(line: str) -> list[tuple[int, int, str]]:
    """The fields of a pg_hba.conf line with their spans; a quoted field keeps its quotes.
    A comment (outside quotes) ends the line."""
    out: list[tuple[int, int, str]] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        if line[i] == "#":
            break
        start, quoted = i, False
        while i < n and (quoted or not (line[i].isspace() or line[i] == "#")):
            if line[i] == '"':
                quoted = not quoted
            i += 1
        out.append((start, i, line[start:i]))
    return out


def _method_index(fields: list[str]) -> int | None:
    """Where the method is: local TYPE DB USER METHOD; host* TYPE DB USER ADDR [MASK]
    METHOD (a mask follows an address without a slash that is no host name keyword)."""
    if not fields:
        return None
    kind = fields[0]
    if kind == "local":
        return 3 if len(fields) > 3 else None
    if not kind.startswith("host"):
        return None
    if len(fields) < 5:
        return None
    address = fields[3]
    looks_ip = re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*", address) is not None
    if looks_ip and "/" not in address and len(fields) > 5 and \
            re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*", fields[4]):  # fmt: skip
        return 5
    return 4


def _validators(options: list[str], default_validators: list[str]) -> list[str]:
    for option in options:
        name, _, value = option.partition("=")
        if name == "validator":
            return [value.strip('"')]
    return default_validators


@dataclass
class HbaLine:
    number: int  # 1-based, as pg_hba_file_rules counts
    text: str
    method: str
    method_span: tuple[int, int]

    def rejected(self) -> str:
        """The same line, its method reject (the options of the old method dropped)."""
        return self.text[: self.method_span[0]] + "reject"


def token_lines(text: str, oauth_validators: list[str]) -> list[HbaLine]:
    """The lines pg_oauth acts on: trust lines, and oauth lines it validates."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        spans = _fields(line)
        words = [w for _, _, w in spans]
        where = _method_index(words)
        if where is None or where >= len(words):
            continue
        method = words[where].strip('"')  # PostgreSQL reads "trust" as trust
        if method == "trust" or (
            method == "oauth"
            and LIBRARY in _validators(words[where + 1 :], oauth_validators)
        ):
            found.append(HbaLine(number, line, method, spans[where][:2]))
    return found


def includes(text: str) -> list[str]:
    """Lines this tool cannot follow: include directives, and lines continued on the next
    (a backslash at the end, PostgreSQL 16+), whose method may sit on another line."""
    return [line for line in text.splitlines()
            if (line.split()[:1] and line.split()[0] in ("include", "include_if_exists",
                                                           "include_dir"))
            or (not line.lstrip().startswith("#") and line.rstrip().endswith("\\"))]  # fmt: skip


def reject_token_lines(text: str, lines: list[HbaLine]) -> str:
    by_number = {line.number: line for line in lines}
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if number in by_number:
            out.append(f"{MARK} {line.strip()}")
            out.append(by_number[number].rejected())
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# --- postgresql.conf ---------------------------------------------------------------------

_SETTING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$")


def _value(raw: str) -> str:
    """A postgresql.conf value without its quotes and trailing comment."""
    raw = raw.strip()
    if raw.startswith("'"):
        out, i = [], 1
        while i < len(raw):
            if raw[i] == "'" and raw[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
            elif raw[i] == "\\" and i + 1 < len(raw):
                out.append(raw[i + 1])
                i += 2
            elif raw[i] == "'":
                break
            else:
                out.append(raw[i])
                i += 1
        return "".join(out)
    return raw.split("#", 1)[0].strip()


def libraries(value: str) -> list[str]:
    return [part.strip().strip('"') for part in value.split(",") if part.strip()]


@dataclass
class ConfSetting:
    path: Path
    number: int  # 1-based
    name: str
    value: str

    def without_library(self) -> str:
        rest = [lib for lib in libraries(self.value) if lib != LIBRARY]
        return f"{self.name} = '{', '.join(rest)}'"


def conf_files(conf: Path, data_directory: Path | None) -> list[Path]:
    """postgresql.conf, what it includes (in order), then postgresql.auto.conf."""
    seen: list[Path] = []

    def visit(path: Path) -> None:
        if path in seen or not path.is_file():
            return
        seen.append(path)
        for line in path.read_text(errors="replace").splitlines():
            m = _SETTING.match(line)
            if not m or line.lstrip().startswith("#"):
                continue
            name, value = m.group(1), _value(m.group(2))
            target = Path(value) if value.startswith("/") else path.parent / value
            if name in ("include", "include_if_exists"):
                visit(target)
            elif name == "include_dir" and target.is_dir():
                for child in sorted(target.glob("*.conf")):
                    if not child.name.startswith("."):
                        visit(child)

    visit(conf)
    if data_directory is not None:
        visit(data_directory / "postgresql.auto.conf")
    return seen


def preload_settings(files: list[Path]) -> tuple[list[ConfSetting], dict[str, str]]:
    """Every line that names pg_oauth in one of the preload settings, and the value each
    setting ends up with (the last line wins, as for the server)."""
    naming, last = [], {}
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            m = _SETTING.match(line)
            if not m or m.group(1) not in PRELOAD_SETTINGS:
                continue
            setting = ConfSetting(path, number, m.group(1), _value(m.group(2)))
            last[setting.name] = setting.value
            if LIBRARY in libraries(setting.value):
                naming.append(setting)
    return naming, last


def drop_library_lines(path: Path, settings: list[ConfSetting]) -> None:
    lines = path.read_text().splitlines()
    for setting in sorted(settings, key=lambda s: -s.number):
        old = lines[setting.number - 1]
        replacement = [setting.without_library()]
        if path.name != "postgresql.auto.conf":  # ALTER SYSTEM rewrites that one whole
            replacement.insert(0, f"{MARK} {old.strip()}")
        lines[setting.number - 1 : setting.number] = replacement
    _write_like(path, "\n".join(lines) + "\n")


def _write_beside(path: Path, data: bytes, like: os.stat_result, prefix: str) -> Path:
    """A new file in path's directory holding data, owned and moded like ``like``.

    The directories these files sit in belong to the cluster's OS user (postgres), who
    must not be able to make root write through a symlink: the name is random, the file
    is created exclusively and never followed, and ownership is set on the descriptor.
    """
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, like.st_uid, like.st_gid)
        os.fchmod(fd, like.st_mode & 0o7777)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def _regular(path: Path) -> os.stat_result:
    """path's status; a symlink or anything but a regular file is refused."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UninstallError(f"{path} is not a regular file (a symlink?): change it by hand")
    return st


def _write_like(path: Path, text: str) -> None:
    """Replace path's contents, keeping its owner and mode, atomically."""
    st = _regular(path)
    tmp = _write_beside(path, text.encode(), st, f".{path.name}.pg-oauth-uninstall.")
    os.replace(tmp, path)


def backup(path: Path, stamp: str) -> Path:
    """A copy of path beside it, named after the run (its name printed, never guessed)."""
    st = _regular(path)
    return _write_beside(path, path.read_bytes(), st, f"{path.name}.pg-oauth-uninstall-{stamp}.")


def dbname_conninfo(database: str) -> str:
    """psql's -d for a database name: a conninfo that names it, so that a name such as
    'host=/tmp/x dbname=y' (any role with CREATEDB can make one) is never read as a
    connection string of its own."""
    return "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- a Debian cluster --------------------------------------------------------------------


@dataclass
class DebianCluster:
    version: str
    name: str
    owner: str = "postgres"
    data_directory: Path | None = None
    online: bool = False

    @classmethod
    def find(cls, spec: str) -> DebianCluster:
        version, sep, name = spec.partition("/")
        if not sep or not version or not name or "/" in name:
            raise UninstallError(f"--cluster {spec!r}: expected VERSION/NAME, as "
                                 "pg_lsclusters lists them (15/main)")  # fmt: skip
        conf = ETC / version / name / "postgresql.conf"
        if not conf.is_file():
            raise UninstallError(f"no cluster {version}/{name}: {conf} does not exist "
                                 "(pg_lsclusters lists the clusters)")  # fmt: skip
        cluster = cls(version, name)
        cluster.refresh()
        return cluster

    @property
    def conf_dir(self) -> Path:
        return ETC / self.version / self.name

    def refresh(self) -> None:
        out = _run(["pg_lsclusters", "-h", self.version, self.name])
        fields = out.stdout.split()
        if out.returncode != 0 or len(fields) < 6:
            raise UninstallError(f"pg_lsclusters {self.version} {self.name} failed: "
                                 f"{out.stderr.strip() or out.stdout.strip()}")  # fmt: skip
        self.online = fields[3].startswith("online")
        self.owner = fields[4]
        self.data_directory = Path(fields[5])

    def hba_file(self) -> Path:
        last: dict[str, str] = {}
        for path in conf_files(self.conf_dir / "postgresql.conf", None):
            for line in path.read_text(errors="replace").splitlines():
                m = _SETTING.match(line)
                if m and not line.lstrip().startswith("#") and m.group(1) == "hba_file":
                    last["hba_file"] = _value(m.group(2))
        return Path(last.get("hba_file") or self.conf_dir / "pg_hba.conf")

    def psql(self, database: str, sql: str, *,
             separator_zero: bool = False) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return _run(["runuser", "-u", self.owner, "--", "psql", "--cluster",
                     f"{self.version}/{self.name}", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                     *(["-0"] if separator_zero else []),
                     "-d", dbname_conninfo(database), "-c", sql], cwd="/")  # fmt: skip

    def query(self, database: str, sql: str) -> list[str]:
        out = self.psql(database, sql)
        if out.returncode != 0:
            raise UninstallError(f"cluster {self.version}/{self.name}, database "
                                 f"{database!r}: {out.stderr.strip()}")  # fmt: skip
        return out.stdout.splitlines()

    def ctl(self, action: str) -> None:
        out = _run(["pg_ctlcluster", self.version, self.name, action], cwd="/")
        if out.returncode != 0:
            raise UninstallError(f"pg_ctlcluster {self.version} {self.name} {action} "
                                 f"failed: {(out.stderr or out.stdout).strip()}")  # fmt: skip
        self.refresh()


def _run(cmd: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False,
                              timeout=300)  # fmt: skip
    except FileNotFoundError:
        raise UninstallError(f"{cmd[0]} is missing: Debian's postgresql-common provides "
                             "it") from None  # fmt: skip


def _say(text: str) -> None:
    print(text, flush=True)


# --- the steps ---------------------------------------------------------------------------


def _oauth_validators(cluster: DebianCluster) -> list[str]:
    files = conf_files(cluster.conf_dir / "postgresql.conf", cluster.data_directory)
    _, last = preload_settings(files)
    return libraries(last.get("oauth_validator_libraries", ""))


def step_hba(cluster: DebianCluster, stamp: str, dry_run: bool) -> None:
    hba = cluster.hba_file()
    text = hba.read_text()
    if includes(text):
        raise UninstallError(f"{hba} includes other files ({includes(text)[0].strip()}): "
                             "make every token line (trust; oauth with validator pg_oauth) "
                             "reject by hand, reload, and run pg-oauth uninstall again")  # fmt: skip
    lines = token_lines(text, _oauth_validators(cluster))
    if not lines:
        _say(f"1. {hba}: no token line (trust, or oauth validated by pg_oauth): "
             "nothing to do")  # fmt: skip
        return
    _say(f"1. {hba}: {len(lines)} token line(s) become reject, then the server reloads:")
    for line in lines:
        _say(f"     line {line.number}: {line.text.strip()}")
        _say(f"       -> {line.rejected().strip()}")
    if dry_run:
        return
    copy = backup(hba, stamp)
    _write_like(hba, reject_token_lines(text, lines))
    _say(f"   done; the file as it was: {copy}")
    if cluster.online:
        cluster.ctl("reload")
        check = cluster.psql("postgres", "SELECT line_number, error FROM pg_hba_file_rules "
                                         "WHERE error IS NOT NULL")  # fmt: skip
        if check.returncode == 0 and check.stdout.strip():
            raise UninstallError(f"{hba} does not parse after the change "
                                 f"({check.stdout.strip()}); the server keeps the lines "
                                 f"it had. The file as it was: {copy}")  # fmt: skip
        # what the server itself now reads: no line left that admits without a password
        left = cluster.query("postgres", "SELECT line_number FROM pg_catalog.pg_hba_file_rules "
                                         "WHERE auth_method = 'trust' ORDER BY 1")  # fmt: skip
        if left:
            raise UninstallError(f"{hba}: the server still reads trust on line(s) "
                                 f"{', '.join(left)}; make them reject by hand, reload, "
                                 "and run pg-oauth uninstall again (nothing else was "
                                 f"changed). The file as it was: {copy}")  # fmt: skip
        _say("   reloaded")
    else:
        _say("   the cluster is down: the file applies when it starts")


def step_preload(cluster: DebianCluster, stamp: str, dry_run: bool) -> None:
    files = conf_files(cluster.conf_dir / "postgresql.conf", cluster.data_directory)
    naming, _ = preload_settings(files)
    if not naming:
        _say("2. no configuration file names pg_oauth in "
             f"{', '.join(PRELOAD_SETTINGS)}: nothing to do")  # fmt: skip
    else:
        _say("2. pg_oauth leaves these settings, in the files that set them, then the "
             "server restarts:")  # fmt: skip
        for setting in naming:
            _say(f"     {setting.path}:{setting.number}: {setting.name} = '{setting.value}'"
                 f" -> {setting.without_library()}")  # fmt: skip
        if dry_run:
            return
        for path in dict.fromkeys(s.path for s in naming):
            copy = backup(path, stamp)
            drop_library_lines(path, [s for s in naming if s.path == path])
            _say(f"   {path} changed; as it was: {copy}")
    if dry_run:
        return
    if not cluster.online:
        cluster.ctl("start")
        _say(f"   cluster {cluster.version}/{cluster.name} started without pg_oauth")
    elif naming or _still_loaded(cluster):
        cluster.ctl("restart")
        _say(f"   cluster {cluster.version}/{cluster.name} restarted without pg_oauth")


def _still_loaded(cluster: DebianCluster) -> bool:
    """Whether the running server has pg_oauth loaded (a run that edited the files and
    could not restart); no login at all (the guard, the library gone) counts as yes."""
    out = cluster.psql("postgres", "SELECT current_setting('shared_preload_libraries') || ','"
                                   " || current_setting('session_preload_libraries')")
    return out.returncode != 0 or LIBRARY in libraries(out.stdout.strip())


def step_drop(cluster: DebianCluster, cascade: bool, dry_run: bool) -> None:
    if not cluster.online:
        if dry_run:
            _say("3. DROP EXTENSION pg_oauth in every database that has it (the cluster is "
                 "down now: it is started after step 2)")  # fmt: skip
            return
        raise UninstallError(f"cluster {cluster.version}/{cluster.name} is down")
    listed = cluster.psql("postgres", "SELECT datname FROM pg_catalog.pg_database "
                                      "WHERE datallowconn ORDER BY datname",
                          separator_zero=True)  # fmt: skip
    if listed.returncode != 0:
        raise UninstallError(f"cluster {cluster.version}/{cluster.name}: "
                             f"{listed.stderr.strip()}")  # fmt: skip
    # NUL-separated: a database name may hold a newline
    out = listed.stdout.removesuffix("\n")
    databases = [db for db in out.split("\0") if db]
    having = [db for db in databases if cluster.query(
        db, "SELECT count(*) FROM pg_catalog.pg_extension WHERE extname = 'pg_oauth'") == ["1"]]
    if not having:
        _say("3. no database has the extension pg_oauth: nothing to do")
        return
    how = "DROP EXTENSION pg_oauth" + (" CASCADE" if cascade else "")
    _say(f"3. {how} in: {', '.join(having)}")
    if dry_run:
        return
    for db in having:
        out = cluster.psql(db, how)
        if out.returncode != 0:
            raise UninstallError(f"database {db!r}: {out.stderr.strip()}"
                                 + ("" if cascade else "; drop what depends on pg_oauth "
                                    "(RLS policies on oauth.claim(), ...) or run again "
                                    "with --cascade"))  # fmt: skip
        _say(f"   {db}: dropped")


def step_remains(cluster: DebianCluster) -> None:
    package = f"postgresql-{cluster.version}-pg-oauth"
    status = _run(["dpkg-query", "-W", "-f=${Status}", package]).stdout
    _say(f"4. cluster {cluster.version}/{cluster.name} is free of pg_oauth. What remains:")
    if status == "install ok installed":
        others = [c for c in pending_clusters(cluster.version) if c[0] != cluster.name]
        if others:
            _say(f"     other clusters still use pg_oauth: "
                 f"{', '.join(c[0] for c in others)} (pg-oauth uninstall --cluster "
                 f"{cluster.version}/NAME for each), then:")  # fmt: skip
        _say(f"     apt-get remove {package}")
    else:
        _say("     the files of make install: make uninstall in the source tree")
    _say("     the token roles and the backups of the changed files, "
         "*.pg-oauth-uninstall-*, are left for you")  # fmt: skip


def uninstall(spec: str, dry_run: bool = False, cascade: bool = False) -> None:
    if os.geteuid() != 0:
        raise UninstallError("run it as root: it edits the cluster's files and restarts it")
    cluster = DebianCluster.find(spec)
    stamp = time.strftime("%Y%m%d%H%M%S")
    if dry_run:
        _say(f"pg-oauth uninstall --cluster {spec}: the plan (--dry-run: nothing changes)")
    step_hba(cluster, stamp, dry_run)
    step_preload(cluster, stamp, dry_run)
    step_drop(cluster, cascade, dry_run)
    if not dry_run:
        step_remains(cluster)


# --- what the package's prerm asks -------------------------------------------------------


def pending_clusters(version: str) -> list[tuple[str, list[str]]]:
    """The clusters of this major that still use pg_oauth, each with why: a preload
    setting names it, or pg_hba.conf has a token line. Files only: no server needed."""
    pending = []
    for conf in sorted(glob.glob(str(ETC / version / "*" / "postgresql.conf"))):
        cluster = DebianCluster(version, Path(conf).parent.name)
        data = _data_directory(Path(conf))
        files = conf_files(Path(conf), data)
        naming, last = preload_settings(files)
        why = [f"{s.path}:{s.number}: {s.name} names pg_oauth" for s in naming]
        hba = cluster.hba_file()
        if hba.is_file():
            validators = libraries(last.get("oauth_validator_libraries", ""))
            text = hba.read_text(errors="replace")
            lines = token_lines(text, validators)
            why += [f"{hba}:{line.number}: {line.method} line" for line in lines]
            # what this check cannot follow may hide a trust line
            why += [f"{hba}: {line.strip()} (check it by hand)" for line in includes(text)]
        if why:
            pending.append((cluster.name, why))
    return pending


def _data_directory(conf: Path) -> Path | None:
    for line in conf.read_text(errors="replace").splitlines():
        m = _SETTING.match(line)
        if m and not line.lstrip().startswith("#") and m.group(1) == "data_directory":
            return Path(_value(m.group(2)))
    return None


def check_removal(version: str) -> int:
    """prerm's question: 0 when no cluster of this major uses pg_oauth any more."""
    pending = pending_clusters(version)
    if not pending:
        return 0
    package = f"postgresql-{version}-pg-oauth"
    print(f"{package}: not removed: these clusters still use pg_oauth, and removing it now "
          "would leave their token lines admitting anyone without a password, or no login "
          "at all:", file=sys.stderr)  # fmt: skip
    for name, why in pending:
        print(f"  cluster {version}/{name}:", file=sys.stderr)
        for reason in why:
            print(f"    {reason}", file=sys.stderr)
    print("Run, for each:", file=sys.stderr)
    for name, _ in pending:
        print(f"  pg-oauth uninstall --cluster {shlex.quote(f'{version}/{name}')}",
              file=sys.stderr)  # fmt: skip
    print(f"then remove the package again; {FORCE_VARIABLE}=1 in the environment removes "
          "it anyway.", file=sys.stderr)  # fmt: skip
    return 1
