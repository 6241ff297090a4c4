"""The validation core: every reason code, with real keys and real signatures."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms
from pg_oauth_dev.dev_issuer import (
    REMOVE,
    DevIssuer,
    b64url,
    encode_jws,
    forge_hs256_with_public_key,
)
from unit_support import (
    ALL_ALGS,
    AUD,
    ISS,
    NOW,
    ROOT,
    Clock,
    Documents,
    assert_refused,
    issuer_row,
    no_network,
    rule_row,
)

from pyhook.config import Config
from pyhook.decision import FAIL, PASS, SKIP, STEPS, Decision
from pyhook.errors import REASONS, ValidationError
from pyhook.jwks_cache import KeyStore
from pyhook.validator import MAX_TOKEN_BYTES, validate

Check = Callable[..., Decision]
Mint = Callable[..., str]


def craft(header: Any, payload: Any, signature: bytes = b"sig-bytes-here") -> str:
    """A token from raw parts (JSON-encoded unless bytes)."""

    def enc(part: Any) -> str:
        return b64url(part if isinstance(part, bytes) else json.dumps(part).encode())

    return f"{enc(header)}.{enc(payload)}.{b64url(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": ISS, "sub": "alice", "aud": AUD, "iat": NOW, "exp": NOW + 300}
    base.update(overrides)
    return base


# -- accepted tokens -------------------------------------------------------------


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_valid_token_is_accepted(alg: str, mint: Mint, check: Check) -> None:
    token = mint({"jti": "id-1", "email": "alice@example.com"}, alg=alg)
    decision = check(token)
    assert decision.ok, decision.detail
    assert (decision.reason, decision.allowed_roles) == ("ok", ["alice"])
    assert (decision.issuer, decision.subject, decision.token_id) == (
        ISS,
        "alice",
        "id-1",
    )
    assert decision.expires_at == datetime.fromtimestamp(NOW + 300, tz=UTC)
    assert decision.expires_at.tzinfo is not None
    assert (
        decision.claims is not None and decision.claims["email"] == "alice@example.com"
    )
    assert [c.name for c in decision.trail] == list(STEPS)
    assert all(c.outcome in (PASS, SKIP) for c in decision.trail)
    assert token.split(".")[2] not in " ".join(c.info for c in decision.trail)


def test_bytes_token_is_accepted(mint: Mint, check: Check) -> None:
    assert check(mint().encode("ascii")).ok


def test_token_within_leeway_is_accepted(mint: Mint, check: Check) -> None:
    assert check(mint(lifetime=300), now=NOW + 320).ok  # expired 20 s ago, leeway 30 s
    assert check(mint({"nbf": NOW + 20, "iat": NOW + 20})).ok


def test_kidless_token_uses_the_only_fitting_key(
    dev: DevIssuer, mint: Mint, check: Check
) -> None:
    es_only = json.dumps(
        {"keys": [k for k in dev.jwks()["keys"] if k["alg"] == "ES256"]}
    )
    token = mint(alg="ES256", headers={"kid": REMOVE})
    assert check(token, cfg=static_config(es_only)).ok


def static_config(jwks: Any) -> Config:
    """The default issuer and rules with other static keys."""
    text = jwks if isinstance(jwks, str) else json.dumps(jwks)
    return Config.from_rows(
        [issuer_row(jwks=text)], [rule_row(1, "(alice|bob)", r"\1")]
    )


# -- malformed and too_large --------------------------------------------------------

GOOD_HEADER = {"alg": "RS256", "kid": "rs256-1"}


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("", "empty"),
        ("abc", "segment"),
        ("abc.def", "segment"),
        ("a.b.c.d.e", "JWE"),
        ("eyJh.eyJi.c2ln=", "padded"),
        ("eyJh.eyJi .c2ln", "whitespace"),
        (" eyJh.eyJi.c2ln", "whitespace"),
        ("eyJh.eyJi.c2ln\n", "whitespace"),
        ("eyJh.ey+i.c2ln", "outside base64url"),
        ("eyJh.eyJi.c2é", "outside base64url"),
        (b"eyJh.eyJi.c2\xff", "outside base64url"),
        (".eyJi.c2ln", "segment"),
        ("eyJhb.eyJi.c2ln", "base64url length"),
        (None, "no token"),
        (12345, "no token"),
    ],
)
def test_malformed_structure(token: Any, words: str, check: Check) -> None:
    decision = check(token)
    assert_refused(decision, "malformed", token)
    assert words in decision.detail
    assert decision.claims is None and decision.issuer is None
    assert decision.trail[0].name == "header" and decision.trail[0].outcome == FAIL


@pytest.mark.parametrize(
    ("header", "payload", "words"),
    [
        (b"not json", claims(), "header is not valid"),
        (["RS256"], claims(), "header is not a JSON object"),
        ({"kid": "rs256-1"}, claims(), "no alg"),
        ({"alg": 256}, claims(), "no alg"),
        ({**GOOD_HEADER, "crit": ["exp"]}, claims(), "crit extensions not supported"),
        ({"alg": "RS256", "kid": 1}, claims(), "kid is not a string"),
        (GOOD_HEADER, b"\xff\xfe{}", "payload is not valid"),
        (GOOD_HEADER, b'{"iss": NaN}', "payload is not valid"),
        (GOOD_HEADER, b'{"iss": "a", "iss": "b"}', "duplicate member"),
        (b'{"alg": "RS256", "alg": "none"}', claims(), "duplicate member"),
        # Python 3.13 and later parse 5000 nested arrays; 3.11 and 3.12 cannot
        (GOOD_HEADER, b"[" * 5000 + b"]" * 5000,
         "payload is not valid" if sys.version_info < (3, 13) else
         "payload is not a JSON object"),
        (GOOD_HEADER, b'{"n": 1' + b"0" * 5000 + b"}", "payload is not valid"),
        (GOOD_HEADER, "a string", "payload is not a JSON object"),
        (GOOD_HEADER, claims(iss=["a"]), "iss claim is not a string"),
    ],
)
def test_malformed_content(header: Any, payload: Any, words: str, check: Check) -> None:
    token = craft(header, payload)
    decision = check(token)
    assert_refused(decision, "malformed", token)
    assert words in decision.detail
    assert (
        decision.claims is None and decision.issuer is None and decision.subject is None
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"exp": "tomorrow"}, "exp claim is not a number"),
        ({"exp": True}, "exp claim is not a number"),
        ({"exp": 1e300}, "exp claim is out of range"),
        ({"exp": 10**30}, "exp claim is out of range"),
        ({"nbf": "now"}, "nbf claim is not a number"),
        ({"iat": False}, "iat claim is not a number"),
        ({"aud": 5}, "aud claim"),
        ({"aud": [AUD, 5]}, "aud claim"),
    ],
)
def test_malformed_claims_after_signature(
    overrides: dict[str, Any], words: str, mint: Mint, check: Check
) -> None:
    token = mint(overrides)
    decision = check(token)
    assert_refused(decision, "malformed", token)
    assert words in decision.detail


@pytest.mark.parametrize("name", ["sub", "jti", "azp"])
@pytest.mark.parametrize("bad", ["\x00", "\ud800", chr(0xDFFF)])
def test_identity_claims_postgresql_cannot_store_are_malformed(
    name: str, bad: str, mint: Mint, check: Check, config: Any
) -> None:
    # stored with U+FFFD in their place but compared raw, "bob\0" would escape a
    # revocation of itself and share limits with "bob\ufffd"
    value = f"bob{bad}x"
    token = mint({name: value})
    cfg = config(authorized_parties=[value]) if name == "azp" else None
    decision = check(token, cfg=cfg)
    assert_refused(decision, "malformed", token)
    assert f"{name} claim contains NUL or an unpaired surrogate" in decision.detail
    assert "bob" not in decision.detail
    # refused whether or not this issuer checks azp
    if name == "azp":
        assert check(token).reason == "malformed"


@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_issuer_postgresql_cannot_store_is_malformed(
    bad: str, mint: Mint, check: Check, config: Any
) -> None:
    iss = f"{ISS}{bad}"
    token = mint({"iss": iss})
    cfg = Config.from_rows([issuer_row(issuer=iss, jwks=None)], [], 1)
    for decision in (check(token), check(token, cfg=cfg)):
        assert_refused(decision, "malformed", token)
        assert "iss claim contains NUL" in decision.detail
        assert "issuer.example" not in decision.detail


def test_identity_claims_may_hold_any_other_unicode(mint: Mint, check: Check) -> None:
    other = "b\u00f6b \U0001f600 \ufffd \u2028"
    assert check(mint({"jti": other, "azp": other})).ok
    # past the identity checks: only the role mapping refuses this subject
    assert check(mint({"sub": other})).reason == "role_not_allowed"


def test_max_token_bytes_is_the_c_ceiling() -> None:
    header = (ROOT / "pg_oauth_ext" / "pg_oauth.h").read_text()
    found = re.search(r"#define\s+PG_OAUTH_TOKEN_CEILING\s+(\d+)", header)
    assert found is not None, "PG_OAUTH_TOKEN_CEILING not in pg_oauth.h"
    assert int(found.group(1)) == MAX_TOKEN_BYTES


def test_too_large(check: Check) -> None:
    token = "a" * (MAX_TOKEN_BYTES + 1)
    assert_refused(check(token), "too_large", token)
    assert_refused(check(token.encode()), "too_large", token)
    assert check("a" * MAX_TOKEN_BYTES).reason == "malformed"
    assert str(MAX_TOKEN_BYTES) in check(token).detail


def test_too_large_counts_bytes_not_characters(check: Check) -> None:
    token = "é" * (MAX_TOKEN_BYTES // 2 + 1)
    assert check(token).reason == "too_large"


# -- algorithm -------------------------------------------------------------------


def test_alg_none_is_refused(mint: Mint, check: Check) -> None:
    token = mint(alg="none")
    assert token.endswith(".")
    decision = check(token)
    assert_refused(decision, "unsupported_alg", token)
    assert "'none'" in decision.detail


def test_hs256_signed_with_the_rsa_public_key_is_refused(
    dev: DevIssuer, check: Check
) -> None:
    token = forge_hs256_with_public_key(dev, {"iss": ISS}, aud=AUD, now=NOW)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "HS256" and header["kid"].startswith("rs256")
    assert_refused(check(token), "unsupported_alg", token)
    pem_token = forge_hs256_with_public_key(dev.public_key_pem("rs256-1"), claims())
    assert_refused(check(pem_token), "unsupported_alg", pem_token)


@pytest.mark.parametrize("alg", ["HS256", "HS512", "RS1", "ES256K", "none", "NONE", ""])
def test_other_algorithms_are_refused(alg: str, check: Check) -> None:
    token = craft({"alg": alg, "kid": "rs256-1"}, claims())
    assert_refused(check(token), "unsupported_alg", token)


def test_alg_outside_the_issuers_allowlist(
    mint: Mint, check: Check, config: Any
) -> None:
    token = mint()  # RS256
    decision = check(token, cfg=config(algorithms=["ES256", "EdDSA"]))
    assert_refused(decision, "unsupported_alg", token)
    assert "ES256" in decision.detail
    assert [(c.name, c.outcome) for c in decision.trail[:3]] == [
        ("header", PASS),
        ("issuer", PASS),
        ("algorithm", FAIL),
    ]
    assert decision.claims is None and decision.issuer is None


# -- issuer --------------------------------------------------------------------------


def test_untrusted_issuer(mint: Mint, check: Check) -> None:
    token = mint({"iss": "https://evil.example.com"})
    decision = check(token)
    assert_refused(decision, "untrusted_issuer", token)
    # unverified: the detail (server log, audit_log) describes the value, never shows it
    assert "evil" not in decision.detail
    digest = hashlib.sha256(b"https://evil.example.com").hexdigest()[:12]
    assert f"iss of 24 characters, SHA-256 {digest}" in decision.detail
    assert decision.issuer is None and decision.claims is None
    # oauth.explain, run by the DBA with the token in hand, shows the value
    issuer_step = next(c for c in decision.trail if c.name == "issuer")
    assert "https://evil.example.com" in issuer_step.input


def test_issuer_match_is_exact(mint: Mint, check: Check) -> None:
    for iss in (ISS + "/", ISS.upper(), " " + ISS):
        assert check(mint({"iss": iss})).reason == "untrusted_issuer"


def test_disabled_issuer(mint: Mint, check: Check, config: Any) -> None:
    token = mint()
    decision = check(token, cfg=config(enabled=False))
    assert_refused(decision, "untrusted_issuer", token)
    assert "disabled" in decision.detail


def test_missing_iss(mint: Mint, check: Check) -> None:
    token = mint(remove=["iss"])
    assert_refused(check(token), "missing_claim", token)


# -- key ---------------------------------------------------------------------------------


def test_unknown_kid(mint: Mint, check: Check) -> None:
    token = mint(kid="no-such-key")
    decision = check(token)
    assert_refused(decision, "unknown_key", token)
    assert "no-such-key" in decision.detail


def test_key_of_the_wrong_type(mint: Mint, check: Check) -> None:
    token = mint(alg="ES256", headers={"kid": "rs256-1"})  # ES256 signature, RSA kid
    decision = check(token)
    assert_refused(decision, "unknown_key", token)
    assert "RSA" in decision.detail and "ES256" in decision.detail


def test_key_alg_must_equal_token_alg(mint: Mint, check: Check) -> None:
    token = mint(alg="PS256", kid="rs256-1")  # the RSA key published for RS256
    decision = check(token)
    assert_refused(decision, "unknown_key", token)
    assert "RS256" in decision.detail


def test_es384_token_cannot_use_a_p256_key(
    dev: DevIssuer, mint: Mint, check: Check
) -> None:
    jwks = dev.jwks()
    for key in jwks["keys"]:
        key.pop("alg")  # without alg only the curve tells them apart
    cfg = static_config(jwks)
    token = mint(alg="ES384", headers={"kid": dev.current_kid("ES256")})
    assert_refused(check(token, cfg=cfg), "unknown_key", token)


def test_kidless_token_with_several_fitting_keys(
    dev: DevIssuer, mint: Mint, check: Check
) -> None:
    jwks = dev.jwks()
    second = dict(next(k for k in jwks["keys"] if k["alg"] == "RS256"), kid="copy")
    jwks["keys"].append(second)
    cfg = static_config(jwks)
    token = mint(headers={"kid": REMOVE})
    decision = check(token, cfg=cfg)
    assert_refused(decision, "unknown_key", token)
    assert "kid is required" in decision.detail


def test_hmac_oct_keys_are_never_used(dev: DevIssuer, mint: Mint, check: Check) -> None:
    oct_key = {"kty": "oct", "kid": "rs256-1", "k": b64url(b"secret")}
    token = mint()
    decision = check(token, cfg=static_config({"keys": [oct_key]}))
    assert_refused(decision, "jwks_unavailable", token)  # the only key was skipped
    rsa_key = next(k for k in dev.jwks()["keys"] if k["kid"] == "rs256-1")
    mixed = {"keys": [dict(oct_key, kid="hmac"), rsa_key]}
    hs = craft({"alg": "HS256", "kid": "hmac"}, claims())
    assert_refused(check(hs, cfg=static_config(mixed)), "unsupported_alg", hs)


# -- signature ------------------------------------------------------------------------------


def test_signed_by_an_unpublished_key(mint: Mint, check: Check) -> None:
    token = mint(sign_with_unpublished=True)
    decision = check(token)
    assert_refused(decision, "bad_signature", token)
    assert (
        decision.claims is None and decision.subject is None and decision.issuer is None
    )
    assert [(c.name, c.outcome) for c in decision.trail[:6]] == [
        ("header", PASS),
        ("issuer", PASS),
        ("algorithm", PASS),
        ("typ", SKIP),  # no typ required by default
        ("key", PASS),
        ("signature", FAIL),
    ]
    assert all(c.outcome == SKIP for c in decision.trail[6:])


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "ES512", "EdDSA"])
def test_altered_payload(alg: str, mint: Mint, check: Check) -> None:
    header, _, signature = mint({"sub": "bob"}, alg=alg).split(".")
    payload = mint({"sub": "alice"}, alg=alg).split(".")[1]
    token = f"{header}.{payload}.{signature}"
    assert_refused(check(token), "bad_signature", token)


@pytest.mark.parametrize("cut", ["empty", "short", "long"])
def test_damaged_signature(cut: str, mint: Mint, check: Check) -> None:
    header, payload, signature = mint(alg="ES256").split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    damaged = {"empty": b"", "short": raw[:-6], "long": raw + b"\0\0\0"}[cut]
    token = f"{header}.{payload}.{b64url(damaged)}"
    assert check(token).reason == "bad_signature"


def test_claims_are_not_checked_before_the_signature(mint: Mint, check: Check) -> None:
    token = mint({"exp": NOW - 10_000, "aud": "other"}, sign_with_unpublished=True)
    assert check(token).reason == "bad_signature"


# -- time claims ----------------------------------------------------------------------------


def test_expired(mint: Mint, check: Check) -> None:
    token = mint(lifetime=300)
    decision = check(token, now=NOW + 342)
    assert_refused(decision, "expired", token)
    assert decision.detail == "token expired 42 s ago (leeway 30 s)"
    # refused after the signature verified: the decision says whose token it was
    assert (decision.issuer, decision.subject) == (ISS, "alice")
    assert decision.claims is not None and decision.expires_at is not None
    assert decision.allowed_roles == []


def test_leeway_comes_from_the_issuer(mint: Mint, check: Check, config: Any) -> None:
    token = mint(lifetime=300)
    assert check(token, now=NOW + 320, cfg=config(leeway=0.0)).reason == "expired"


def test_missing_exp(mint: Mint, check: Check) -> None:
    token = mint(remove=["exp"])
    decision = check(token)
    assert_refused(decision, "missing_claim", token)
    assert "exp" in decision.detail


def test_not_yet_valid_nbf(mint: Mint, check: Check) -> None:
    token = mint({"nbf": NOW + 600}, lifetime=1200)
    decision = check(token)
    assert_refused(decision, "not_yet_valid", token)
    assert "600 s" in decision.detail


def test_issued_in_the_future(mint: Mint, check: Check) -> None:
    token = mint({"iat": NOW + 600}, lifetime=1200, remove=["nbf"])
    decision = check(token)
    assert_refused(decision, "not_yet_valid", token)
    assert "issued in the future" in decision.detail


def test_lifetime_too_long(mint: Mint, check: Check, config: Any) -> None:
    cfg = config(max_token_lifetime=600.0)
    token = mint(lifetime=3600)
    decision = check(token, cfg=cfg)
    assert_refused(decision, "lifetime_too_long", token)
    assert "3600 s" in decision.detail and "600 s" in decision.detail
    assert check(mint(lifetime=600), cfg=cfg).ok


def test_lifetime_without_iat_counts_from_now(
    mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(max_token_lifetime=600.0)
    token = mint(lifetime=3600, remove=["iat"])
    assert check(token, cfg=cfg).reason == "lifetime_too_long"
    assert check(token, cfg=cfg, now=NOW + 3100).ok


def test_no_lifetime_limit_is_a_skipped_step(mint: Mint, check: Check) -> None:
    decision = check(mint(lifetime=10**7))
    assert decision.ok
    lifetime = next(c for c in decision.trail if c.name == "lifetime")
    assert lifetime.outcome == SKIP


# -- audience ---------------------------------------------------------------------------------


def test_audience_mismatch(mint: Mint, check: Check) -> None:
    token = mint(aud="someone-else")
    decision = check(token)
    assert_refused(decision, "audience_mismatch", token)
    assert (
        decision.detail
        == f"audience ['someone-else'] not accepted; expected one of ['{AUD}']"
    )


def test_audience_list_needs_one_match(mint: Mint, check: Check) -> None:
    assert check(mint(aud=["other", AUD])).ok
    assert check(mint(aud=["other", "more"])).reason == "audience_mismatch"
    assert check(mint(aud=[])).reason == "audience_mismatch"


def test_missing_audience(mint: Mint, check: Check) -> None:
    token = mint(aud=None)
    assert_refused(check(token), "missing_claim", token)


# -- role mapping ------------------------------------------------------------------------------


def test_role_not_allowed_lists_the_allowed_roles(mint: Mint, check: Check) -> None:
    token = mint(sub="alice")
    decision = check(token, "bob")
    assert_refused(decision, "role_not_allowed", token)
    assert "['alice']" in decision.detail
    assert decision.allowed_roles == ["alice"]
    assert decision.claims is not None and decision.subject == "alice"


def test_role_not_allowed_without_any_role(mint: Mint, check: Check) -> None:
    token = mint(sub="mallory")
    decision = check(token, "alice")
    assert_refused(decision, "role_not_allowed", token)
    assert "no role" in decision.detail
    assert decision.allowed_roles == []


def test_no_role_named_means_the_tokens_only_role(mint: Mint, check: Check) -> None:
    # oauth.authenticate(token) without a role asks with ""
    decision = check(mint(sub="alice"), "")
    assert decision.ok and decision.allowed_roles == ["alice"]


def test_no_role_named_is_refused_when_the_token_allows_several(
    mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(rules=[rule_row(1, "(alice)", r"\1"), rule_row(2, "alice", "bob")])
    token = mint(sub="alice")
    decision = check(token, "", cfg=cfg)
    assert_refused(decision, "role_not_allowed", token)
    assert "name one" in decision.detail


def test_no_role_named_is_refused_when_the_token_allows_none(mint: Mint, check: Check) -> None:
    token = mint(sub="mallory")
    assert_refused(check(token, ""), "role_not_allowed", token)


def test_union_of_rules_and_substitution(mint: Mint, check: Check, config: Any) -> None:
    rules = [
        rule_row(1, "(alice|bob)", r"\1"),
        rule_row(2, r"([a-z]+)@example\.com", r"mail_\1", claim="email"),
        rule_row(3, "dba", "admin_role", claim="https://example.com/groups"),
        rule_row(4, "(.*)-reader", r"\1_ro", claim='resource_access."my.app".roles'),
        rule_row(5, "7", "level_seven", claim="level"),
        rule_row(6, ".*", "everyone", issuer="https://other.example.com"),
        rule_row(7, "true", "active_user", claim="active"),
    ]
    token = mint(
        {
            "email": "carol@example.com",
            "https://example.com/groups": ["ops", "dba"],
            "resource_access": {"my.app": {"roles": ["app-reader", "x"]}},
            "level": 7,
            "active": True,
        }
    )
    decision = check(token, "mail_carol", cfg=config(rules=rules))
    assert decision.ok, decision.detail
    assert decision.allowed_roles == [
        "active_user",
        "admin_role",
        "alice",
        "app_ro",
        "level_seven",
        "mail_carol",
    ]


def test_pattern_must_match_the_whole_value(
    mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(rules=[rule_row(1, "alice", "alice")])
    assert check(mint(sub="alice2"), cfg=cfg).reason == "role_not_allowed"
    assert check(mint(sub="xalice"), cfg=cfg).reason == "role_not_allowed"


def test_database_restriction(mint: Mint, check: Check, config: Any) -> None:
    cfg = config(rules=[rule_row(1, "alice", "alice", databases=["app", "reports"])])
    token = mint()
    assert check(token, database="reports", cfg=cfg).ok
    decision = check(token, database="postgres", cfg=cfg)
    assert_refused(decision, "database_not_allowed", token)
    assert "postgres" in decision.detail


def test_client_cidr_restriction(mint: Mint, check: Check, config: Any) -> None:
    cfg = config(
        rules=[rule_row(1, "alice", "alice", client_cidrs=["10.0.0.0/8", "::1/128"])]
    )
    token = mint()
    assert check(token, client_addr="10.1.2.3", cfg=cfg).ok
    assert check(token, client_addr="::1", cfg=cfg).ok
    assert check(token, client_addr="::ffff:10.9.9.9", cfg=cfg).ok
    for addr in ("192.168.1.1", "::2", None, "garbage"):
        decision = check(token, client_addr=addr, cfg=cfg)
        assert_refused(decision, "client_not_allowed", token)
    assert "Unix-socket" in check(token, client_addr=None, cfg=cfg).detail


def test_restricted_rule_does_not_hide_an_unrestricted_one(
    mint: Mint, check: Check, config: Any
) -> None:
    rules = [
        rule_row(1, "alice", "alice", databases=["other"]),
        rule_row(2, "alice", "alice"),
    ]
    assert check(mint(), database="app", cfg=config(rules=rules)).ok


def test_database_exclusion_is_reported_before_client_exclusion(
    mint: Mint, check: Check, config: Any
) -> None:
    rules = [
        rule_row(
            1, "alice", "alice", databases=["other"], client_cidrs=["192.0.2.0/24"]
        )
    ]
    assert check(mint(), cfg=config(rules=rules)).reason == "database_not_allowed"


# -- key sources and internal errors -----------------------------------------------------------


def test_jwks_unavailable(mint: Mint, check: Check, config: Any) -> None:
    token = mint()
    assert_refused(
        check(token, cfg=config(jwks='{"keys": []}')), "jwks_unavailable", token
    )
    assert_refused(check(token, cfg=config(jwks="not json")), "jwks_unavailable", token)
    remote = config(jwks=None, jwks_uri="https://idp.example.com/jwks")
    keys = KeyStore(fetch=Documents(), now=Clock())
    decision = check(token, cfg=remote, keys=keys)
    assert_refused(decision, "jwks_unavailable", token)
    assert "idp.example.com" in decision.detail


def test_remote_keys_are_used(
    dev: DevIssuer, mint: Mint, check: Check, config: Any
) -> None:
    docs = Documents({"https://idp.example.com/jwks": dev.jwks()})
    keys = KeyStore(fetch=docs, now=Clock())
    cfg = config(jwks=None, jwks_uri="https://idp.example.com/jwks")
    assert check(mint(), cfg=cfg, keys=keys).ok
    assert check(mint(alg="EdDSA"), cfg=cfg, keys=keys).ok
    assert docs.requests == ["https://idp.example.com/jwks"]


class _BrokenKeys(KeyStore):
    def get_key(self, issuer: Any, alg: str, kid: str | None) -> Any:
        raise RuntimeError(f"bug holding {kid}")


def test_unexpected_exception_becomes_validator_error(mint: Mint, check: Check) -> None:
    token = mint()
    decision = check(token, keys=_BrokenKeys(fetch=no_network))
    assert_refused(decision, "validator_error", token)
    assert decision.detail == "RuntimeError"


def test_every_reason_code_is_produced_by_this_module() -> None:
    # the tests above trigger each of these; this pins the list itself
    assert set(REASONS) == {
        "malformed", "too_large", "unsupported_alg", "untrusted_issuer", "unknown_key",
        "bad_signature", "expired", "not_yet_valid", "lifetime_too_long", "audience_mismatch",
        "missing_claim", "role_not_allowed", "database_not_allowed", "client_not_allowed",
        "jwks_unavailable", "validator_error", "unsupported_typ", "revoked",
        # tests/unit/test_provisioning_plan.py; the standby's refusal in the integration tests
        "provisioning_forbidden", "provisioning_unavailable",
    }  # fmt: skip
    assert ValidationError("x").detail == "x"


def test_encode_jws_round_trip(dev: DevIssuer, check: Check) -> None:
    token = encode_jws(
        {"alg": "EdDSA", "kid": dev.current_kid("EdDSA")},
        claims(),
        dev.private_key(dev.current_kid("EdDSA")),
    )
    assert check(token).ok


# -- signature lengths (RFC 8017 8.1.2/8.2.2, RFC 7518 3.4, RFC 8032) ---------------------


def _grind(dev: DevIssuer, alg: str, wanted: Callable[[bytes, str], bool]) -> tuple[str, bytes]:
    """(signing input, signature) of a real token whose signature pleases ``wanted``."""
    kid = dev.current_kid(alg)
    for n in range(20_000):
        token = encode_jws({"alg": alg, "kid": kid}, claims(jti=f"grind-{n}"),
                           dev.private_key(kid))  # fmt: skip
        signing_input, _, signature = token.rpartition(".")
        raw = base64.urlsafe_b64decode(signature + "==")
        if wanted(raw, signing_input):
            return signing_input, raw
    raise AssertionError("no such signature found")


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512", "RS256"])
def test_rsa_signature_without_its_leading_zero_is_refused(
    alg: str, dev: DevIssuer, check: Check
) -> None:
    signing_input, raw = _grind(dev, alg, lambda sig, _: sig[0] == 0)
    assert check(f"{signing_input}.{b64url(raw)}").ok  # the full-length one is fine
    short = raw[1:]
    public = dev.private_key(dev.current_kid(alg)).public_key()
    # OpenSSL lets the short PSS signature pass (not the PKCS#1 v1.5 one)
    assert get_default_algorithms()[alg].verify(signing_input.encode(), public, short) == (
        alg.startswith("PS")
    )
    token = f"{signing_input}.{b64url(short)}"
    decision = check(token)
    assert_refused(decision, "bad_signature", token)
    assert decision.detail.startswith(f"signature is 255 bytes; {alg} with key ")
    assert decision.detail.endswith("(RSA 2048-bit for " + alg + ") needs exactly 256")
    long = b64url(bytes(1) + raw)
    assert "is 257 bytes" in check(f"{signing_input}.{long}").detail


@pytest.mark.parametrize(
    ("alg", "size"), [("ES256", 64), ("ES384", 96), ("ES512", 132), ("EdDSA", 64)]
)
def test_ec_and_eddsa_signatures_have_one_length(
    alg: str, size: int, dev: DevIssuer, check: Check
) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    signing_input, raw = _grind(dev, alg, lambda sig, _: True)
    assert len(raw) == size
    half = size // 2
    variants = [raw[:-1], raw + b"\0", b"\0" + raw]
    if alg != "EdDSA":  # DER instead of r||s, the classic ECDSA mix-up
        r, s = (int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
        variants.append(encode_dss_signature(r, s))
    for signature in variants:
        token = f"{signing_input}.{b64url(signature)}"
        decision = check(token)
        assert_refused(decision, "bad_signature", token)
        assert decision.detail.endswith(f"needs exactly {size}"), decision.detail


# -- keys that would verify anyone's signature ---------------------------------------------

_L25519 = 2**252 + 27742317777372353535851937790883648493
_IDENTITY = bytes([1]) + bytes(31)
_ORDER_8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")


@pytest.mark.parametrize("point", [_IDENTITY, _ORDER_8], ids=["identity", "order 8"])
def test_a_small_order_ed25519_key_cannot_be_used_to_forge(
    point: bytes, dev: DevIssuer, check: Check
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    evil = {"kty": "OKP", "crv": "Ed25519", "x": b64url(point), "kid": "evil",
            "alg": "EdDSA", "use": "sig"}  # fmt: skip
    cfg = static_config({"keys": [evil, *dev.jwks()["keys"]]})
    header = b64url(json.dumps({"alg": "EdDSA", "kid": "evil"}).encode())
    # R = identity, S = 0 verifies when [k]A is the identity: always for the
    # identity, for one message in eight for an order-8 point; no private key
    for n in range(200):
        signing_input = f"{header}.{b64url(json.dumps(claims(jti=f'f-{n}')).encode())}"
        digest = hashlib.sha512(_IDENTITY + point + signing_input.encode()).digest()
        if int.from_bytes(digest, "little") % _L25519 % 8 == 0:
            break
    forged = _IDENTITY + bytes(32)
    Ed25519PublicKey.from_public_bytes(point).verify(forged, signing_input.encode())
    token = f"{signing_input}.{b64url(forged)}"
    decision = check(token, cfg=cfg)
    assert_refused(decision, "unknown_key", token)
    assert decision.detail == (
        "no key with kid 'evil'; key kid 'evil' skipped: "
        "Ed25519 public key is a small-order point"
    )


# -- time claims: numbers for years 1 to 9999, the same verdict in login and explain ---------

_YEAR_1 = -62135596800
_YEAR_9999_END = 253402300799


def _login_and_explain(token: str, cfg: Config) -> tuple[Decision, Decision]:
    run = [validate(token, "alice", "app", None, True, cfg, KeyStore(fetch=no_network),
                    now=NOW, explain=explain) for explain in (False, True)]  # fmt: skip
    return run[0], run[1]


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_time_claims_outside_years_1_to_9999_are_malformed(
    name: str, mint: Mint, config: Any
) -> None:
    # -1e11 and year 0 were a validator_error (exp) or admitted by a login and
    # refused by explain (nbf, iat); the others were already malformed
    for value in (-1e11, _YEAR_1 - 1, _YEAR_9999_END + 1, 1e20, -(10**30), True, False):
        token = mint({name: value}, alg="EdDSA")
        login, explained = _login_and_explain(token, config())
        assert_refused(login, "malformed", token)
        assert name in login.detail
        assert (explained.ok, explained.reason, explained.detail) == (
            login.ok, login.reason, login.detail
        )


def test_time_claims_at_the_ends_of_the_range(mint: Mint, config: Any) -> None:
    token = mint({"nbf": _YEAR_1, "iat": _YEAR_1, "exp": _YEAR_9999_END}, alg="EdDSA")
    login, explained = _login_and_explain(token, config())
    assert login.ok and explained.ok, (login.detail, explained.detail)
    inputs = {c.name: c.input for c in explained.trail}
    assert inputs["nbf"] == f"nbf {_YEAR_1} (0001-01-01T00:00:00Z)"
    assert inputs["exp"].startswith(f"exp {_YEAR_9999_END} (9999-12-31T23:59:59Z)")
    assert login.expires_at == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(["exp", "nbf", "iat"]),
    st.one_of(
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
    ),
)
def test_any_time_claim_gets_one_verdict(
    mint: Mint, config: Any, name: str, value: Any
) -> None:
    token = mint({name: value}, alg="EdDSA")
    login, explained = _login_and_explain(token, config())
    assert login.reason != "validator_error", login.detail
    assert (explained.ok, explained.reason, explained.detail) == (
        login.ok, login.reason, login.detail
    )


# -- one spelling per token: canonical base64url ----------------------------------------------

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def respell(segment: str) -> str:
    """The same bytes, with a spare bit of the last character set."""
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + _B64URL[_B64URL.index(segment[-1]) | 1]


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_a_respelled_signature_is_malformed(alg: str, mint: Mint, check: Check) -> None:
    token = mint(alg=alg)
    assert check(token).ok
    header, payload, signature = token.split(".")
    other = respell(signature)
    assert other != signature
    assert base64.urlsafe_b64decode(other + "==") == base64.urlsafe_b64decode(
        signature + "=="
    )
    respelled = f"{header}.{payload}.{other}"
    decision = check(respelled)
    assert_refused(decision, "malformed", respelled)
    assert decision.detail == "a token segment is not canonical base64url"


@pytest.mark.parametrize("part", ["header", "payload"])
def test_a_signed_respelled_header_or_payload_is_malformed(
    part: str, dev: DevIssuer, check: Check
) -> None:
    kid = dev.current_kid("ES256")
    for pad in range(4):  # a length with spare bits in the last character
        header = b64url(json.dumps({"alg": "ES256", "kid": kid, "x": "y" * pad}).encode())
        payload = b64url(json.dumps(claims(pad="z" * pad)).encode())
        if len(header) % 4 in (2, 3) and len(payload) % 4 in (2, 3):
            break
    if part == "header":
        header = respell(header)
    else:
        payload = respell(payload)
    # signed as respelled: only the spelling is wrong
    signing_input = f"{header}.{payload}"
    signature = get_default_algorithms()["ES256"].sign(
        signing_input.encode(), dev.private_key(kid)
    )
    token = f"{signing_input}.{b64url(signature)}"
    decision = check(token)
    assert_refused(decision, "malformed", token)
    assert decision.detail == "a token segment is not canonical base64url"


# -- properties ----------------------------------------------------------------------------------


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_input_never_raises_and_never_logs_in(
    check: Check, junk: Any
) -> None:
    decision = check(junk)
    assert not decision.ok
    assert decision.reason in REASONS
    assert decision.claims is None


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_any_single_character_change_is_refused(
    mint: Mint, check: Check, data: Any
) -> None:
    token = mint(alg=data.draw(st.sampled_from(["RS256", "ES256", "EdDSA"])))
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("AQgw_-.=x9 "))
    mutated = token[:position] + replacement + token[position + 1 :]
    assume(mutated != token)
    decision = check(mutated)
    # canonical base64url only: no other spelling of the same bytes gets in either
    assert not decision.ok
    assert decision.reason in REASONS


def test_embedded_and_remote_key_headers_are_never_used(
    dev: DevIssuer, mint: Mint, check: Check
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = ECAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    header = {
        "alg": "ES256",
        "jwk": attacker_jwk,
        "jku": "https://evil.example.com/jwks",
        "x5u": "https://evil.example.com/cert",
        "x5c": ["MIIB"],
    }
    # no kid, and the issuer publishes several keys: a kid is required
    token = encode_jws(header, claims(), attacker)
    decision = check(token)  # the check fixture's key store fails any fetch
    assert_refused(decision, "unknown_key", token)
    assert "jku, x5u, jwk, x5c ignored" in decision.trail[0].info
    # no kid and a single published key: that key, never the embedded one
    es_only = {"keys": [k for k in dev.jwks()["keys"] if k["alg"] == "ES256"]}
    assert_refused(check(token, cfg=static_config(es_only)), "bad_signature", token)
    token = encode_jws(dict(header, kid="es256-1"), claims(), attacker)
    assert_refused(check(token), "bad_signature", token)


def test_numbers_beyond_float_range_are_malformed(dev: DevIssuer, check: Check) -> None:
    kid = dev.current_kid("ES256")
    body = json.dumps(claims()).encode()[:-1] + b', "huge": 1e400}'
    token = encode_jws({"alg": "ES256", "kid": kid}, body, dev.private_key(kid))
    decision = check(token)
    assert_refused(decision, "malformed", token)


@pytest.mark.parametrize(
    ("pattern", "template", "value"),
    [
        (r"(alice)", r"\1", "alice"),
        (r"team-(\w+)", r"app_\1", "team-db"),
        (r"(a)|(b)", r"\2", "a"),  # group 2 did not take part: empty, no role
        (r"(x)(y)", r"\2\1", "xy"),
        (r"dev-.*", "developers", "dev-7"),
        (r"(?P<name>\w+)@corp", r"\g<name>", "bob@corp"),
        (r"(\w+)", r"\1\n", "tab"),
    ],
)
def test_role_template_expansion_matches_re(pattern: str, template: str, value: str) -> None:
    """The fast paths for literal and lone-\\N templates give what Match.expand gives."""
    from pyhook.config import compile_role_pattern
    from pyhook.validator import _expand

    match = re.fullmatch(pattern, value)
    assert match is not None
    assert _expand(match, template) == match.expand(template)
    # and the same with RE2's match, which the validator uses
    re2_match = compile_role_pattern(pattern).fullmatch(value)
    assert re2_match is not None
    assert _expand(re2_match, template) == match.expand(template)


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        (r"([a-z]+)*@corp\.com", "a" * 5000 + "!"),
        (r"(a|aa)+$", "a" * 5000 + "b"),
        (r"(\w+\s?)*x", "word " * 2000),
    ],
)
def test_pathological_patterns_match_in_linear_time(
    pattern: str, value: str, mint: Mint, check: Check, config: Any
) -> None:
    # Python's backtracking engine takes 0.5 s on 24 characters of the first and
    # doubles with each one more; RE2 takes microseconds. The subprocess bounds the
    # damage should this ever regress (no wall-clock assertion beyond that)
    import subprocess

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from pyhook.config import compile_role_pattern as c; "
        "assert c(sys.argv[2]).fullmatch(sys.argv[3]) is None"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    subprocess.run([sys.executable, "-c", code, root, pattern, value], check=True, timeout=60)
    # and through the validator: the rule simply does not match
    cfg = config(rules=[rule_row(1, pattern, "alice", claim="email")])
    decision = check(mint({"email": value}), cfg=cfg)
    assert decision.reason == "role_not_allowed"


@pytest.mark.parametrize(
    "pattern",
    [r"(a)\1", r"(?=admin)\w+", r"(?<!x)y", r"a++", r"(?P=name)"],
)
def test_patterns_re2_cannot_run_are_skipped_with_a_reason(pattern: str) -> None:
    from pyhook.config import role_rule_problem

    cfg = Config.from_rows([issuer_row()], [rule_row(7, pattern, "alice")], 1)
    assert cfg.rules_for(ISS) == []
    assert len(cfg.skipped_rules) == 1
    assert "rule id 7 skipped: pattern is not supported by RE2" in cfg.skipped_rules[0]
    problem = role_rule_problem(pattern, "alice")
    assert problem is not None and "linear time" in problem


def test_values_postgresql_cannot_store_match_no_rule(
    mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(rules=[rule_row(1, r"(.*)@corp", r"\1", claim="email")])
    assert check(mint({"email": "alice@corp"}), cfg=cfg).ok
    for bad in ("alice\x00@corp", "alice\ud800@corp"):
        assert check(mint({"email": bad}), "alice", cfg=cfg).reason == "role_not_allowed"


# -- a worker's login writes no trail -----------------------------------------------


@pytest.mark.parametrize(
    ("claims", "kw", "role"),
    [
        ({}, {}, "alice"),
        ({"email": "alice@example.com"}, {"alg": "ES256"}, "alice"),
        ({}, {"exp": NOW - 3600}, "alice"),
        ({}, {"aud": "someone-else"}, "alice"),
        ({"nbf": NOW + 3600}, {}, "alice"),
        ({}, {}, "mallory"),
        ({"iss": "https://not-trusted.example"}, {}, "alice"),
    ],
)
def test_a_login_without_a_trail_decides_the_same(
    claims: dict[str, Any], kw: dict[str, Any], role: str, mint: Mint,
    config: Callable[..., Config],
) -> None:
    token = mint(claims, **kw)
    cfg = config()
    traced = validate(token, role, "app", "10.0.0.5", True, cfg, KeyStore(fetch=no_network),
                      now=NOW)
    quiet = validate(token, role, "app", "10.0.0.5", True, cfg, KeyStore(fetch=no_network),
                     now=NOW, trail=False)
    assert traced.trail and all(c.outcome != "pass" for c in quiet.trail)
    assert replace(quiet, trail=[]) == replace(traced, trail=[])


# -- the shortcuts of the hot path decide as the long way does --------------------------------


@pytest.mark.parametrize("bad", ["!", "+", "/", "=", "é", "\\x00"])
def test_characters_outside_base64url_are_malformed_anywhere(
    bad: str, mint: Mint, check: Check
) -> None:
    # the decoder skips characters outside its alphabet; only the one spelling passes
    token = mint()
    header, payload, signature = token.split(".")
    for spoiled in (
        f"{header[:5]}{bad}{header[5:]}.{payload}.{signature}",
        f"{header}.{payload[:9]}{bad}{payload[9:]}.{signature}",
        f"{header}.{payload}.{signature[:7]}{bad}{signature[7:]}",
    ):
        decision = check(spoiled)
        assert_refused(decision, "malformed", spoiled)
        assert "base64url" in decision.detail


def test_brackets_in_strings_do_not_make_a_token_deep(mint: Mint, check: Check) -> None:
    # more brackets than levels allowed, all of them inside strings: the depth walk
    # runs and finds two levels
    decision = check(mint({"sub": "alice", "note": "[{" * 40, "groups": ["]}" * 40]}))
    assert (decision.reason, decision.allowed_roles) == ("ok", ["alice"])


def test_a_literal_rule_gives_the_role_of_its_own_configuration(
    mint: Mint, check: Check, config: Callable[..., Config]
) -> None:
    # the role a literal rule gives a value is kept with the configuration: the same
    # rule id in a new configuration, with another role, gives the new role
    token = mint({"sub": "alice"})
    first = config([{"id": 7, "issuer": ISS, "claim": "sub", "pattern": "alice", "role": "alice"}])
    second = config([{"id": 7, "issuer": ISS, "claim": "sub", "pattern": "alice", "role": "bob"}])
    for _ in range(2):
        assert check(token, cfg=first).allowed_roles == ["alice"]
        assert check(token, "bob", cfg=second).allowed_roles == ["bob"]
    # a value the literal does not name never reaches it
    assert check(mint({"sub": "alicex"}), cfg=first).reason == "role_not_allowed"


def _reference_b64decode(segment: str) -> bytes | None:
    """base64url as the standard library spells it, canonical only; None: refused."""
    if len(segment) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, TypeError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        return None
    return raw


def test_b64decode_decides_as_the_standard_library() -> None:
    # _b64decode itself, not through _split (whose shape check refuses most of these
    # first): every string of up to 4 characters over an alphabet with the awkward ones,
    # and random longer ones
    import itertools
    import random

    from pyhook.validator import _b64decode

    def ours(segment: str) -> bytes | None:
        try:
            return _b64decode(segment)
        except ValidationError:
            return None

    alphabet = "AQg_-+/= \x00é"
    for n in range(5):
        for chars in itertools.product(alphabet, repeat=n):
            segment = "".join(chars)
            assert ours(segment) == _reference_b64decode(segment), repr(segment)
    rng = random.Random(24)
    pool = _B64URL + "+/= \x00é\n"
    for _ in range(20000):
        segment = "".join(rng.choice(pool if rng.random() < 0.1 else _B64URL)
                          for _ in range(rng.randrange(1, 40)))
        assert ours(segment) == _reference_b64decode(segment), repr(segment)
