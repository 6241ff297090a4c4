"""The client tests' fixtures: they live in client_support.py (a module name of its own,
so that tests can import its helpers whatever other conftest.py was imported last)."""

from pathlib import Path

import pytest
from client_support import client, cluster, idp, workdir, workload_issuer

__all__ = ["client", "cluster", "idp", "workdir", "workload_issuer"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the cluster starts a PostgreSQL server: `-m "not server"`."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.resolve().parents and "cluster" in getattr(
                item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
            item.add_marker(pytest.mark.slow)
