"""A libpq password file that holds a fresh token for as long as a child command runs.

PGPASSWORD cannot change once the child has started, so a command that connects again
after its token expired would be refused. libpq reads the file named by PGPASSFILE at
every connection instead: pg-oauth psql/exec write the token there (mode 0600, in a
private 0700 directory, on tmpfs when $XDG_RUNTIME_DIR is set) and a thread replaces it
ahead of its expiry, through the cache's own renewal rule, until the child exits; then
the directory is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import final

from pg_oauth_client.errors import ClientError
from pg_oauth_client.tokens import Token

Renew = Callable[[], Token]
Notify = Callable[[str], None]

_MIN_WAIT, _MAX_WAIT = 1.0, 60.0


def _escaped(token: str) -> str:
    """The passfile's field syntax: ':' and '\\' are escaped with a backslash."""
    return token.replace("\\", "\\\\").replace(":", "\\:")


@final
class LivePassfile:
    """``with LivePassfile(first, renew, notify) as pf:`` run the child with
    ``PGPASSFILE=pf.path``; ``pf.token`` is the token the file holds now."""

    def __init__(self, first: Token, renew: Renew, notify: Notify) -> None:
        self.token = first
        self._renew = renew
        self._notify = notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_fresh, name="pg-oauth-passfile",
                                        daemon=True)
        self._dir: Path | None = None
        self._failing = False

    @property
    def path(self) -> Path:
        assert self._dir is not None
        return self._dir / "pgpass"

    def __enter__(self) -> LivePassfile:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = runtime if runtime and os.path.isdir(runtime) else None
        self._dir = Path(tempfile.mkdtemp(prefix="pg-oauth-", dir=base))  # mode 0700
        try:
            self._write(self.token)
        except BaseException:
            self.close()
            raise
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)  # a renewal in flight ends within http_timeout
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _write(self, token: Token) -> None:
        """Atomically: libpq may read the file at any moment."""
        tmp = self.path.with_name(f".pgpass.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"*:*:*:*:{_escaped(token.access_token)}\n")
        os.replace(tmp, self.path)
        self.token = token

    def _keep_fresh(self) -> None:
        wait = self._next_wait()
        while not self._stop.wait(wait):
            try:
                token = self._renew()
            except ClientError as exc:
                if not self._failing:  # once per run of failures, not at every retry
                    self._failing = True
                    left = (f"; the token in use expires at "
                            f"{time.strftime('%H:%M:%S UTC', time.gmtime(self.token.expires_at))}"
                            if self.token.expires_at else "")
                    self._notify(f"pg-oauth: cannot renew the token of the running "
                                 f"command: {exc}{left}; trying again")
                wait = self._next_wait()
                continue
            if self._failing:
                self._failing = False
                self._notify("pg-oauth: the token of the running command is renewed again")
            if token.access_token != self.token.access_token and not self._stop.is_set():
                with contextlib.suppress(OSError):
                    self._write(token)
            wait = self._next_wait()

    def _next_wait(self) -> float:
        """A look at the cache every quarter of what is left (the cache decides whether
        it is time to renew), at least every minute, at most every second."""
        if self.token.expires_at is None:
            return _MAX_WAIT
        left = self.token.expires_at - time.time()
        return min(max(left / 4, _MIN_WAIT), _MAX_WAIT)
