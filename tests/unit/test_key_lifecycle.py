"""Key lifecycle: Cache-Control and ETag within floor and ceiling, stale-if-error up
to a maximum age, withdrawn keys, snapshots for oauth.jwks_cache and warm starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pg_oauth_dev.dev_issuer import DevIssuer
from unit_support import (
    DISCOVERY_URL,
    IDP,
    ISS,
    JWKS_URL,
    Clock,
    Documents,
    issuer_row,
    jwks_of,
    remote,
)

from pyhook.config import Config, IssuerConfig
from pyhook.errors import JwksUnavailable, KeyNotFound
from pyhook.jwk_set import parse_jwks
from pyhook.jwks_cache import CachedJwks, KeyStore
from pyhook.jwks_fetch import (
    MAX_DOCUMENT_BYTES,
    FetchError,
    FetchResult,
    cache_max_age,
    urllib_fetch,
)


def doc(dev: DevIssuer, *kids: str, **headers: Any) -> FetchResult:
    return FetchResult(json.dumps(jwks_of(dev, *kids)).encode(), **headers)


# -- Cache-Control -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "age", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("max-age=300", None, 300.0),
        ("public, max-age=3600, must-revalidate", None, 3600.0),
        ('max-age="60"', None, 60.0),
        ("MAX-AGE=60", None, 60.0),
        ("max-age=300", "100", 200.0),
        ("max-age=300", "900", 0.0),
        ("no-cache", None, 0.0),
        ("no-store, max-age=600", None, 0.0),
        ("max-age=-5", None, None),
        ("max-age=abc", None, None),
        ("private", None, None),
    ],
)
def test_cache_max_age(
    header: str | None, age: str | None, expected: float | None
) -> None:
    assert cache_max_age(header, age) == expected


@pytest.mark.parametrize(
    ("max_age", "fresh_for"),
    [(None, 300.0), (10.0, 60.0), (120.0, 120.0), (86400.0, 3600.0), (0.0, 60.0)],
)
def test_max_age_is_held_within_floor_and_ceiling(
    dev: DevIssuer, max_age: float | None, fresh_for: float
) -> None:
    docs, clock = Documents({JWKS_URL: doc(dev, max_age=max_age)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=300.0, jwks_refresh_min=60.0, jwks_refresh_max=3600.0)
    store.get_key(issuer, "RS256", "rs256-1")
    clock.t += fresh_for - 1
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 1
    clock.t += 1
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 2


def test_etag_is_sent_back_and_304_keeps_the_keys(dev: DevIssuer) -> None:
    docs, clock = Documents({JWKS_URL: doc(dev, etag='"v1"', max_age=120.0)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote()
    store.get_key(issuer, "RS256", "rs256-1")
    assert docs.etags == [None]
    docs.documents[JWKS_URL] = FetchResult(b"", max_age=600.0, not_modified=True)
    clock.t += 120
    assert store.get_key(issuer, "RS256", "rs256-1").kid == "rs256-1"
    assert docs.etags == [None, '"v1"']
    # the 304 refreshed the keys for its own max-age; the ETag is kept
    clock.t += 599
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 2
    assert store.snapshot(ISS) is not None and store.snapshot(ISS).etag == '"v1"'
    assert "ETag kept" in store.describe(issuer)


def test_a_304_to_an_unconditional_request_is_an_error(dev: DevIssuer) -> None:
    docs = Documents({JWKS_URL: FetchResult(b"", not_modified=True)})
    with pytest.raises(JwksUnavailable, match="304"):
        KeyStore(fetch=docs, now=Clock()).refresh(remote())


def test_no_etag_without_keys_from_the_same_url(dev: DevIssuer) -> None:
    docs, clock = Documents({JWKS_URL: doc(dev, etag='"v1"')}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    store.refresh(remote())
    other = "https://idp.example.com/other-keys"
    docs.documents[other] = doc(dev)
    store.refresh(remote(jwks_uri=other))  # a new source: a fresh entry
    assert docs.etags == [None, None]


# -- stale-if-error, withdrawn keys --------------------------------------------------------


@pytest.mark.parametrize(
    "failure", [OSError("down"), b"<html>oops</html>", {"keys": []}]
)
def test_stale_keys_work_up_to_the_maximum_age(dev: DevIssuer, failure: Any) -> None:
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=60.0, jwks_cooldown=30.0, jwks_max_stale=600.0)
    store.get_key(issuer, "RS256", "rs256-1")
    docs.documents[JWKS_URL] = failure
    for _ in range(10):  # refreshes keep failing for ten minutes
        clock.t += 60
        assert store.get_key(issuer, "RS256", "rs256-1").kid == "rs256-1"
    clock.t += 1
    with pytest.raises(JwksUnavailable) as info:
        store.get_key(issuer, "RS256", "rs256-1")
    assert "jwks_max_stale" in info.value.detail and "601 s ago" in info.value.detail
    # the issuer comes back: keys work again at once
    docs.documents[JWKS_URL] = jwks_of(dev)
    clock.t += 30
    assert store.get_key(issuer, "RS256", "rs256-1").kid == "rs256-1"


def test_keys_withdrawn_by_the_issuer_stop_working_after_the_next_fetch(
    tmp_path: Path,
) -> None:
    dev = DevIssuer(str(tmp_path))
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=60.0)
    store.get_key(issuer, "RS256", "rs256-1")
    new_kid = dev.rotate("RS256", retire=True)
    docs.documents[JWKS_URL] = jwks_of(dev)
    clock.t += 59
    assert store.get_key(issuer, "RS256", "rs256-1")  # not refreshed yet
    clock.t += 1
    with pytest.raises(KeyNotFound):
        store.get_key(issuer, "RS256", "rs256-1")
    assert store.get_key(issuer, "RS256", new_kid).kid == new_kid


def test_a_rotated_key_works_at_once_after_the_cooldown(tmp_path: Path) -> None:
    dev = DevIssuer(str(tmp_path))
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=3600.0, jwks_cooldown=30.0)
    store.get_key(issuer, "RS256", "rs256-1")
    clock.t += 31  # the last fetch is older than the cooldown
    new_kid = dev.rotate("RS256")
    docs.documents[JWKS_URL] = jwks_of(dev)
    assert store.get_key(issuer, "RS256", new_kid).kid == new_kid
    assert store.fetch_count == 2


# -- snapshots (oauth.jwks_cache) ---------------------------------------------------------


def test_snapshot_holds_public_members_only(dev: DevIssuer) -> None:
    from jwt.algorithms import RSAAlgorithm

    leaked = RSAAlgorithm.to_jwk(dev.private_key("rs256-1"), as_dict=True)
    leaked.update(kid="rs256-1", alg="RS256", use="sig", x5c=["MIIB"], extra="x",
                  key_ops=["verify"])  # PyJWT's ["sign"] would get it skipped
    document = {"keys": [leaked, *jwks_of(dev, "es256-1", "eddsa-1")["keys"]]}
    clock, wall = Clock(), Clock(1_700_000_000.0)
    store = KeyStore(fetch=Documents({JWKS_URL: document}), now=clock, wall=wall)
    store.refresh(remote())
    snap = store.snapshot(ISS)
    assert snap is not None
    assert (snap.jwks_uri, snap.discovered, snap.fetched_at) == (
        JWKS_URL,
        False,
        1_700_000_000.0,
    )
    keys = json.loads(snap.jwks)["keys"]
    assert [set(k) for k in keys] == [
        {"kty", "n", "e", "kid", "alg", "use"},
        {"kty", "crv", "x", "y", "kid", "alg", "use"},
        {"kty", "crv", "x", "kid", "alg", "use"},
    ]
    # as a member name: random base64url key material may spell x5c by chance
    assert leaked["d"] not in snap.jwks and '"x5c"' not in snap.jwks
    # the snapshot parses back into the same keys
    assert [k.kid for k in parse_jwks(snap.jwks)[0]] == [
        "rs256-1",
        "es256-1",
        "eddsa-1",
    ]


def test_static_keys_have_no_snapshot(static_jwks: str) -> None:
    store = KeyStore(fetch=Documents(), now=Clock())
    store.refresh(IssuerConfig.from_row(issuer_row(jwks=static_jwks)))
    assert store.snapshot(ISS) is None and store.take_dirty() == []


def test_take_dirty_returns_each_fetch_once(dev: DevIssuer) -> None:
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    store.refresh(remote())
    assert [s.issuer for s in store.take_dirty()] == [ISS]
    assert store.take_dirty() == []
    docs.documents[JWKS_URL] = OSError("down")
    with pytest.raises(JwksUnavailable):
        store.refresh(remote())
    assert store.take_dirty() == []  # a failed fetch has nothing new to store


def test_every_request_is_an_event(dev: DevIssuer) -> None:
    docs = Documents(
        {DISCOVERY_URL: {"issuer": IDP, "jwks_uri": JWKS_URL}, JWKS_URL: jwks_of(dev)}
    )
    store = KeyStore(fetch=docs, now=Clock())
    issuer = IssuerConfig.from_row(issuer_row(issuer=IDP))
    store.refresh(issuer)
    assert [(e.issuer, e.ok) for e in store.drain_events()] == [
        (IDP, True),
        (IDP, True),
    ]
    assert store.drain_events() == []
    docs.documents[JWKS_URL] = OSError("down")
    store._entries[IDP].discovered_uri = JWKS_URL  # skip discovery this time
    with pytest.raises(JwksUnavailable):
        store.refresh(issuer)
    assert [(e.issuer, e.ok) for e in store.drain_events()] == [(IDP, False)]


def cached(dev: DevIssuer, fetched_at: float, **kw: Any) -> CachedJwks:
    values: dict[str, Any] = {
        "issuer": ISS,
        "jwks_uri": JWKS_URL,
        "discovered": False,
        "jwks": json.dumps(jwks_of(dev)),
        "etag": '"e1"',
        "max_age": 300.0,
        "fetched_at": fetched_at,
    }
    values.update(kw)
    return CachedJwks(**values)


def test_seeded_keys_need_no_network(dev: DevIssuer) -> None:
    docs, clock, wall = Documents(), Clock(), Clock(1_700_000_000.0)
    store = KeyStore(fetch=docs, now=clock, wall=wall)
    issuer = remote(jwks_refresh_min=60.0)
    assert store.seed(issuer, cached(dev, wall.t - 100))
    assert store.get_key(issuer, "ES256", "es256-1").kid == "es256-1"
    assert docs.requests == []
    assert "from oauth.jwks_cache 100 s ago" in store.describe(issuer)
    # fresh for max-age 300 s counted from the original fetch, then refreshed
    # conditionally with the persisted ETag
    docs.documents[JWKS_URL] = FetchResult(b"", not_modified=True)
    clock.t += 199
    store.get_key(issuer, "ES256", "es256-1")
    assert docs.requests == []
    clock.t += 1
    store.get_key(issuer, "ES256", "es256-1")
    assert docs.etags == ['"e1"']


def test_seeding_prefers_the_newer_document(dev: DevIssuer, tmp_path: Path) -> None:
    clock, wall = Clock(), Clock(1_700_000_000.0)
    store = KeyStore(fetch=Documents({JWKS_URL: jwks_of(dev)}), now=clock, wall=wall)
    issuer = remote()
    store.refresh(issuer)  # fetched "now"
    other = DevIssuer(str(tmp_path))
    older = cached(other, wall.t - 10, jwks=json.dumps(other.jwks()))
    assert not store.seed(issuer, older)
    newer = cached(other, wall.t + 5, jwks=json.dumps(other.jwks()))
    assert store.seed(issuer, newer)
    assert store.take_dirty() == []  # adopted, not fetched: nothing to write back
    # same kid names, other keys: the seeded document is the one in use
    held = store.get_key(issuer, "RS256", "rs256-1").key.public_numbers()
    assert held == other.private_key("rs256-1").public_key().public_numbers()


@pytest.mark.parametrize(
    ("issuer_kw", "cached_kw"),
    [
        ({}, {"jwks_uri": "https://elsewhere.example.com/keys"}),
        ({}, {"discovered": True}),
        ({"jwks_uri": None}, {"discovered": False}),
        ({"jwks_uri": "http://idp.example.com/keys"}, {"jwks_uri": "http://idp.example.com/keys"}),
        ({}, {"jwks": '{"keys": []}'}),
        ({}, {"jwks": "not json"}),
        ({}, {"issuer": "https://other.example.com"}),
    ],
)  # fmt: skip
def test_seeding_ignores_documents_that_do_not_fit(
    dev: DevIssuer, issuer_kw: dict[str, Any], cached_kw: dict[str, Any]
) -> None:
    store = KeyStore(fetch=Documents(), now=Clock(), wall=Clock(1_700_000_000.0))
    assert not store.seed(
        remote(**issuer_kw), cached(dev, 1_699_999_000.0, **cached_kw)
    )


def test_seeding_a_discovered_document(dev: DevIssuer) -> None:
    docs = Documents()
    store = KeyStore(fetch=docs, now=Clock(), wall=Clock(1_700_000_000.0))
    issuer = remote(jwks_uri=None)
    assert store.seed(issuer, cached(dev, 1_699_999_990.0, discovered=True))
    assert store.get_key(issuer, "EdDSA", "eddsa-1")
    assert docs.requests == []
    assert store.snapshot(ISS) is not None and store.snapshot(ISS).discovered


def test_too_old_seeded_keys_are_refused_when_the_issuer_is_down(
    dev: DevIssuer,
) -> None:
    docs, wall = Documents(), Clock(1_700_000_000.0)
    store = KeyStore(fetch=docs, now=Clock(), wall=wall)
    issuer = remote(jwks_max_stale=3600.0)
    store.seed(issuer, cached(dev, wall.t - 7200))
    with pytest.raises(JwksUnavailable, match="jwks_max_stale"):
        store.get_key(issuer, "RS256", "rs256-1")
    assert docs.requests == [JWKS_URL]  # it tried the network first


# -- the real thing over HTTP ----------------------------------------------------------------


def test_dev_issuer_etag_and_cache_control_over_http(dev: DevIssuer) -> None:
    server = DevIssuer(dev.key_dir).start()
    try:
        url = server.issuer + "/jwks.json"
        first = urllib_fetch(url, 5, MAX_DOCUMENT_BYTES)
        assert first.max_age == 300.0 and first.etag and not first.not_modified
        again = urllib_fetch(url, 5, MAX_DOCUMENT_BYTES, first.etag)
        assert again.not_modified and again.body == b"" and again.etag == first.etag
        assert server.not_modified_responses == 1
        assert urllib_fetch(url, 5, MAX_DOCUMENT_BYTES, '"stale"').body == first.body
        server.set_cache_control("no-cache")
        assert urllib_fetch(url, 5, MAX_DOCUMENT_BYTES).max_age == 0.0
        server.set_cache_control(None)
        assert urllib_fetch(url, 5, MAX_DOCUMENT_BYTES).max_age is None
        server.set_garbage(True)
        assert urllib_fetch(url, 5, MAX_DOCUMENT_BYTES).body.startswith(b"<html>")
    finally:
        server.stop()


def test_key_store_refreshes_conditionally_over_http(dev: DevIssuer) -> None:
    server = DevIssuer(dev.key_dir).start()
    try:
        clock = Clock()
        store = KeyStore(now=clock)
        issuer = IssuerConfig.from_row(
            issuer_row(issuer=server.issuer, jwks_refresh_min=1.0, http_timeout=10.0,
                       allow_loopback_http=True)
        )
        server.set_cache_control("max-age=10")
        store.refresh(issuer)
        clock.t += 10
        assert store.get_key(issuer, "RS256", "rs256-1")
        assert (server.jwks_requests, server.not_modified_responses) == (2, 1)
        # garbage from the issuer: the last good keys stay
        server.set_garbage(True)
        clock.t += 10
        assert store.get_key(issuer, "RS256", "rs256-1")
        assert "not valid JSON" in " ".join(store.notes(server.issuer))
    finally:
        server.stop()


def test_urllib_fetch_error_is_a_fetch_error_not_a_304() -> None:
    with pytest.raises(FetchError):
        urllib_fetch("http://127.0.0.1:1/jwks", 1, 100, '"etag"')


@pytest.mark.parametrize(
    "document",
    [b"<html>", {"keys": []}, {"keys": [{"kty": "oct", "k": "AA"}]}],
)
def test_a_useless_document_is_a_failed_fetch(dev: DevIssuer, document: Any) -> None:
    store = KeyStore(fetch=Documents({JWKS_URL: document}), now=Clock())
    with pytest.raises(JwksUnavailable):
        store.refresh(remote())
    assert [e.ok for e in store.drain_events()] == [False]


def test_a_bad_discovery_document_is_a_failed_fetch(dev: DevIssuer) -> None:
    docs = Documents({DISCOVERY_URL: {"issuer": "https://evil.example.com"}})
    store = KeyStore(fetch=docs, now=Clock())
    with pytest.raises(JwksUnavailable):
        store.refresh(IssuerConfig.from_row(issuer_row(issuer=IDP)))
    assert [e.ok for e in store.drain_events()] == [False]


def test_key_changes_counts_only_real_changes(dev: DevIssuer) -> None:
    """The shared decision cache is flushed on key_changes: a refetch of the same
    keys must not count, a withdrawn or added key must."""
    docs, clock = Documents({JWKS_URL: doc(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=300.0, jwks_refresh_min=60.0)
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.key_changes == 0  # the first keys are not a change
    clock.t += 400
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 2 and store.key_changes == 0
    docs.documents[JWKS_URL] = doc(dev, "rs256-1")  # the other keys withdrawn
    clock.t += 400
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.key_changes == 1


def test_without_refresh_on_login_a_due_refresh_waits_for_the_background(
    dev: DevIssuer,
) -> None:
    """The workers' store: logins use the held keys; refresh_due()/refresh() fetch."""
    docs, clock = Documents({JWKS_URL: doc(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock, refresh_on_login=False)
    issuer = remote(jwks_refresh=300.0, jwks_refresh_min=60.0)
    store.get_key(issuer, "RS256", "rs256-1")  # no keys yet: this one must fetch
    clock.t += 400
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 1
    config = Config.from_rows([issuer_row(jwks_uri=JWKS_URL, jwks_refresh=300.0,
                                          jwks_refresh_min=60.0)], [])
    due = store.refresh_due(config)
    assert [i.issuer for i in due] == [issuer.issuer]
    store.refresh(due[0])
    assert store.fetch_count == 2
    # an unknown kid still refetches at once (cooldown permitting)
    with pytest.raises(KeyNotFound):
        store.get_key(issuer, "RS256", "no-such-kid")
    assert store.fetch_count == 3


def test_a_shared_gate_limits_kid_refetches_across_stores(dev: DevIssuer) -> None:
    """Each worker has its own store; the gate (shared memory in the server) allows
    one unknown-kid refetch per cooldown for all of them together."""
    docs, clock = Documents({JWKS_URL: doc(dev)}), Clock()
    used: dict[str, float] = {}

    def gate(issuer: str, cooldown: float) -> bool:
        if issuer in used and clock.t - used[issuer] < cooldown:
            return False
        used[issuer] = clock.t
        return True

    stores = [KeyStore(fetch=docs, now=clock, kid_refetch_gate=gate) for _ in range(3)]
    issuer = remote(jwks_cooldown=30.0)
    for store in stores:
        store.get_key(issuer, "RS256", "rs256-1")
    fetched = sum(s.fetch_count for s in stores)
    for store in stores:
        with pytest.raises(KeyNotFound):
            store.get_key(issuer, "RS256", "random-kid")
    assert sum(s.fetch_count for s in stores) == fetched + 1
    clock.t += 31
    with pytest.raises(KeyNotFound):
        stores[2].get_key(issuer, "RS256", "random-kid-2")
    assert sum(s.fetch_count for s in stores) == fetched + 2
