"""How `pg-oauth uninstall` reads and rewrites pg_hba.conf and postgresql.conf (the whole
command runs on a real cluster in tests/integration/test_uninstall.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyhook.uninstall import (
    UninstallError,
    backup,
    conf_files,
    dbname_conninfo,
    drop_library_lines,
    includes,
    preload_settings,
    reject_token_lines,
    token_lines,
)

HBA = """\
# TYPE  DATABASE  USER  ADDRESS  METHOD
local   all       postgres       peer
local   all       "trust"        trust   # a role named trust, a trust line
host    all       all   10.0.0.0 255.0.0.0 trust
hostssl all       +oauth_users  0.0.0.0/0  trust
hostssl all       all   ::/0     oauth issuer=https://idp scope=openid validator=pg_oauth
hostssl all       all   ::/0     oauth issuer=https://idp scope=openid validator=other
host    all       all   trust.example.com scram-sha-256
"""


def test_token_lines_are_trust_and_pg_oauth_validated_oauth_lines() -> None:
    lines = token_lines(HBA, ["other"])
    assert [(line.number, line.method) for line in lines] == [
        (3, "trust"), (4, "trust"), (5, "trust"), (6, "oauth")]  # fmt: skip
    # with pg_oauth the only validator, an oauth line without validator= is its too
    implicit = HBA.replace(" validator=other", "")
    assert [line.number for line in token_lines(implicit, ["pg_oauth"])] == [3, 4, 5, 6, 7]


def test_token_lines_become_reject_with_the_old_line_as_a_comment() -> None:
    out = reject_token_lines(HBA, token_lines(HBA, []))
    assert token_lines(out, []) == []
    assert "host    all       all   10.0.0.0 255.0.0.0 reject\n" in out
    assert 'local   all       "trust"        reject\n' in out
    assert "hostssl all       all   ::/0     reject\n" in out  # oauth's options dropped
    assert "# pg-oauth uninstall: was: hostssl all       +oauth_users  0.0.0.0/0  trust\n" in out
    assert "local   all       postgres       peer\n" in out
    assert "trust.example.com scram-sha-256" in out


def test_pg_oauth_leaves_every_preload_setting(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    conf = tmp_path / "postgresql.conf"
    conf.write_text("include_dir = 'conf.d'\n"
                    "shared_preload_libraries = 'pg_stat_statements,pg_oauth'  # both\n"
                    "#session_preload_libraries = 'pg_oauth'\n")  # fmt: skip
    (tmp_path / "conf.d" / "10-oauth.conf").write_text("session_preload_libraries = pg_oauth\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "postgresql.auto.conf").write_text("oauth_validator_libraries = 'pg_oauth'\n")
    files = conf_files(conf, data)
    naming, _ = preload_settings(files)
    assert [(s.path.name, s.number, s.name) for s in naming] == [
        ("postgresql.conf", 2, "shared_preload_libraries"),
        ("10-oauth.conf", 1, "session_preload_libraries"),
        ("postgresql.auto.conf", 1, "oauth_validator_libraries")]  # fmt: skip
    for path in files:
        drop_library_lines(path, [s for s in naming if s.path == path])
    naming, last = preload_settings(conf_files(conf, data))
    assert naming == []
    assert last == {"shared_preload_libraries": "pg_stat_statements",
                    "session_preload_libraries": "", "oauth_validator_libraries": ""}


def test_a_quoted_trust_method_is_a_token_line() -> None:
    """PostgreSQL reads a quoted "trust" as trust: such a line must not outlive pg_oauth."""
    lines = token_lines('host all all 0.0.0.0/0 "trust"\n', [])
    assert [line.method for line in lines] == ["trust"]
    assert reject_token_lines('host all all 0.0.0.0/0 "trust"\n', lines).splitlines()[-1] \
        .split()[-1] == "reject"


def test_continued_lines_are_left_to_the_dba() -> None:
    """A line continued with a backslash (16+) may carry its method on the next line:
    the command stops instead of missing a trust line there."""
    text = "host all all 0.0.0.0/0 \\\n    trust\n# a comment \\\n"
    assert includes(text) == ["host all all 0.0.0.0/0 \\"]


def test_backups_and_rewrites_never_write_through_a_planted_symlink(tmp_path: Path) -> None:
    """The cluster's directory belongs to its OS user: a symlink it plants where the
    command writes must not make root overwrite another file."""
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("host all all 0.0.0.0/0 trust\n")
    stamp = "20261206-000000"
    for name in (f".{hba.name}.pg-oauth-uninstall", f"{hba.name}.pg-oauth-uninstall-{stamp}"):
        (tmp_path / name).symlink_to(victim)
    copy = backup(hba, stamp)
    assert not copy.is_symlink() and copy.read_text() == hba.read_text()
    drop_library_lines(hba, [])  # rewrites the file through a temporary one
    assert victim.read_text() == "root's file\n"
    link = tmp_path / "linked.conf"
    link.symlink_to(hba)
    with pytest.raises(UninstallError, match="not a regular file"):
        backup(link, stamp)
    assert os.path.islink(link)


def test_database_names_are_never_connection_strings() -> None:
    assert dbname_conninfo("app") == "dbname='app'"
    assert dbname_conninfo("host=/tmp/evil dbname=x") == "dbname='host=/tmp/evil dbname=x'"
    assert dbname_conninfo("it's\\") == "dbname='it\\'s\\\\'"
