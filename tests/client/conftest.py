"""The client tests' fixtures: they live in client_support.py (a module name of its own,
so that tests can import its helpers whatever other conftest.py was imported last)."""

from client_support import client, cluster, idp, workdir, workload_issuer

__all__ = ["client", "cluster", "idp", "workdir", "workload_issuer"]
