"""The per-profile token cache: one JSON file per profile, mode 0600 in a 0700 directory,
written atomically, and locked while a token is obtained so that parallel commands (a
pool opening ten connections) make one request and never race a rotating refresh token."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the cache still works
    fcntl = None  # type: ignore[assignment]

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _file_stem(profile_name: str) -> str:
    if _SAFE_NAME.fullmatch(profile_name) and not profile_name.startswith("."):
        return profile_name
    return "profile-" + hashlib.sha256(profile_name.encode()).hexdigest()[:16]


class CacheUnusable(Exception):
    """The cache directory cannot be made, locked or written (a read-only HOME)."""

    def __init__(self, directory: Path, exc: OSError) -> None:
        super().__init__(f"{directory}: {exc.strerror or exc}")
        self.directory = directory
        self.reason = exc.strerror or str(exc)


@dataclass
class CacheEntry:
    """What is kept for one profile. ``fingerprint`` ties it to the profile's settings."""

    path: Path
    fingerprint: str
    access_token: str | None = None
    expires_at: float | None = None
    issued_at: float | None = None
    refresh_token: str | None = None

    def usable(self, min_valid: float, now: float | None = None, *,
               strict: bool = False) -> bool:
        """Valid for ``min_valid`` more seconds, or for half its lifetime when shorter:
        the life the caller asked for (``strict``: for ``min_valid`` seconds whatever its
        lifetime, as a pool needs)."""
        return self._left_over(min_valid, 0.0, now, strict)

    def fresh(self, min_valid: float, now: float | None = None, *,
              strict: bool = False) -> bool:
        """Usable, and not yet due for renewal: renewal starts a quarter of the remaining
        lifetime ahead of usable(), so that an IdP that is briefly down costs nothing."""
        return self._left_over(min_valid, 0.25, now, strict)

    def _left_over(self, min_valid: float, ahead: float, now: float | None,
                   strict: bool = False) -> bool:
        if not self.access_token or self.expires_at is None:
            return False
        now = time.time() if now is None else now
        lifetime = max(self.expires_at - (self.issued_at or now), 0)
        wanted = min_valid if strict else min(min_valid, lifetime / 2)
        return self.expires_at - now > wanted + max(lifetime - wanted, 0) * ahead

    def save(self) -> None:
        try:
            self._write()
        except OSError as exc:
            raise CacheUnusable(self.path.parent, exc) from None

    def _write(self) -> None:
        data: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "issued_at": self.issued_at,
            "refresh_token": self.refresh_token,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class TokenCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.name != "nt":
            os.chmod(self.directory, 0o700)

    def path_for(self, profile_name: str) -> Path:
        return self.directory / f"{_file_stem(profile_name)}.json"

    def signin_path(self, key: str) -> Path:
        """A sign-in shared by profiles ('@' is in no profile's file name)."""
        return self.directory / f"signin@{key}.json"

    def entry(self, profile_name: str,
              fingerprint: str) -> contextlib.AbstractContextManager[CacheEntry]:
        """The profile's entry, under an exclusive lock held until the block ends."""
        return self.locked(self.path_for(profile_name), fingerprint)

    @contextlib.contextmanager
    def locked(self, path: Path, fingerprint: str) -> Iterator[CacheEntry]:
        try:
            self._prepare()
            fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CacheUnusable(self.directory, exc) from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._read(path, fingerprint)
        finally:
            os.close(fd)  # closing releases the lock

    @staticmethod
    def _read(path: Path, fingerprint: str) -> CacheEntry:
        entry = CacheEntry(path=path, fingerprint=fingerprint)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return entry
        if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
            return entry  # another profile's settings: start over
        for name in ("access_token", "refresh_token"):
            if isinstance(data.get(name), str):
                setattr(entry, name, data[name])
        for name in ("expires_at", "issued_at"):
            if isinstance(data.get(name), (int, float)):
                setattr(entry, name, float(data[name]))
        return entry

    def forget(self, profile_name: str) -> bool:
        """Remove a profile's cached tokens; True if there were any."""
        return self.remove(self.path_for(profile_name))

    @staticmethod
    def remove(path: Path) -> bool:
        removed = False
        for p in (path, path.with_suffix(".lock")):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                p.unlink()
                removed = removed or p == path
        return removed
