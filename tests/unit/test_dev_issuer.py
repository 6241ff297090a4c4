"""The development issuer: keys on disk, discovery and JWKS over real HTTP, minting."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_oauth_dev.dev_issuer import (
    DEVICE_CODE_GRANT,
    REMOVE,
    DevIssuer,
    forge_hs256_with_public_key,
    parse_form,
)
from unit_support import AUD, NOW


def get(url: str) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), None


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    def dec(segment: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))

    header, payload, signature = token.split(".")
    return dec(header), dec(payload), signature


@pytest.fixture
def served(tmp_path: Path) -> Iterator[DevIssuer]:
    issuer = DevIssuer(str(tmp_path / "keys")).start()
    yield issuer
    issuer.stop()


def test_discovery_and_jwks_over_http(served: DevIssuer) -> None:
    assert served.issuer.startswith("http://127.0.0.1:")
    status, headers, discovery = get(
        served.issuer + "/.well-known/openid-configuration"
    )
    assert status == 200 and headers["Cache-Control"] == "max-age=300"
    assert discovery["issuer"] == served.issuer
    assert discovery["jwks_uri"] == served.issuer + "/jwks.json"
    assert set(discovery["id_token_signing_alg_values_supported"]) == {
        "RS256",
        "ES256",
        "EdDSA",
    }
    status, headers, jwks = get(discovery["jwks_uri"])
    assert status == 200 and headers["Cache-Control"] == "max-age=300"
    assert [(k["kid"], k["alg"], k["use"]) for k in jwks["keys"]] == [
        ("rs256-1", "RS256", "sig"),
        ("es256-1", "ES256", "sig"),
        ("eddsa-1", "EdDSA", "sig"),
    ]
    assert all("d" not in k and "p" not in k for k in jwks["keys"])  # public keys only
    assert served.jwks_requests == 1 and served.discovery_requests == 1
    assert get(served.issuer + "/other")[0] == 404


def test_broken_and_slow(served: DevIssuer) -> None:
    served.set_broken(True)
    assert get(served.issuer + "/jwks.json")[0] == 500
    served.set_broken(False)
    served.set_delay(0.6)
    with pytest.raises(OSError):
        urllib.request.urlopen(served.issuer + "/jwks.json", timeout=0.2).close()
    served.set_delay(0)
    assert get(served.issuer + "/jwks.json")[0] == 200


def test_keys_persist_with_owner_only_modes(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    first = DevIssuer(str(key_dir))
    first.ensure_keys()
    files = sorted(p.name for p in key_dir.iterdir())
    assert files == [".lock", "eddsa-1.pem", "es256-1.pem", "keys.json", "rs256-1.pem"]
    for name in files:
        assert stat.S_IMODE(os.stat(key_dir / name).st_mode) == 0o600, name
    assert (
        (key_dir / "rs256-1.pem")
        .read_bytes()
        .startswith(b"-----BEGIN PRIVATE KEY-----")
    )
    # another instance (another process, in real use) sees the same keys
    second = DevIssuer(str(key_dir))
    assert second.jwks() == first.jwks()


def test_rotation_keeps_or_retires_old_keys(served: DevIssuer) -> None:
    new = served.rotate("RS256")
    assert new == "rs256-2"
    kids = [k["kid"] for k in get(served.issuer + "/jwks.json")[2]["keys"]]
    assert {"rs256-1", "rs256-2"} <= set(kids)
    assert parts(served.mint())[0]["kid"] == "rs256-2"  # the newest key signs
    newest = served.rotate("RS256", retire=True)
    kids = [k["kid"] for k in get(served.issuer + "/jwks.json")[2]["keys"]]
    assert newest in kids and "rs256-1" not in kids and "rs256-2" not in kids
    assert served.rotate("ES384") == "es384-1"


def test_mint_defaults(served: DevIssuer) -> None:
    header, payload, _ = parts(served.mint(now=NOW))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "rs256-1"}
    assert payload["iss"] == served.issuer and payload["sub"] == "alice"
    assert payload["aud"] == "pg_oauth"
    assert (payload["iat"], payload["nbf"], payload["exp"]) == (NOW, NOW, NOW + 300)
    assert len(payload["jti"]) == 32


def test_mint_overrides_and_omissions(served: DevIssuer) -> None:
    token = served.mint(
        {"nbf": REMOVE, "groups": ["a"]},
        sub="bob",
        aud=[AUD, "x"],
        lifetime=-120,
        remove=["jti"],
        jti="kept-out",  # remove wins over a keyword claim
        headers={"typ": REMOVE, "cty": "x"},
        now=NOW,
    )
    header, payload, _ = parts(token)
    assert "typ" not in header and header["cty"] == "x"
    assert "nbf" not in payload and "jti" not in payload
    assert (
        payload["exp"] == NOW - 120
        and payload["sub"] == "bob"
        and payload["groups"] == ["a"]
    )
    _, payload, _ = parts(served.mint(sub=None, aud=None, remove=["exp", "iss"]))
    assert set(payload) == {"iat", "nbf", "jti"}
    assert parts(served.mint(jti="my-id"))[1]["jti"] == "my-id"


def test_mint_alg_none_and_unpublished_keys(served: DevIssuer) -> None:
    token = served.mint(alg="none")
    assert token.endswith(".") and parts(token)[0]["alg"] == "none"
    header, _, _ = parts(served.mint(sign_with_unpublished=True))
    assert header["kid"] == "rs256-1"  # a published kid, an unpublished key
    header, _, _ = parts(served.mint(kid="stuck-1"))
    assert header["kid"] == "stuck-1"


def test_forged_hs256_is_an_hmac_over_the_public_pem(served: DevIssuer) -> None:
    token = forge_hs256_with_public_key(served, sub="alice", aud=AUD)
    header, payload, signature = parts(token)
    assert (
        header["alg"] == "HS256"
        and header["kid"] == "rs256-1"
        and payload["sub"] == "alice"
    )
    signing_input = token.rsplit(".", 1)[0].encode()
    mac = hmac.new(
        served.public_key_pem("rs256-1"), signing_input, hashlib.sha256
    ).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == signature


def test_issuer_of_a_stopped_instance_comes_from_the_issuer_file(
    tmp_path: Path,
) -> None:
    issuer = DevIssuer(str(tmp_path))
    with pytest.raises(RuntimeError):
        _ = issuer.issuer
    (tmp_path / "issuer").write_text("http://127.0.0.1:4444\n")
    assert issuer.issuer == "http://127.0.0.1:4444"
    assert DevIssuer(str(tmp_path), port=5555).issuer == "http://127.0.0.1:5555"


# -- the device authorization grant (RFC 8628) libpq 18's OAuth flow uses ------


def test_discovery_names_the_device_flow_endpoints(tmp_path: Path) -> None:
    issuer = DevIssuer(str(tmp_path), port=4444)
    discovery = issuer.discovery()
    assert discovery["token_endpoint"] == "http://127.0.0.1:4444/token"
    assert (
        discovery["device_authorization_endpoint"]
        == "http://127.0.0.1:4444/device_authorization"
    )
    assert discovery["grant_types_supported"] == [DEVICE_CODE_GRANT]


def test_device_flow_pending_until_approved_then_one_token(tmp_path: Path) -> None:
    issuer = DevIssuer(str(tmp_path), port=4444)
    issuer.device_audience = AUD
    status, authz = issuer.device_authorize(
        {"client_id": "psql", "scope": "openid pg"}, now=NOW
    )
    assert status == 200
    assert set(authz) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert authz["verification_uri"] == "http://127.0.0.1:4444/device"
    assert (authz["expires_in"], authz["interval"]) == (600, 1)
    poll = {"grant_type": DEVICE_CODE_GRANT, "device_code": authz["device_code"]}
    assert issuer.device_token({**poll, "client_id": "psql"}, now=NOW + 1) == (
        400,
        {"error": "authorization_pending"},
    )
    assert issuer.approve("NOPE-NOPE") is False
    assert issuer.approve(authz["user_code"], sub="bob", claims={"email": "b@x"})
    status, answer = issuer.device_token(poll, now=NOW + 2)
    assert status == 200 and answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 300 and answer["scope"] == "openid pg"
    header, payload, _ = parts(answer["access_token"])
    assert header["alg"] == "RS256"
    assert payload["iss"] == "http://127.0.0.1:4444" and payload["sub"] == "bob"
    assert payload["aud"] == AUD and payload["scope"] == "openid pg"
    assert payload["client_id"] == "psql" and payload["email"] == "b@x"
    assert payload["exp"] == NOW + 2 + 300
    # a device code is good for one token
    assert issuer.device_token(poll, now=NOW + 3) == (400, {"error": "invalid_grant"})


def test_device_flow_refusals(tmp_path: Path) -> None:
    issuer = DevIssuer(str(tmp_path), port=4444)
    assert issuer.device_authorize({"scope": "x"})[0] == 400  # no client_id
    _, authz = issuer.device_authorize({"client_id": "c"}, now=NOW)
    poll = {"grant_type": DEVICE_CODE_GRANT, "device_code": authz["device_code"]}
    assert issuer.device_token({**poll, "grant_type": "password"}) == (
        400,
        {"error": "unsupported_grant_type"},
    )
    assert issuer.device_token({**poll, "client_id": "other"}, now=NOW)[0] == 400
    assert issuer.device_token({**poll, "device_code": "x"}, now=NOW) == (
        400,
        {"error": "invalid_grant"},
    )
    assert issuer.device_token(poll, now=NOW + 601) == (
        400,
        {"error": "expired_token"},
    )
    _, denied = issuer.device_authorize({"client_id": "c"}, now=NOW)
    assert issuer.approve(denied["user_code"], deny=True)
    poll["device_code"] = denied["device_code"]
    assert issuer.device_token(poll, now=NOW) == (400, {"error": "access_denied"})


def test_device_approval_with_audience_over_post_forms() -> None:
    assert parse_form(b"a=1&b=x+y&c=", "application/x-www-form-urlencoded") == {
        "a": "1",
        "b": "x y",
        "c": "",
    }
    assert parse_form(
        b'{"user_code": "AB", "claims": {"x": 1}}', "application/json"
    ) == {
        "user_code": "AB",
        "claims": '{"x": 1}',
    }
    with pytest.raises(ValueError):
        parse_form(b"[1]", "application/json; charset=utf-8")


def post(url: str, form: dict[str, str]) -> tuple[int, str, Any]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as response:
            ctype = response.headers["Content-Type"]
            return response.status, ctype, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def test_device_flow_over_http(served: DevIssuer) -> None:
    served.device_audience = AUD
    for path in (
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ):
        status, _, discovery = get(served.issuer + path)
        assert status == 200 and discovery["issuer"] == served.issuer
    status, ctype, authz = post(
        discovery["device_authorization_endpoint"],
        {"client_id": "psql", "scope": "openid"},
    )
    assert (status, ctype) == (200, "application/json")
    poll = {
        "grant_type": DEVICE_CODE_GRANT,
        "device_code": authz["device_code"],
        "client_id": "psql",
    }
    assert post(discovery["token_endpoint"], poll)[::2] == (
        400,
        {"error": "authorization_pending"},
    )
    approve = served.issuer + "/device/approve"
    assert post(approve, {"user_code": "ZZZZ-ZZZZ"})[0] == 404
    assert post(
        approve, {"user_code": authz["user_code"], "sub": "carol", "aud": '"elsewhere"'}
    )[::2] == (200, {"approved": True})
    status, _, answer = post(discovery["token_endpoint"], poll)
    assert status == 200
    _, payload, _ = parts(answer["access_token"])
    assert (payload["sub"], payload["aud"]) == ("carol", "elsewhere")
    assert post(served.issuer + "/nowhere", {})[0] == 404
