"""The key store: signing keys per issuer, from a static JWKS, a jwks_uri, or OIDC discovery.

It decides when to fetch and what it holds; ``jwks_fetch`` gets the documents and
``jwk_set`` turns them into keys, parsed once. Fetched keys are kept
with the time of the last successful fetch and count as fresh for the document's
Cache-Control max-age (held within the issuer's ``jwks_refresh_min`` and
``jwks_refresh_max``; ``jwks_refresh`` when it sent none); a refresh sends the
ETag back, and a 304 keeps the keys. ``refresh_due``/``refresh`` let the adapter
refresh between logins so that in steady state no login waits on the network.
When refreshes fail the last good keys keep working up to ``jwks_max_stale``
after their fetch. An unknown ``kid`` triggers at most one refetch per
``jwks_cooldown`` per issuer.

``snapshot``/``seed`` move the last good document in and out of the store (the
adapter persists it in oauth.jwks_cache), so a restarted process starts warm.
Only public key members ever leave the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyhook.config import Config, IssuerConfig
from pyhook.errors import JwksUnavailable, KeyNotFound, UnknownKey
from pyhook.jwk_set import JsonWebKey, parse_jwks, select_key, skip_note_prefix
from pyhook.jwks_fetch import (
    MAX_DOCUMENT_BYTES,
    Fetch,
    FetchError,
    FetchResult,
    check_url,
    checked_result,
    discovered_jwks_uri,
    discovery_url,
    safe_url,
    urllib_fetch,
)

MAX_PENDING_NOTES = 200  # skipped-key notes waiting for drain_notes()
# warmup refreshes keys once they are this fraction of jwks_refresh old, so that the
# login path (which refreshes at 100 %) normally finds fresh keys
REFRESH_AHEAD = 0.8

Clock = Callable[[], float]


def _skipped(entry: _Entry | None, limit: int = 5) -> str:
    """The notes of the last document, for describe(): why keys were skipped."""
    if entry is None or not entry.notes:
        return ""
    more = len(entry.notes) - limit
    return "; " + "; ".join(entry.notes[:limit]) + (f"; {more} more" if more > 0 else "")


def _source(issuer: IssuerConfig) -> tuple[object, ...]:
    return (
        issuer.jwks,
        issuer.jwks_uri,
        issuer.allow_insecure_http,
        issuer.allow_loopback_http,
    )


@dataclass(frozen=True)
class CachedJwks:
    """The last good JWKS of an issuer as oauth.jwks_cache holds it (public keys only)."""

    issuer: str
    jwks_uri: str
    discovered: bool  # jwks_uri came from OIDC discovery
    jwks: str  # {"keys": [...]} with public members only
    etag: str | None
    max_age: float | None
    fetched_at: float  # wall clock, epoch seconds


@dataclass(frozen=True)
class FetchEvent:
    """One HTTP request for an issuer's keys (discovery or JWKS) and whether it worked."""

    issuer: str
    ok: bool


@dataclass
class _Entry:
    source: tuple[object, ...]
    issuer: str = ""
    keys: list[JsonWebKey] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loaded: bool = False  # static keys parsed (successfully or not)
    fetched_at: float | None = None  # last successful fetch (monotonic)
    fetched_wall: float | None = None  # the same, wall clock
    attempted_at: float | None = None  # last fetch attempt
    last_error: str | None = None
    kid_refetch_at: float | None = None
    discovered_uri: str | None = None
    discovered_at: float | None = None
    jwks_uri: str | None = None  # where the keys held came from
    etag: str | None = None
    max_age: float | None = None
    seeded: bool = False  # keys came from a snapshot, not from a fetch by this store
    dirty: bool = False  # fetched since the last snapshot was taken


@dataclass(frozen=True)
class _Download:
    uri: str
    result: FetchResult
    keys: list[JsonWebKey] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class KeyStore:
    """Per-issuer keys; inject ``fetch``, ``now`` (monotonic) and ``wall`` for tests."""

    def __init__(
        self,
        fetch: Fetch | None = None,
        now: Clock = time.monotonic,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        wall: Clock = time.time,
        refresh_on_login: bool = True,
        kid_refetch_gate: Callable[[str, float], bool] | None = None,
        held_keys_only: bool = False,
    ) -> None:
        self._fetch: Fetch = fetch or urllib_fetch
        # False where something else calls refresh_due()/refresh() between logins
        # (the validator workers do): a login then never waits for a routine
        # refresh, only for missing keys, too-stale keys or an unknown kid
        self.refresh_on_login = refresh_on_login
        # asked before an unknown-kid refetch when several stores (one per
        # worker process) share one cooldown: False means another used it
        self.kid_refetch_gate = kid_refetch_gate
        # True: once it holds keys for an issuer, never fetch for it again, not
        # even for an unknown kid (oauth.explain decides with the document the
        # workers stored, neither fresher nor staler)
        self.held_keys_only = held_keys_only
        self._now = now
        self._wall = wall
        self.max_bytes = max_bytes
        self.fetch_count = 0  # HTTP requests made (discovery and JWKS), for benchmarks
        # times a key set was replaced by a different one (the decision cache in
        # shared memory must forget decisions made with keys that may be gone)
        self.key_changes = 0
        self._entries: dict[str, _Entry] = {}
        self._events: list[FetchEvent] = []
        self._new_notes: list[tuple[str, str]] = []

    def sibling(self, **options: Any) -> KeyStore:
        """An empty store that fetches and tells time the way this one does."""
        return KeyStore(
            fetch=self._fetch,
            now=self._now,
            max_bytes=self.max_bytes,
            wall=self._wall,
            **options,
        )

    # -- the login path -----------------------------------------------------

    def get_key(self, issuer: IssuerConfig, alg: str, kid: str | None) -> JsonWebKey:
        """The key that must verify a token of ``issuer`` signed with ``alg``/``kid``.

        Raises UnknownKey (KeyNotFound) or JwksUnavailable; when the JWKS has a
        key with that kid that was skipped, the detail says why.
        """
        try:
            return self._get_key(issuer, alg, kid)
        except UnknownKey as exc:
            note = self._skip_note(issuer.issuer, kid)
            if note is None:
                raise
            raise type(exc)(f"{exc.detail}; {note}") from None

    def _skip_note(self, issuer: str, kid: str | None) -> str | None:
        entry = self._entries.get(issuer)
        if entry is None or kid is None:
            return None
        prefix = skip_note_prefix(kid)
        return next((note for note in entry.notes if note.startswith(prefix)), None)

    def _get_key(self, issuer: IssuerConfig, alg: str, kid: str | None) -> JsonWebKey:
        entry = self._entry(issuer)
        if issuer.jwks is not None:
            self._load_static(entry, issuer)
            if not entry.keys:
                raise JwksUnavailable(
                    entry.last_error or "static jwks has no usable keys"
                )
            return select_key(entry.keys, alg, kid)

        now = self._now()
        attempted = False  # one login waits for the network at most once
        if not entry.keys or self._too_stale(entry, issuer, now):
            if self._may_retry(entry, issuer, now) and not (
                self.held_keys_only and entry.keys
            ):
                attempted = True
                self._fetch_into(entry, issuer, now)
            if not entry.keys:
                raise JwksUnavailable(entry.last_error or "no keys could be fetched")
            if self._too_stale(entry, issuer, now):
                raise JwksUnavailable(self._stale_detail(entry, issuer, now))
        elif (
            self.refresh_on_login
            and self._due(entry, issuer, now)
            and self._may_retry(entry, issuer, now)
        ):
            attempted = True
            self._fetch_into(entry, issuer, now)  # old keys stay on error
        try:
            return select_key(entry.keys, alg, kid)
        except KeyNotFound as exc:
            if attempted:
                raise
            if self.held_keys_only:
                raise KeyNotFound(
                    f"{exc.detail}; the keys held are not refetched here (a login "
                    "refetches them for an unknown kid, at most once per jwks_cooldown)"
                ) from None
            cooldown = issuer.jwks_cooldown
            if (
                cooldown > 0
                and entry.kid_refetch_at is not None
                and now - entry.kid_refetch_at < cooldown
            ):
                wait = cooldown - (now - entry.kid_refetch_at)
                raise KeyNotFound(
                    f"{exc.detail}; keys refetched {now - entry.kid_refetch_at:.0f} s "
                    f"ago, next refetch allowed in {wait:.0f} s"
                ) from None
            if self.kid_refetch_gate is not None and not self.kid_refetch_gate(
                issuer.issuer, cooldown
            ):
                raise KeyNotFound(
                    f"{exc.detail}; another worker refetched the keys less than "
                    f"{cooldown:.0f} s ago"
                ) from None
            entry.kid_refetch_at = now
            if not self._fetch_into(entry, issuer, now):
                raise KeyNotFound(
                    f"{exc.detail}; refetching keys failed: {entry.last_error}"
                ) from None
            return select_key(entry.keys, alg, kid)

    # -- between logins ---------------------------------------------------------

    def refresh_due(
        self, config: Config, now: float | None = None
    ) -> list[IssuerConfig]:
        """Enabled issuers whose keys are missing or (nearly) due for a refresh.

        In issuer order, so that processes persisting the results lock rows alike.
        """
        now = self._now() if now is None else now
        due: list[IssuerConfig] = []
        for name in sorted(config.issuers):
            issuer = config.issuers[name]
            if not issuer.enabled:
                continue
            entry = self._entries.get(issuer.issuer)
            if entry is None or entry.source != _source(issuer):
                due.append(issuer)
            elif issuer.jwks is not None:
                if not entry.loaded:
                    due.append(issuer)
            elif (
                not entry.keys or self._due(entry, issuer, now, REFRESH_AHEAD)
            ) and self._may_retry(entry, issuer, now):
                due.append(issuer)
        return due

    def refresh(self, issuer: IssuerConfig) -> int:
        """Load or fetch the keys of ``issuer`` now; the number of keys held.

        Raises JwksUnavailable when that failed (keys held before stay in use).
        """
        entry = self._entry(issuer)
        if issuer.jwks is not None:
            entry.loaded = False
            self._load_static(entry, issuer)
        elif not self._fetch_into(entry, issuer, self._now()):
            raise JwksUnavailable(entry.last_error or "no keys could be fetched")
        if not entry.keys:
            raise JwksUnavailable(entry.last_error or "no usable keys")
        return len(entry.keys)

    def keys(self, issuer: str) -> list[JsonWebKey]:
        """The keys held for an issuer (no loading, no network)."""
        entry = self._entries.get(issuer)
        return list(entry.keys) if entry else []

    def notes(self, issuer: str) -> list[str]:
        """Why keys of the last document were skipped, and the last error, if any."""
        entry = self._entries.get(issuer)
        if entry is None:
            return []
        return entry.notes + ([entry.last_error] if entry.last_error else [])

    def describe(self, issuer: IssuerConfig) -> str:
        """Where the keys of ``issuer`` come from and how fresh they are (for explain)."""
        entry = self._entries.get(issuer.issuer)
        if issuer.jwks is not None:
            count = len(entry.keys) if entry is not None and entry.loaded else None
            held = "" if count is None else f", {count} usable keys"
            return f"static keys from oauth.issuers.jwks{held}{_skipped(entry)}"
        if entry is None or entry.source != _source(issuer) or not entry.keys:
            where = (
                f"jwks_uri {safe_url(issuer.jwks_uri)}"
                if issuer.jwks_uri
                else "OIDC discovery"
            )
            error = (
                f"; last error: {entry.last_error}"
                if entry and entry.last_error
                else ""
            )
            return f"no keys held yet (source: {where}){error}{_skipped(entry)}"
        now = self._now()
        age = now - entry.fetched_at if entry.fetched_at is not None else 0.0
        interval = issuer.refresh_interval(entry.max_age)
        origin = "from oauth.jwks_cache" if entry.seeded else "fetched"
        parts = [
            (
                f"{len(entry.keys)} keys {origin} {age:.0f} s ago from "
                f"{safe_url(entry.jwks_uri or '')}"
            ),
            (
                f"max-age {entry.max_age:g} s"
                if entry.max_age is not None
                else "no max-age"
            )
            + f", fresh for {interval:g} s"
            + (", ETag kept" if entry.etag else ""),
        ]
        if entry.last_error:
            parts.append(f"last refresh failed: {entry.last_error}")
        return "; ".join(parts) + _skipped(entry)

    def forget(self, issuer: str | None = None) -> None:
        """Drop everything held for ``issuer`` (None: every issuer): keys, the
        discovered jwks_uri, cooldowns. The next use loads or fetches anew."""
        if issuer is None:
            self._entries.clear()
        else:
            self._entries.pop(issuer, None)

    def prune(self, config: Config) -> None:
        """Forget issuers that are no longer configured."""
        for name in list(self._entries):
            if name not in config.issuers:
                del self._entries[name]

    def drain_notes(self) -> list[tuple[str, str]]:
        """(issuer, note) for each key skipped in a document loaded since the last
        call; a document whose notes did not change is not reported again."""
        notes, self._new_notes = self._new_notes, []
        return notes

    def drain_events(self) -> list[FetchEvent]:
        """The HTTP requests made since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- persistence ---------------------------------------------------------------

    def snapshot(self, issuer: str) -> CachedJwks | None:
        """The last good fetched JWKS of ``issuer`` (None: none, or static keys)."""
        entry = self._entries.get(issuer)
        if (
            entry is None
            or not entry.keys
            or entry.jwks_uri is None
            or entry.fetched_wall is None
        ):
            return None
        document = {"keys": [key.public for key in entry.keys]}
        return CachedJwks(
            issuer=issuer,
            jwks_uri=entry.jwks_uri,
            discovered=entry.source[1] is None,
            jwks=json.dumps(document, separators=(",", ":"), sort_keys=True),
            etag=entry.etag,
            max_age=entry.max_age,
            fetched_at=entry.fetched_wall,
        )

    def take_dirty(self) -> list[CachedJwks]:
        """Snapshots of the issuers fetched since the last call, in issuer order."""
        out: list[CachedJwks] = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            if entry.dirty:
                entry.dirty = False
                snap = self.snapshot(name)
                if snap is not None:
                    out.append(snap)
        return out

    def seed(self, issuer: IssuerConfig, cached: CachedJwks) -> bool:
        """Adopt a persisted JWKS when it is newer than what is held; whether it was.

        A document whose origin no longer fits the issuer's configuration (another
        jwks_uri, a URL the policy now refuses, static keys) is ignored.
        """
        if issuer.jwks is not None or cached.issuer != issuer.issuer:
            return False
        if issuer.jwks_uri is not None:
            if cached.discovered or cached.jwks_uri != issuer.jwks_uri:
                return False
        elif not cached.discovered:
            return False
        try:
            check_url(
                cached.jwks_uri, issuer.allow_insecure_http, issuer.allow_loopback_http
            )
        except FetchError:
            return False
        entry = self._entry(issuer)
        if entry.fetched_wall is not None and entry.fetched_wall >= cached.fetched_at:
            return False
        try:
            keys, notes = parse_jwks(cached.jwks)
        except JwksUnavailable:
            return False
        if not keys:
            return False
        now, wall = self._now(), self._wall()
        self._replace_keys(entry, keys, notes)
        entry.fetched_at = now - max(0.0, wall - cached.fetched_at)
        entry.fetched_wall = cached.fetched_at
        entry.jwks_uri = cached.jwks_uri
        entry.etag = cached.etag
        entry.max_age = cached.max_age
        entry.last_error = None
        entry.seeded = True
        entry.dirty = False
        if cached.discovered:
            entry.discovered_uri = cached.jwks_uri
            entry.discovered_at = entry.fetched_at
        return True

    # -- internals -------------------------------------------------------------

    def _entry(self, issuer: IssuerConfig) -> _Entry:
        entry = self._entries.get(issuer.issuer)
        source = _source(issuer)
        if entry is None or entry.source != source:
            entry = _Entry(source=source, issuer=issuer.issuer)
            self._entries[issuer.issuer] = entry
        return entry

    @staticmethod
    def _due(
        entry: _Entry, issuer: IssuerConfig, now: float, ahead: float = 1.0
    ) -> bool:
        if entry.fetched_at is None:
            return True
        return now - entry.fetched_at >= issuer.refresh_interval(entry.max_age) * ahead

    @staticmethod
    def _too_stale(entry: _Entry, issuer: IssuerConfig, now: float) -> bool:
        return (
            entry.fetched_at is not None
            and now - entry.fetched_at > issuer.jwks_max_stale
        )

    @staticmethod
    def _stale_detail(entry: _Entry, issuer: IssuerConfig, now: float) -> str:
        age = now - (entry.fetched_at or now)
        why = (
            f"refreshing failed: {entry.last_error}"
            if entry.last_error
            else "no refresh attempted yet"
        )
        return (
            f"the last good keys were fetched {age:.0f} s ago, longer than "
            f"jwks_max_stale ({issuer.jwks_max_stale:g} s); {why}"
        )

    @staticmethod
    def _may_retry(entry: _Entry, issuer: IssuerConfig, now: float) -> bool:
        # after a failure, wait jwks_cooldown before trying again: a dead IdP must
        # not make every login wait for a timeout
        return (
            entry.attempted_at is None
            or entry.last_error is None
            or now - entry.attempted_at >= issuer.jwks_cooldown
        )

    def _load_static(self, entry: _Entry, issuer: IssuerConfig) -> None:
        if entry.loaded:
            return
        entry.loaded = True
        try:
            keys, notes = parse_jwks(issuer.jwks or "")
            entry.keys = keys
            self._set_notes(entry, notes)
            entry.last_error = None if entry.keys else "static jwks has no usable keys"
        except JwksUnavailable as exc:
            entry.keys, entry.notes = [], []
            entry.last_error = f"static jwks: {exc.detail}"

    def _fetch_into(self, entry: _Entry, issuer: IssuerConfig, now: float) -> bool:
        """Fetch keys into ``entry``; on failure keep the old keys and record why."""
        entry.attempted_at = now
        try:
            download = self._download(entry, issuer, now)
        except JwksUnavailable as exc:
            entry.last_error = exc.detail
            return False
        result = download.result
        if not result.not_modified:
            if not download.keys:
                self._set_notes(entry, download.notes)
                entry.last_error = "the JWKS document has no usable keys"
                return False
            self._replace_keys(entry, download.keys, download.notes)
            entry.etag = result.etag
        elif result.etag is not None:
            entry.etag = result.etag
        entry.jwks_uri = download.uri
        entry.max_age = result.max_age
        entry.fetched_at = now
        entry.fetched_wall = self._wall()
        entry.last_error = None
        entry.seeded = False
        entry.dirty = True
        return True

    def _replace_keys(
        self, entry: _Entry, keys: list[JsonWebKey], notes: list[str]
    ) -> None:
        if entry.keys and [k.public for k in entry.keys] != [k.public for k in keys]:
            self.key_changes += 1
        entry.keys = keys
        self._set_notes(entry, notes)

    def _set_notes(self, entry: _Entry, notes: list[str]) -> None:
        if notes != entry.notes:
            room = MAX_PENDING_NOTES - len(self._new_notes)
            self._new_notes.extend((entry.issuer, note) for note in notes[: max(room, 0)])
        entry.notes = notes

    def _download(self, entry: _Entry, issuer: IssuerConfig, now: float) -> _Download:
        uri = issuer.jwks_uri
        if uri is None:
            if (
                entry.discovered_uri is None
                or entry.discovered_at is None
                or now - entry.discovered_at >= issuer.refresh_interval(None)
            ):
                entry.discovered_uri = self._discover(issuer)
                entry.discovered_at = now
            uri = entry.discovered_uri
        # conditional only when the keys held came from this very URL
        etag = entry.etag if entry.keys and entry.jwks_uri == uri else None
        try:
            result = self._get(uri, issuer, etag)
            if result.not_modified:
                self._record(issuer, True)
                return _Download(uri, result)
            try:
                keys, notes = parse_jwks(result.body)
            except JwksUnavailable:
                self._record(issuer, False)
                raise
            # a document without a usable key counts as a failed fetch
            self._record(issuer, bool(keys))
            return _Download(uri, result, keys, notes)
        except JwksUnavailable:
            if issuer.jwks_uri is None:
                entry.discovered_uri = None  # discover again next time
            raise

    def _discover(self, issuer: IssuerConfig) -> str:
        url = discovery_url(issuer.issuer)
        result = self._get(url, issuer, None)
        try:
            jwks_uri = discovered_jwks_uri(url, result.body, issuer.issuer)
        except JwksUnavailable:
            self._record(issuer, False)
            raise
        self._record(issuer, True)
        return jwks_uri

    def _record(self, issuer: IssuerConfig, ok: bool) -> None:
        self._events.append(FetchEvent(issuer.issuer, ok))

    def _get(self, url: str, issuer: IssuerConfig, etag: str | None) -> FetchResult:
        """One HTTP request; a failed one is recorded here, a successful one by the
        caller once it knows whether the document was any good."""
        try:
            check_url(url, issuer.allow_insecure_http, issuer.allow_loopback_http)
        except FetchError as exc:
            raise JwksUnavailable(str(exc)) from None
        self.fetch_count += 1
        try:
            raw = self._fetch(url, issuer.http_timeout, self.max_bytes, etag)
            return checked_result(raw, etag, self.max_bytes)
        except FetchError as exc:
            self._record(issuer, False)
            raise JwksUnavailable(f"fetching {safe_url(url)} failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - an injected fetch may raise anything
            self._record(issuer, False)
            raise JwksUnavailable(
                f"fetching {safe_url(url)} failed: {type(exc).__name__}"
            ) from None
