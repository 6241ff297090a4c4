"""The profile as the one source of where to connect: its host, port, dbname, user,
sslmode and sslrootcert fill in what the caller did not give (in the call, the
connection string or the PG* variables), as ``pg-oauth psql`` does, and sslmode is
verify-full when nobody says: a token is a bearer credential, and libpq's own default
(prefer) would hand it to any server that asks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from pg_oauth_client.profile import CONNECTION_KEYS, Profile

DEFAULT_SSLMODE = "verify-full"


def libpq_defaults(profile: Profile, given: Iterable[str] = (),
                   env: Mapping[str, str] | None = None) -> dict[str, str]:
    """libpq keywords (host, port, dbname, user, sslmode, sslrootcert) from the profile,
    for those not in ``given`` and whose PG* variable is not set; sslmode verify-full."""
    env = os.environ if env is None else env
    given = set(given)
    if "database" in given:
        given.add("dbname")
    wanted = {k: v for k, v in profile.connection}
    wanted.setdefault("sslmode", DEFAULT_SSLMODE)
    return {k: v for k, v in wanted.items()
            if k not in given and not env.get(CONNECTION_KEYS[k])}


def effective_sslmode(profile: Profile, given: Mapping[str, object],
                      env: Mapping[str, str] | None = None) -> str:
    """The sslmode a helper-made connection uses (for advice after a refusal)."""
    env = os.environ if env is None else env
    mode = given.get("sslmode") or env.get("PGSSLMODE") or dict(profile.connection).get(
        "sslmode") or DEFAULT_SSLMODE
    return str(mode)
