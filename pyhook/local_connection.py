"""How ``pg-oauth explain``/``check``/``doctor`` connect with ``--dsn``.

As libpq would, with one habit of Debian's servers added: run as root with no
user named (not in the DSN, not in ``PGUSER``) over the local socket, they
connect the way ``runuser -u postgres -- psql`` does, as the ``postgres`` OS
user, whom peer authentication (Debian's ``local all postgres peer``) admits as
the ``postgres`` role. Root has no role of its own, and these commands need a
superuser. The process gives up root for good before it connects, so whatever
it must read (the token, a configuration file) is read first.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from typing import Any

SERVER_OS_USER = "postgres"


def speaks_for_root(
    params: Mapping[str, Any], environ: Mapping[str, str], euid: int
) -> bool:
    """Whether a connection with these parameters goes as the server's OS user."""
    if euid != 0 or params.get("user") or environ.get("PGUSER"):
        return False
    host = params.get("host") or environ.get("PGHOST") or ""
    hostaddr = params.get("hostaddr") or environ.get("PGHOSTADDR") or ""
    # a Unix socket: no host, or a directory (libpq's rule: it starts with a slash)
    return not hostaddr and (not host or host.startswith("/"))


def connection_params(dsn: str) -> dict[str, Any]:
    """The parameters to connect with (psycopg needed); may give up root."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    if speaks_for_root(params, os.environ, os.geteuid()):
        try:
            server = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            return params  # not a Debian-style server: libpq's defaults as they are
        os.initgroups(server.pw_name, server.pw_gid)
        os.setgid(server.pw_gid)
        os.setuid(server.pw_uid)
        os.environ["HOME"] = server.pw_dir  # its ~/.pgpass, not root's
        params["user"] = SERVER_OS_USER
    return params
