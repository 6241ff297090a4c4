"""Random and adversarial input to the validation entry points: only decisions with
reason codes come out, never an exception, and nothing admits what it should not.

The signed cases sign with a published key, so every check after the signature
(times, audience, azp, required claims, revocation, mapping) sees the junk too.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_oauth_dev.dev_issuer import DevIssuer, b64url, encode_jws
from unit_support import AUD, ISS, NOW, issuer_row, no_network, rule_row

from pyhook.config import Config
from pyhook.decision import STEPS, Decision
from pyhook.errors import REASONS
from pyhook.jwks_cache import KeyStore
from pyhook.plpython_adapter import Adapter
from pyhook.sql_rows import decision_row, explain_rows
from pyhook.validator import validate

# generous: catches a hang or a quadratic blow-up, not a slow machine
DEADLINE = timedelta(seconds=5)
SETTINGS = settings(
    max_examples=150,
    deadline=DEADLINE,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
CLAIMS = ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "email", "groups",
          "realm_access", "https://example.com/groups", "kubernetes.io")  # fmt: skip


def hostile_config(static_jwks: str) -> Config:
    """An issuer with every policy switched on, and rules over nested paths."""
    return Config.from_rows(
        [issuer_row(jwks=static_jwks, typ=["jwt", "at+jwt"], authorized_parties=["cli"],
                    required_claims=["email", "email_verified=true"],
                    max_token_lifetime=3600.0)],
        [rule_row(1, "(alice|bob)", r"\1"),
         rule_row(2, "(.*)@example\\.com", r"\1", claim="email"),
         rule_row(3, "db-(.*)", r"\1", claim="realm_access.roles"),
         rule_row(4, "(.*)", r"\1", claim="https://example.com/groups"),
         rule_row(5, "(.*)", r"\1", claim='"kubernetes.io".serviceaccount.name',
                  databases=["app"], client_cidrs=["10.0.0.0/8"])],
        1,
        [{"id": 1, "subject": "mallory"}, {"id": 2, "token_id": "revoked-jti"}],
    )  # fmt: skip


def decide(token: Any, config: Config, role: str = "alice", **kw: Any) -> Decision:
    return validate(token, role, "app", "10.0.0.5", True, config,
                    KeyStore(fetch=no_network), now=NOW, **kw)  # fmt: skip


def assert_sound(decision: Decision, role: str = "alice") -> None:
    assert decision.reason in (*REASONS, "ok"), decision.reason
    assert isinstance(decision.detail, str) and decision.detail
    if decision.ok:
        assert decision.reason == "ok" and role in decision.allowed_roles
        assert decision.claims is not None
        assert all(c.outcome != "fail" for c in decision.trail)
    else:
        assert decision.reason != "ok"
    assert [c.name for c in decision.trail if not c.name.startswith("rule ")] == list(
        STEPS
    )
    # whatever went in, the row PostgreSQL receives can be built and stored
    row = decision_row(decision)
    for value in (row["detail"], row["claims"] or "", *row["allowed_roles"]):
        assert "\x00" not in value
        value.encode("utf-8")
    if row["claims"] is not None:
        json.loads(row["claims"])
    explain_rows(decision)


# -- unsigned junk ----------------------------------------------------------------------

SEGMENT = st.text(alphabet="ABCabc012_-+/=.!é \n", max_size=40)


@SETTINGS
@given(st.lists(SEGMENT, min_size=1, max_size=6))
def test_broken_base64_and_structure(static_jwks: str, segments: list[str]) -> None:
    decision = decide(".".join(segments), hostile_config(static_jwks))
    assert not decision.ok
    assert_sound(decision)


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=80))
def test_valid_base64_of_arbitrary_bytes(
    static_jwks: str, header: bytes, payload: bytes, signature: bytes
) -> None:
    token = f"{b64url(header)}.{b64url(payload)}.{b64url(signature)}"
    decision = decide(token, hostile_config(static_jwks))
    assert not decision.ok
    assert_sound(decision)


@SETTINGS
@given(JSON, JSON)
def test_arbitrary_json_header_and_payload_unsigned(
    static_jwks: str, header: Any, payload: Any
) -> None:
    def enc(value: Any) -> str:
        return b64url(json.dumps(value).encode())

    decision = decide(f"{enc(header)}.{enc(payload)}.c2ln", hostile_config(static_jwks))
    assert not decision.ok
    assert_sound(decision)


# -- signed junk: every claim of every type ----------------------------------------------


def good_claims() -> dict[str, Any]:
    return {
        "iss": ISS, "sub": "alice", "aud": AUD, "iat": NOW, "nbf": NOW,
        "exp": NOW + 300, "azp": "cli", "email": "alice@example.com",
        "email_verified": True,
    }  # fmt: skip


@SETTINGS
@given(st.dictionaries(st.sampled_from(CLAIMS), JSON, min_size=1, max_size=5))
def test_wrong_types_for_every_claim(
    dev: DevIssuer, static_jwks: str, replaced: dict[str, Any]
) -> None:
    kid = dev.current_kid("EdDSA")
    claims = {**good_claims(), **replaced}
    token = encode_jws(
        {"alg": "EdDSA", "kid": kid, "typ": "JWT"}, claims, dev.private_key(kid)
    )
    for role in ("alice", "bob", "ops"):
        assert_sound(decide(token, hostile_config(static_jwks), role), role)
    assert_sound(decide(token, hostile_config(static_jwks), explain=True))


@SETTINGS
@given(
    st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    st.sampled_from(
        ["typ", "crit", "kid", "jku", "jwk", "x5u", "x5c", "cty", "b64", "zip"]
    ),
    JSON,
)
def test_arbitrary_header_members(
    dev: DevIssuer, static_jwks: str, extra: dict[str, Any], name: str, value: Any
) -> None:
    kid = dev.current_kid("EdDSA")
    header = {**extra, name: value, "alg": "EdDSA"}
    header.setdefault("kid", kid)
    token = encode_jws(header, good_claims(), dev.private_key(kid))
    decision = decide(token, hostile_config(static_jwks))
    assert_sound(decision)
    if decision.ok:  # only a header this issuer accepts gets through
        assert header["kid"] == kid and "crit" not in header
        assert str(header.get("typ")).lower() in ("jwt", "at+jwt", "application/jwt")


@settings(max_examples=40, deadline=DEADLINE,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["[", '{"a":']))
def test_deeply_nested_json(
    dev: DevIssuer, static_jwks: str, depth: int, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    body = json.dumps(good_claims())[:-1] + f', "deep": {nested}}}'
    kid = dev.current_kid("EdDSA")
    token = encode_jws(
        {"alg": "EdDSA", "kid": kid, "typ": "JWT"}, body.encode(), dev.private_key(kid)
    )
    decision = decide(token, hostile_config(static_jwks))
    assert_sound(decision)
    assert decision.ok == (depth < 32)


@settings(max_examples=15, deadline=DEADLINE,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    st.integers(min_value=0, max_value=45_000),
    st.sampled_from(["string", "members", "array"]),
)
def test_huge_json(dev: DevIssuer, static_jwks: str, size: int, shape: str) -> None:
    claims = good_claims()
    if shape == "string":
        claims["big"] = "x" * size
    elif shape == "members":
        claims.update({f"m{i}": i for i in range(size // 10)})
    else:
        claims["groups"] = ["g"] * (size // 4)
    kid = dev.current_kid("EdDSA")
    token = encode_jws(
        {"alg": "EdDSA", "kid": kid, "typ": "JWT"}, claims, dev.private_key(kid)
    )
    decision = decide(token, hostile_config(static_jwks))
    assert_sound(decision)
    assert decision.ok == (len(token) <= 65530)


# -- the PL/Python entry point ------------------------------------------------------------


class _Plpy:
    """Just enough of plpy for Adapter.validate with a fixed configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def prepare(self, query: str, types: list[str] | None = None) -> str:
        return query

    def execute(self, plan: str, args: list[Any] | None = None) -> list[dict[str, Any]]:
        return []

    def warning(self, message: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass


@SETTINGS
@given(
    JSON,
    st.one_of(st.text(max_size=20), st.none()),
    st.one_of(st.text(max_size=40), st.none()),
)
def test_adapter_rows_are_always_storable(
    dev: DevIssuer, static_jwks: str, value: Any, role: Any, addr: Any
) -> None:
    adapter = Adapter(_Plpy(hostile_config(static_jwks)))
    adapter.config = hostile_config(static_jwks)
    adapter._counter = 1  # the configuration above is current: no query
    adapter.keys = KeyStore(fetch=no_network)
    kid = dev.current_kid("EdDSA")
    claims = {**good_claims(), "extra": value, "sub\x00": "\ud800"}
    token = encode_jws({"alg": "EdDSA", "kid": kid}, claims, dev.private_key(kid))
    row = adapter.validate(token, role, "app", addr, True, 1)
    assert row["reason"] in (*REASONS, "ok")
    if row["claims"] is not None:
        assert "\x00" not in row["claims"]
        row["claims"].encode("utf-8")
    row["detail"].encode("utf-8")


def test_signature_bytes_never_reach_a_row(dev: DevIssuer, static_jwks: str) -> None:
    kid = dev.current_kid("EdDSA")
    token = encode_jws(
        {"alg": "EdDSA", "kid": kid}, good_claims(), dev.private_key(kid)
    )
    signature = token.split(".")[2]
    raw = base64.urlsafe_b64decode(signature + "==")
    for role in ("alice", "bob"):
        decision = decide(token, hostile_config(static_jwks), role, explain=True)
        text = json.dumps([decision_row(decision), explain_rows(decision)])
        assert signature not in text and raw.hex() not in text
