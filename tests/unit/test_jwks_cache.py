"""The key store: static keys, jwks_uri, discovery, refresh, cooldown, fetch limits."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import (
    Ed448PrivateKey,
    Ed448PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import RSAAlgorithm
from pg_oauth_dev.dev_issuer import DevIssuer, b64url
from unit_support import (
    DISCOVERY_URL,
    IDP,
    ISS,
    JWKS_URL,
    Clock,
    Documents,
    issuer_row,
    jwks_of,
    no_network,
    remote,
)

from pyhook.config import Config, IssuerConfig
from pyhook.errors import JwksUnavailable, KeyNotFound, UnknownKey
from pyhook.jwk_set import parse_jwks
from pyhook.jwks_cache import REFRESH_AHEAD, KeyStore
from pyhook.jwks_fetch import MAX_DOCUMENT_BYTES, FetchError, check_url, urllib_fetch

# -- parsing ---------------------------------------------------------------------------


def test_parse_keeps_signing_keys_only(dev: DevIssuer) -> None:
    short_rsa = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(65537, 1024).public_key(), as_dict=True
    )
    good = jwks_of(dev, "rs256-1", "es256-1", "eddsa-1")["keys"]
    rsa_jwk = good[0]
    doc = {
        "keys": [
            *good,
            dict(rsa_jwk, kid="enc", use="enc"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            dict(short_rsa, kid="short"),
            dict(rsa_jwk, kid="weird-alg", alg="RSA-OAEP"),
            {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "broken", "n": 5},
            dict(rsa_jwk, kid=7),
            "not a key",
        ]
    }
    keys, notes = parse_jwks(json.dumps(doc))
    assert [k.kid for k in keys] == ["rs256-1", "es256-1", "eddsa-1"]
    assert len(notes) == 8
    assert any("'enc'" in n for n in notes)
    assert any("'oct'" in n for n in notes)
    assert any("too short" in n for n in notes)
    joined = " ".join(notes)
    assert rsa_jwk["n"][:20] not in joined  # no key material in notes


def test_private_members_are_ignored(dev: DevIssuer) -> None:
    private = RSAAlgorithm.to_jwk(dev.private_key("rs256-1"), as_dict=True)
    # key_ops ["sign"] (as PyJWT writes it) would get the key skipped before this point
    private.update(kid="rs256-1", alg="RS256", key_ops=["verify"])
    keys, _ = parse_jwks(json.dumps({"keys": [private]}))
    assert not hasattr(keys[0].key, "private_numbers")


@pytest.mark.parametrize("doc", ["", "[]", '{"keys": {}}', '{"nokeys": []}', "{"])
def test_unusable_documents(doc: str) -> None:
    with pytest.raises(JwksUnavailable):
        parse_jwks(doc)


# -- keys that must never verify anything -------------------------------------------------

_P25519 = 2**255 - 19


def _le(number: int, size: int = 32) -> bytes:
    return number.to_bytes(size, "little")


# libsodium's blocklist (the eight small-order points of Ed25519 and the aliases
# OpenSSL also loads), written out rather than computed by the code under test
ED25519_SMALL_ORDER = {
    "identity": _le(1),
    "order 2": _le(_P25519 - 1),
    "order 4": _le(0),
    "order 4, other x": _le(0 | 1 << 255),
    "order 8 (a)": bytes.fromhex(
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"
    ),
    "order 8 (a), other x": bytes.fromhex(
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"
    ),
    "order 8 (b)": bytes.fromhex(
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
    ),
    "order 8 (b), other x": bytes.fromhex(
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
    ),
}
ED25519_NON_CANONICAL = {
    "identity with the sign bit": _le(1 | 1 << 255),
    "order 2 with the sign bit": _le(_P25519 - 1 | 1 << 255),
    "y = p (order 4)": _le(_P25519),
    "y = p, sign bit": _le(_P25519 | 1 << 255),
    "y = p + 1 (identity)": _le(_P25519 + 1),
    "y = p + 1, sign bit": _le(_P25519 + 1 | 1 << 255),
    "y = 2^255 - 1": _le(2**255 - 1),
}


def okp_jwk(raw: bytes, kid: str = "evil", crv: str = "Ed25519") -> dict[str, Any]:
    return {"kty": "OKP", "crv": crv, "x": b64url(raw), "kid": kid, "alg": "EdDSA"}


@pytest.mark.parametrize(
    ("raw", "words"),
    [pytest.param(raw, "small-order point", id=name)
     for name, raw in ED25519_SMALL_ORDER.items()]
    + [pytest.param(raw, "non-canonical encoding", id=name)
       for name, raw in ED25519_NON_CANONICAL.items()]
    + [
        pytest.param(_le(2), "not a point on the curve", id="y = 2, off the curve"),
        # the X25519 base point u = 9 read as an Ed25519 y: on the curve, wrong subgroup
        pytest.param(_le(9), "not in the prime-order subgroup", id="X25519 base point"),
    ],
)  # fmt: skip
def test_weak_ed25519_keys_are_skipped(raw: bytes, words: str, dev: DevIssuer) -> None:
    # OpenSSL itself loads every one of these
    Ed25519PublicKey.from_public_bytes(raw)
    good = jwks_of(dev, "eddsa-1")["keys"]
    keys, notes = parse_jwks(json.dumps({"keys": [okp_jwk(raw), *good]}))
    assert [k.kid for k in keys] == ["eddsa-1"]
    assert len(notes) == 1 and words in notes[0]
    assert notes[0].startswith("key kid 'evil' skipped: Ed25519 public key ")
    assert b64url(raw) not in notes[0]  # no key material in notes


def test_an_ed25519_key_with_a_small_order_component_is_skipped(dev: DevIssuer) -> None:
    from pyhook.edwards_points import _CURVES, _add, _decode

    curve = _CURVES["Ed25519"]
    real = base64.urlsafe_b64decode(jwks_of(dev, "eddsa-1")["keys"][0]["x"] + "=")
    a, t = _decode(curve, real), _decode(curve, ED25519_SMALL_ORDER["order 8 (b)"])
    assert isinstance(a, tuple) and isinstance(t, tuple)
    x, y, z = _add(curve, (*a, 1), (*t, 1))
    x, y = x * pow(z, -1, _P25519) % _P25519, y * pow(z, -1, _P25519) % _P25519
    mixed = _le(y | (x & 1) << 255)
    Ed25519PublicKey.from_public_bytes(mixed)  # OpenSSL loads it
    keys, notes = parse_jwks(json.dumps({"keys": [okp_jwk(mixed)]}))
    assert keys == [] and "not in the prime-order subgroup" in notes[0]


def test_ed448_keys_are_checked_too() -> None:
    real = Ed448PrivateKey.generate().public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    p448 = 2**448 - 2**224 - 1
    doc = {
        "keys": [
            okp_jwk(real, "real", "Ed448"),
            okp_jwk(_le(1, 57), "identity", "Ed448"),
            okp_jwk(_le(p448 - 1, 57), "order-2", "Ed448"),
            okp_jwk(_le(p448 + 1, 57), "alias", "Ed448"),
            okp_jwk(_le(1 | 1 << 450, 57), "high-bits", "Ed448"),
        ]
    }
    for jwk in doc["keys"]:
        Ed448PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
    keys, notes = parse_jwks(json.dumps(doc))
    assert [k.kid for k in keys] == ["real"]
    assert [n.split(": ", 1)[1] for n in notes] == [
        "Ed448 public key is a small-order point",
        "Ed448 public key is a small-order point",
        "Ed448 public key has a non-canonical encoding (y is not below p)",
        "Ed448 public key has a non-canonical encoding (y is not below p)",
    ]


def test_genuine_eddsa_keys_pass_the_point_checks() -> None:
    from pyhook.edwards_points import eddsa_key_problem

    for _ in range(16):
        ed = Ed25519PrivateKey.generate().public_key()
        assert eddsa_key_problem("Ed25519", ed.public_bytes(Encoding.Raw, PublicFormat.Raw)) is None
        ed4 = Ed448PrivateKey.generate().public_key()
        assert eddsa_key_problem("Ed448", ed4.public_bytes(Encoding.Raw, PublicFormat.Raw)) is None


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"key_ops": ["sign"]}, "key_ops ['sign'] does not include 'verify'"),
        ({"key_ops": ["encrypt", "wrapKey"]}, "does not include 'verify'"),
        ({"key_ops": []}, "key_ops [] does not include 'verify'"),
        ({"key_ops": "verify"}, "key_ops is not a list of strings"),
        ({"key_ops": [None]}, "key_ops is not a list of strings"),
        ({"key_ops": None}, "key_ops is not a list of strings"),
        ({"use": None}, "use is None, not 'sig'"),
        ({"use": "sig", "key_ops": ["sign"]}, "does not include 'verify'"),
    ],
)
def test_key_ops_and_use_are_honoured(
    members: dict[str, Any], words: str, dev: DevIssuer
) -> None:
    good = jwks_of(dev, "rs256-1", "eddsa-1")["keys"]
    doc = {"keys": [dict(good[0], kid="limited", **members), *good]}
    keys, notes = parse_jwks(json.dumps(doc))
    assert [k.kid for k in keys] == ["rs256-1", "eddsa-1"]
    assert len(notes) == 1 and notes[0].startswith("key kid 'limited' skipped: ")
    assert words in notes[0]


def test_skipped_keys_are_reported_once_and_named_at_login(dev: DevIssuer) -> None:
    evil = okp_jwk(ED25519_SMALL_ORDER["identity"])
    docs, clock = Documents({JWKS_URL: {"keys": [evil, *jwks_of(dev)["keys"]]}}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=60.0, jwks_cooldown=0.0)
    assert store.get_key(issuer, "EdDSA", "eddsa-1").kid == "eddsa-1"
    note = "key kid 'evil' skipped: Ed25519 public key is a small-order point"
    assert store.drain_notes() == [(ISS, note)]
    # the same document again: nothing new to report
    clock.t += 61
    store.refresh(issuer)
    assert store.fetch_count == 2 and store.drain_notes() == []
    # a token naming the skipped key learns why there is no such key
    with pytest.raises(KeyNotFound) as refused:
        store.get_key(issuer, "EdDSA", "evil")
    assert refused.value.detail.endswith(f"; {note}")
    assert note in store.describe(issuer)
    # static keys: reported when loaded, shown by describe()
    static = IssuerConfig.from_row(issuer_row(jwks=json.dumps({"keys": [evil]})))
    with pytest.raises(JwksUnavailable):
        store.get_key(static, "EdDSA", "evil")
    assert store.drain_notes() == [(ISS, note)]
    assert store.describe(static) == f"static keys from oauth.issuers.jwks, 0 usable keys; {note}"


# -- static keys ------------------------------------------------------------------------


def test_static_jwks_never_fetches(dev: DevIssuer) -> None:
    issuer = IssuerConfig.from_row(issuer_row(jwks=json.dumps(jwks_of(dev))))
    store = KeyStore(fetch=no_network)
    assert store.get_key(issuer, "RS256", "rs256-1").kid == "rs256-1"
    with pytest.raises(KeyNotFound):
        store.get_key(issuer, "RS256", "other")
    assert store.fetch_count == 0


def test_static_jwks_change_is_picked_up(dev: DevIssuer) -> None:
    store = KeyStore(fetch=no_network)
    one = IssuerConfig.from_row(issuer_row(jwks=json.dumps(jwks_of(dev, "rs256-1"))))
    two = IssuerConfig.from_row(issuer_row(jwks=json.dumps(jwks_of(dev, "es256-1"))))
    store.get_key(one, "RS256", "rs256-1")
    assert store.get_key(two, "ES256", "es256-1").kid == "es256-1"
    with pytest.raises(UnknownKey):
        store.get_key(two, "RS256", "rs256-1")


# -- fetched keys, refresh, stale-if-error ------------------------------------------------------


def test_keys_are_fetched_once_and_refreshed_when_old(dev: DevIssuer) -> None:
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=300.0)
    for _ in range(3):
        store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 1
    clock.t += 299
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 1
    clock.t += 1
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 2


def test_stale_keys_keep_working_when_the_refresh_fails(dev: DevIssuer) -> None:
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=60.0, jwks_cooldown=30.0)
    store.get_key(issuer, "RS256", "rs256-1")
    docs.documents[JWKS_URL] = OSError("connection refused")
    clock.t += 61
    assert store.get_key(issuer, "RS256", "rs256-1").kid == "rs256-1"
    assert store.fetch_count == 2
    assert any("OSError" in n for n in store.notes(ISS))
    # a dead IdP is retried once per cooldown, not on every login
    clock.t += 10
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 2
    clock.t += 30
    docs.documents[JWKS_URL] = jwks_of(dev)
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 3 and store.notes(ISS) == []


def test_a_document_without_usable_keys_does_not_replace_good_keys(
    dev: DevIssuer,
) -> None:
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=60.0)
    store.get_key(issuer, "RS256", "rs256-1")
    docs.documents[JWKS_URL] = {"keys": [{"kty": "oct", "k": "AA"}]}
    assert store.refresh_due(Config({ISS: issuer}, []), clock.t + 61) == [issuer]
    clock.t += 61
    with pytest.raises(JwksUnavailable):
        store.refresh(issuer)
    assert store.get_key(issuer, "RS256", "rs256-1").kid == "rs256-1"


def test_no_keys_at_all_is_jwks_unavailable() -> None:
    store = KeyStore(fetch=Documents(), now=Clock())
    with pytest.raises(JwksUnavailable) as info:
        store.get_key(remote(), "RS256", "rs256-1")
    assert "idp.example.com" in info.value.detail


def test_unknown_kid_refetches_at_most_once_per_cooldown(tmp_path: Path) -> None:
    dev = DevIssuer(str(tmp_path))  # rotated below: not the shared one
    docs, clock = Documents({JWKS_URL: jwks_of(dev, "rs256-1")}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_cooldown=30.0)
    store.get_key(issuer, "RS256", "rs256-1")
    assert store.fetch_count == 1
    with pytest.raises(UnknownKey):
        store.get_key(issuer, "RS256", "rs256-new")
    assert store.fetch_count == 2  # the one refetch
    for _ in range(5):
        with pytest.raises(UnknownKey) as info:
            store.get_key(issuer, "RS256", "rs256-new")
    assert store.fetch_count == 2
    assert "next refetch allowed" in info.value.detail
    # the IdP rotates; after the cooldown the new kid is found
    new_kid = dev.rotate("RS256")
    docs.documents[JWKS_URL] = jwks_of(dev)
    clock.t += 29
    with pytest.raises(UnknownKey):
        store.get_key(issuer, "RS256", new_kid)
    clock.t += 1
    assert store.get_key(issuer, "RS256", new_kid).kid == new_kid
    assert store.fetch_count == 3


def test_cooldown_zero_always_refetches(dev: DevIssuer) -> None:
    docs = Documents({JWKS_URL: jwks_of(dev, "rs256-1")})
    store = KeyStore(fetch=docs, now=Clock())
    issuer = remote(jwks_cooldown=0.0)
    store.get_key(issuer, "RS256", "rs256-1")
    for _ in range(3):
        with pytest.raises(UnknownKey):
            store.get_key(issuer, "RS256", "missing")
    assert store.fetch_count == 4


def test_first_fetch_is_not_repeated_for_an_unknown_kid(dev: DevIssuer) -> None:
    store = KeyStore(fetch=Documents({JWKS_URL: jwks_of(dev)}), now=Clock())
    with pytest.raises(UnknownKey):
        store.get_key(remote(jwks_cooldown=0.0), "RS256", "missing")
    assert store.fetch_count == 1


def test_refresh_due_and_refresh(dev: DevIssuer) -> None:
    docs, clock = Documents({JWKS_URL: jwks_of(dev)}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    fetched = remote(jwks_refresh=100.0)
    static = IssuerConfig.from_row(
        issuer_row(issuer="https://static.example.com", jwks=json.dumps(jwks_of(dev)))
    )
    disabled = remote(issuer="https://off.example.com", enabled=False)
    config = Config({i.issuer: i for i in (fetched, static, disabled)}, [])
    assert {i.issuer for i in store.refresh_due(config)} == {
        ISS,
        "https://static.example.com",
    }
    for issuer in store.refresh_due(config):
        assert store.refresh(issuer) >= 3
    assert store.refresh_due(config) == []
    assert store.fetch_count == 1
    clock.t += 100 * REFRESH_AHEAD - 1
    assert store.refresh_due(config) == []
    clock.t += 1
    assert store.refresh_due(config) == [fetched]
    # a failed refresh is retried after the cooldown only
    docs.documents[JWKS_URL] = OSError("down")
    with pytest.raises(JwksUnavailable):
        store.refresh(fetched)
    assert store.refresh_due(config) == []
    assert store.refresh_due(config, clock.t + fetched.jwks_cooldown) == [fetched]


def test_prune_forgets_removed_issuers(dev: DevIssuer) -> None:
    store = KeyStore(fetch=Documents({JWKS_URL: jwks_of(dev)}), now=Clock())
    store.refresh(remote())
    assert store.keys(ISS)
    store.prune(Config({}, []))
    assert store.keys(ISS) == []


# -- discovery --------------------------------------------------------------------------------


def test_discovery_finds_the_jwks_uri(dev: DevIssuer) -> None:
    docs = Documents(
        {
            DISCOVERY_URL: {"issuer": IDP + "/", "jwks_uri": JWKS_URL},
            JWKS_URL: jwks_of(dev),
        }
    )
    store = KeyStore(fetch=docs, now=Clock())
    issuer = IssuerConfig.from_row(
        issuer_row(issuer=IDP + "/")
    )  # trailing slash stripped
    assert store.get_key(issuer, "EdDSA", "eddsa-1").crv == "Ed25519"
    assert docs.requests == [DISCOVERY_URL, JWKS_URL]


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"issuer": "https://evil.example.com", "jwks_uri": JWKS_URL}, "names issuer"),
        (
            {"issuer": IDP + "/", "jwks_uri": JWKS_URL},
            "names issuer",
        ),  # exact, not normalised
        ({"jwks_uri": JWKS_URL}, "names issuer"),
        ({"issuer": IDP}, "no jwks_uri"),
        ([IDP], "not a JSON object"),
        (b"<html>", "not valid JSON"),
    ],
)
def test_discovery_refusals(dev: DevIssuer, document: Any, words: str) -> None:
    docs = Documents({DISCOVERY_URL: document, JWKS_URL: jwks_of(dev)})
    store = KeyStore(fetch=docs, now=Clock())
    with pytest.raises(JwksUnavailable) as info:
        store.get_key(IssuerConfig.from_row(issuer_row(issuer=IDP)), "RS256", "rs256-1")
    assert words in info.value.detail
    assert JWKS_URL not in docs.requests


def test_discovered_jwks_uri_must_pass_the_url_policy(dev: DevIssuer) -> None:
    docs = Documents(
        {DISCOVERY_URL: {"issuer": IDP, "jwks_uri": "http://keys.example.com/k"}}
    )
    with pytest.raises(JwksUnavailable) as info:
        KeyStore(fetch=docs, now=Clock()).refresh(
            IssuerConfig.from_row(issuer_row(issuer=IDP))
        )
    assert "plain http is refused" in info.value.detail


# -- URL policy ---------------------------------------------------------------------------------


LOOPBACK_URLS = [
    "http://127.0.0.1:8080/keys",
    "http://127.9.9.9/keys",
    "http://localhost/keys",
    "http://[::1]:9000/keys",
]


def test_allowed_urls() -> None:
    assert check_url("https://idp.example.com/keys", allow_insecure_http=False) is None
    for url in LOOPBACK_URLS:
        # refused without a flag: each flag is what lets the URL through
        with pytest.raises(FetchError):
            check_url(url, allow_insecure_http=False)
        assert check_url(url, allow_insecure_http=False, allow_loopback_http=True) is None
        assert check_url(url, allow_insecure_http=True) is None


@pytest.mark.parametrize("url", LOOPBACK_URLS)
def test_loopback_http_needs_the_issuers_say_so(url: str) -> None:
    # any local OS user can bind a free loopback port and serve keys there
    with pytest.raises(FetchError) as info:
        check_url(url, allow_insecure_http=False)
    assert "allow_loopback_http" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/keys",
        "http://10.0.0.1/keys",
        "http://127.0.0.1.example.com/keys",
        "ftp://idp.example.com/keys",
        "file:///etc/passwd",
        "https:///nohost",
        "http://127.0.0.1:99999/keys",
    ],
)
def test_refused_urls(url: str) -> None:
    with pytest.raises(FetchError):
        check_url(url, allow_insecure_http=False)
    # allow_loopback_http opens loopback hosts only
    with pytest.raises(FetchError):
        check_url(url, allow_insecure_http=False, allow_loopback_http=True)


def test_non_loopback_http_is_refused_without_any_request() -> None:
    docs = Documents()
    store = KeyStore(fetch=docs, now=Clock())
    with pytest.raises(JwksUnavailable) as info:
        store.refresh(remote(jwks_uri="http://idp.example.com/keys"))
    assert "allow_insecure_http" in info.value.detail
    assert docs.requests == [] and store.fetch_count == 0
    with pytest.raises(JwksUnavailable):  # now allowed, but there is nothing there
        store.refresh(
            remote(jwks_uri="http://idp.example.com/keys", allow_insecure_http=True)
        )
    assert docs.requests == ["http://idp.example.com/keys"]


def test_loopback_http_is_refused_without_any_request_unless_allowed() -> None:
    url = "http://127.0.0.1:8080/keys"
    docs = Documents()
    store = KeyStore(fetch=docs, now=Clock())
    with pytest.raises(JwksUnavailable) as info:
        store.refresh(remote(jwks_uri=url))
    assert "plain http is refused" in info.value.detail
    assert "allow_loopback_http" in info.value.detail
    assert docs.requests == [] and store.fetch_count == 0
    with pytest.raises(JwksUnavailable):  # now allowed, but there is nothing there
        store.refresh(remote(jwks_uri=url, allow_loopback_http=True))
    assert docs.requests == [url]


def test_oversize_document_from_an_injected_fetch_is_refused(dev: DevIssuer) -> None:
    docs = Documents({JWKS_URL: b" " * (MAX_DOCUMENT_BYTES + 1)})
    with pytest.raises(JwksUnavailable) as info:
        KeyStore(fetch=docs, now=Clock()).refresh(remote())
    assert "larger than" in info.value.detail


# -- the real urllib fetch against a real server on 127.0.0.1 -----------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path == "/ok":
            self._send(200, b'{"keys": []}')
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.end_headers()
        elif self.path == "/big":
            self._send(200, b" " * (MAX_DOCUMENT_BYTES + 10))
        elif self.path == "/big-unannounced":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the limit must hold while reading
            try:
                for _ in range(MAX_DOCUMENT_BYTES // 65536 + 2):
                    self.wfile.write(b" " * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at the limit, as it should
        elif self.path == "/slow":
            time.sleep(2)
            self._send(200, b"{}")
        else:
            self._send(500, b"{}")

    def _send(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def base(http_server: Callable[..., str]) -> str:
    return http_server(_Handler)


def test_urllib_fetch_reads_a_document(base: str) -> None:
    assert urllib_fetch(base + "/ok", 5, MAX_DOCUMENT_BYTES).body == b'{"keys": []}'


def test_urllib_fetch_refuses_redirects(base: str) -> None:
    with pytest.raises(FetchError, match="redirects are not followed"):
        urllib_fetch(base + "/redirect", 5, MAX_DOCUMENT_BYTES)


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_urllib_fetch_refuses_oversize_documents(base: str, path: str) -> None:
    with pytest.raises(FetchError, match="larger than"):
        urllib_fetch(base + path, 5, MAX_DOCUMENT_BYTES)


def test_urllib_fetch_times_out(base: str) -> None:
    with pytest.raises(FetchError, match="timed out"):
        urllib_fetch(base + "/slow", 0.3, MAX_DOCUMENT_BYTES)


def test_urllib_fetch_reports_http_errors_and_refused_connections(base: str) -> None:
    with pytest.raises(FetchError, match="HTTP status 500"):
        urllib_fetch(base + "/error", 5, MAX_DOCUMENT_BYTES)
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(FetchError, match="connection failed"):
        urllib_fetch(f"http://127.0.0.1:{port + 1 if port < 65535 else 1}/x", 2, 100)


def test_key_store_over_real_http_with_the_dev_issuer(dev: DevIssuer) -> None:
    server = DevIssuer(dev.key_dir).start()
    try:
        store = KeyStore()
        # a generous timeout: the first answer loads every private key (slow RSA
        # checks), which on a loaded machine can take a while
        issuer = IssuerConfig.from_row(
            issuer_row(issuer=server.issuer, http_timeout=10.0, jwks_cooldown=0.0,
                       allow_loopback_http=True)
        )
        assert store.get_key(issuer, "ES256", "es256-1").crv == "P-256"
        assert (server.discovery_requests, server.jwks_requests, store.fetch_count) == (
            1,
            1,
            2,
        )
        # broken: the cached keys keep working (stale-if-error)
        server.set_broken(True)
        with pytest.raises(JwksUnavailable, match="HTTP status 500"):
            store.refresh(issuer)
        assert store.get_key(issuer, "ES256", "es256-1")
        server.set_broken(False)
        # slow: a timeout, not a hang
        server.set_delay(2)
        started = time.monotonic()
        with pytest.raises(JwksUnavailable, match="timed out"):
            KeyStore().refresh(
                IssuerConfig.from_row(
                    issuer_row(issuer=server.issuer, http_timeout=0.5,
                               allow_loopback_http=True)
                )
            )
        assert time.monotonic() - started < 1.9
    finally:
        server.set_delay(0)
        server.stop()


def test_one_login_waits_for_the_network_at_most_once(dev: DevIssuer) -> None:
    docs, clock = Documents({JWKS_URL: jwks_of(dev, "rs256-1")}), Clock()
    store = KeyStore(fetch=docs, now=clock)
    issuer = remote(jwks_refresh=60.0, jwks_cooldown=0.0)
    store.get_key(issuer, "RS256", "rs256-1")
    docs.documents[JWKS_URL] = OSError("down")
    clock.t += 61  # due for a refresh, which fails; then an unknown kid
    with pytest.raises(UnknownKey):
        store.get_key(issuer, "RS256", "rs256-new")
    assert store.fetch_count == 2
