"""When ``--dsn`` connects as the postgres OS user: run as root, no user named,
over the local socket (the rest is libpq's defaults, untouched)."""

from __future__ import annotations

import pytest

from pyhook.local_connection import speaks_for_root

ROOT, OTHER = 0, 1000


@pytest.mark.parametrize(
    ("params", "environ"),
    [
        ({}, {}),
        ({"dbname": "postgres", "port": "5433"}, {}),
        ({"host": "/var/run/postgresql"}, {}),
        ({}, {"PGHOST": "/tmp"}),
    ],
)
def test_root_over_the_local_socket_without_a_user(params, environ) -> None:
    assert speaks_for_root(params, environ, ROOT)


@pytest.mark.parametrize(
    ("params", "environ", "euid"),
    [
        ({}, {}, OTHER),  # not root: libpq's defaults
        ({"user": "postgres"}, {}, ROOT),  # a user named
        ({"user": "admin"}, {}, ROOT),
        ({}, {"PGUSER": "admin"}, ROOT),
        ({"host": "db.example.com"}, {}, ROOT),  # TCP
        ({"host": "127.0.0.1"}, {}, ROOT),
        ({}, {"PGHOST": "localhost"}, ROOT),
        ({"hostaddr": "127.0.0.1"}, {}, ROOT),
        ({}, {"PGHOSTADDR": "127.0.0.1"}, ROOT),
    ],
)
def test_otherwise_libpq_decides(params, environ, euid) -> None:
    assert not speaks_for_root(params, environ, euid)
