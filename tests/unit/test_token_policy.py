"""Per-issuer token policy: typ, azp, required claims, revocations, claim types,
nesting limits, and the trail oauth.explain shows."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pg_oauth_dev.dev_issuer import REMOVE, DevIssuer, encode_jws
from unit_support import AUD, ISS, NOW, assert_refused, issuer_row, rule_row

from pyhook.config import Config, IssuerConfig, RequiredClaim, Revocation
from pyhook.decision import FAIL, PASS, SKIP, STEPS, Decision
from pyhook.validator import MAX_JSON_DEPTH

Check = Callable[..., Decision]
Mint = Callable[..., str]


def step(decision: Decision, name: str) -> Any:
    return next(c for c in decision.trail if c.name == name)


# -- typ (RFC 8725 explicit typing) ---------------------------------------------------


@pytest.mark.parametrize(
    ("typ", "ok"),
    [
        ("at+jwt", True),
        ("AT+JWT", True),
        ("application/at+jwt", True),
        ("JWT", False),
        (REMOVE, False),
    ],
)
def test_typ_allowlist(
    typ: Any, ok: bool, mint: Mint, check: Check, config: Any
) -> None:
    token = mint(headers={"typ": typ})
    decision = check(token, cfg=config(typ=["at+jwt"]))
    if ok:
        assert decision.ok, decision.detail
        assert step(decision, "typ").outcome == PASS
    else:
        assert_refused(decision, "unsupported_typ", token)
        assert "at+jwt" in decision.detail
        assert decision.claims is None  # refused before the signature was checked


def test_typ_not_required_by_default(mint: Mint, check: Check) -> None:
    decision = check(mint(headers={"typ": "anything"}))
    assert decision.ok
    assert step(decision, "typ").outcome == SKIP
    assert "'anything'" in step(decision, "typ").input


def test_typ_must_be_a_string(mint: Mint, check: Check) -> None:
    token = mint(headers={"typ": ["JWT"]})
    assert_refused(check(token), "malformed", token)


@pytest.mark.parametrize(
    "typ",
    [" at+jwt", "at+jwt ", "\tat+jwt", "at+jwt\n", " application/at+jwt"],
)  # fmt: skip
def test_typ_is_compared_exactly(typ: str, mint: Mint, check: Check, config: Any) -> None:
    token = mint(headers={"typ": typ})
    decision = check(token, cfg=config(typ=["at+jwt"]))
    assert_refused(decision, "unsupported_typ", token)


def test_typ_folds_ascii_case_only() -> None:
    from pyhook.config import normalize_typ

    assert normalize_typ("Application/AT+JWT") == "at+jwt"
    assert normalize_typ("\u212a") == "\u212a"  # the Kelvin sign, which str.lower() makes "k"
    assert normalize_typ("application/x/y") == "application/x/y"  # not the type x/y
    assert normalize_typ("application/application/at+jwt") == "application/application/at+jwt"
    assert normalize_typ("text/at+jwt") == "text/at+jwt"
    assert normalize_typ(" JWT") == " jwt"


# -- sub (RFC 9068 2.2) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sub", "words"),
    [(REMOVE, "token has no sub claim"), (None, "token has no sub claim"),
     ("", "sub claim is empty")],
)  # fmt: skip
def test_sub_is_required_by_default(
    sub: Any, words: str, mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(rules=[rule_row(1, "alice@example.com", "alice", claim="email")])
    token = mint({"sub": sub, "email": "alice@example.com"})
    decision = check(token, cfg=cfg)
    assert_refused(decision, "missing_claim", token)
    assert decision.detail == (
        f"{words}; an issuer whose tokens have none needs require_sub = false"
    )
    assert step(decision, "required_claims").outcome == FAIL
    assert check(mint({"email": "alice@example.com"}), cfg=cfg).ok


def test_an_issuer_may_opt_out_of_sub(mint: Mint, check: Check, config: Any) -> None:
    cfg = config(
        require_sub=False, rules=[rule_row(1, "alice@example.com", "alice", claim="email")]
    )
    decision = check(mint({"sub": REMOVE, "email": "alice@example.com"}), cfg=cfg)
    assert decision.ok, decision.detail
    assert decision.subject is None
    assert "sub (not required)" in step(decision, "required_claims").input
    # a sub that is there must still be a string
    token = mint({"sub": 7, "email": "alice@example.com"})
    assert_refused(check(token, cfg=cfg), "malformed", token)


def test_require_sub_column_is_read() -> None:
    assert IssuerConfig.from_row(issuer_row()).require_sub
    assert IssuerConfig.from_row(issuer_row(require_sub=True)).require_sub
    assert IssuerConfig.from_row(issuer_row(require_sub=None)).require_sub
    assert not IssuerConfig.from_row(issuer_row(require_sub=False)).require_sub


# -- JWK key_ops and use ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"key_ops": ["sign"]}, "key_ops ['sign'] does not include 'verify'"),
        ({"key_ops": ["encrypt"], "use": "sig"}, "does not include 'verify'"),
        ({"key_ops": "verify"}, "key_ops is not a list of strings"),
        ({"use": None}, "use is None, not 'sig'"),
        ({"use": "enc"}, "use is 'enc', not 'sig'"),
    ],
)
def test_a_key_not_for_verifying_is_not_used(
    members: dict[str, Any], words: str, dev: DevIssuer, mint: Mint, check: Check,
    config: Any,
) -> None:  # fmt: skip
    jwks = dev.jwks()
    for key in jwks["keys"]:
        if key["kid"] == "rs256-1":
            key.update(members)
    token = mint()  # RS256, kid rs256-1
    decision = check(token, cfg=config(jwks=json.dumps(jwks)))
    assert_refused(decision, "unknown_key", token)
    assert decision.detail.startswith("no key with kid 'rs256-1'; key kid 'rs256-1' skipped: ")
    assert words in decision.detail
    for ops in (["verify"], ["sign", "verify"]):
        ok = [dict(k, key_ops=ops) if k["kid"] == "rs256-1" else k for k in dev.jwks()["keys"]]
        assert check(token, cfg=config(jwks=json.dumps({"keys": ok}))).ok


def test_explain_names_the_skipped_keys(dev: DevIssuer, mint: Mint, config: Any) -> None:
    from unit_support import no_network

    from pyhook.jwks_cache import KeyStore
    from pyhook.validator import validate

    jwks = dev.jwks()
    jwks["keys"].append(dict(jwks["keys"][0], kid="spare", key_ops=["sign"]))
    decision = validate(mint(), "alice", "app", None, True, config(jwks=json.dumps(jwks)),
                        KeyStore(fetch=no_network), now=NOW, explain=True)  # fmt: skip
    assert decision.ok
    assert step(decision, "key").input.endswith(
        "; key kid 'spare' skipped: key_ops ['sign'] does not include 'verify'"
    )


# -- azp --------------------------------------------------------------------------------


def test_azp_checked_only_when_configured(
    mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(authorized_parties=["cli-app", "web-app"])
    assert check(mint({"azp": "web-app"}), cfg=cfg).ok
    token = mint({"azp": "evil-app"})
    decision = check(token, cfg=cfg)
    assert_refused(decision, "audience_mismatch", token)
    assert "authorized party" in decision.detail and "evil-app" in decision.detail
    token = mint()
    assert_refused(check(token, cfg=cfg), "missing_claim", token)
    token = mint({"azp": 7})
    assert_refused(check(token, cfg=cfg), "malformed", token)
    # not configured: any azp, or none
    assert check(mint({"azp": "evil-app"})).ok
    assert step(check(mint()), "azp").outcome == SKIP


# -- required claims ------------------------------------------------------------------


def test_required_claim_parsing() -> None:
    assert RequiredClaim.parse("email").presence_only
    flag = RequiredClaim.parse("email_verified=true")
    assert (flag.path, flag.value) == ("email_verified", True)
    domain = RequiredClaim.parse("hd=example.com")
    assert (domain.path, domain.value) == ("hd", "example.com")
    quoted = RequiredClaim.parse('"a=b".c=1')
    assert (quoted.path, quoted.value) == ('"a=b".c', 1)
    assert not RequiredClaim.parse("=x").usable
    assert not RequiredClaim.parse(" email").usable


@pytest.mark.parametrize(
    ("claims", "reason", "words"),
    [
        ({"email_verified": True, "hd": "example.com", "org": {"tier": 2}}, "ok", ""),
        ({"email_verified": False, "hd": "example.com", "org": {"tier": 2}},
         "missing_claim", "is False, not True"),
        ({"email_verified": 1, "hd": "example.com", "org": {"tier": 2}},
         "missing_claim", "email_verified"),  # true is not 1
        ({"email_verified": True, "hd": "other.com", "org": {"tier": 2}},
         "missing_claim", "'hd'"),
        ({"email_verified": True, "org": {"tier": 2}}, "missing_claim", "'hd' is missing"),
        ({"email_verified": True, "hd": "example.com", "org": {"tier": 2.0}}, "ok", ""),
        ({"email_verified": True, "hd": "example.com", "org": {}},
         "missing_claim", "'org.tier' is missing"),
        ({"email_verified": True, "hd": "example.com", "org": {"tier": 2},
          "groups": None}, "ok", ""),
    ],
)  # fmt: skip
def test_required_claims(
    claims: dict[str, Any],
    reason: str,
    words: str,
    mint: Mint,
    check: Check,
    config: Any,
) -> None:
    cfg = config(
        required_claims=["email_verified=true", "hd=example.com", "org.tier=2"]
    )
    token = mint(claims)
    decision = check(token, cfg=cfg)
    if reason == "ok":
        assert decision.ok, decision.detail
        assert step(decision, "required_claims").outcome == PASS
    else:
        assert_refused(decision, reason, token)
        assert words in decision.detail


@pytest.mark.parametrize(
    ("requirement", "value", "ok"),
    [
        ("owner_id=65", "65", True),
        ("owner_id=65", 65, True),
        ("owner_id=65", 65.0, True),
        ("owner_id=65", "065", False),
        ("owner_id=65", True, False),
        ("verified=true", "true", True),
        ("verified=true", 1, False),
        ('name="x y"', "x y", True),
        ('name="x y"', '"x y"', True),
    ],
)
def test_a_string_claim_matches_the_value_as_written(
    requirement: str, value: Any, ok: bool, mint: Mint, check: Check, config: Any
) -> None:
    name = requirement.split("=", 1)[0]
    decision = check(mint({name: value}), cfg=config(required_claims=[requirement]))
    assert decision.ok == ok, decision.detail


def test_required_value_in_an_array_claim(
    mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(required_claims=["amr=mfa", "https://example.com/tenant"])
    ok = mint({"amr": ["pwd", "mfa"], "https://example.com/tenant": "t1"})
    assert check(ok, cfg=cfg).ok
    assert check(
        mint({"amr": ["pwd"], "https://example.com/tenant": "t1"}), cfg=cfg
    ).reason == ("missing_claim")


def test_an_unusable_required_claim_refuses_everything(
    mint: Mint, check: Check, config: Any
) -> None:
    decision = check(mint(), cfg=config(required_claims=["=broken"]))
    assert decision.reason == "missing_claim" and "every token" in decision.detail


@pytest.mark.parametrize("name", ["sub", "jti"])
def test_sub_and_jti_must_be_strings(name: str, mint: Mint, check: Check) -> None:
    token = mint({name: 12345})
    decision = check(token)
    assert_refused(decision, "malformed", token)
    assert f"{name} claim is not a string" in decision.detail


# -- revocations ------------------------------------------------------------------------


def revoked_config(static_jwks: str, *rows: dict[str, Any]) -> Config:
    revocations = [{"id": i + 1, **row} for i, row in enumerate(rows)]
    return Config.from_rows(
        [issuer_row(jwks=static_jwks)],
        [rule_row(1, "(alice|bob)", r"\1")],
        1,
        revocations,
    )


@pytest.mark.parametrize(
    ("row", "revoked"),
    [
        ({"token_id": "t-1"}, True),
        ({"token_id": "t-2"}, False),
        ({"subject": "alice"}, True),
        ({"subject": "bob"}, False),
        ({"issuer": ISS}, True),
        ({"issuer": "https://other.example.com"}, False),
        ({"issuer": ISS, "subject": "alice"}, True),
        ({"issuer": "https://other.example.com", "subject": "alice"}, False),
        ({"subject": "alice", "token_id": "t-2"}, False),
        ({"subject": "alice", "expires_at": NOW + 60}, True),
        ({"subject": "alice", "expires_at": NOW - 1}, False),
        ({"subject": "alice", "expires_at": NOW}, False),
    ],
)
def test_revocation_matching(
    row: dict[str, Any], revoked: bool, mint: Mint, check: Check, static_jwks: str
) -> None:
    token = mint({"jti": "t-1"})
    decision = check(token, cfg=revoked_config(static_jwks, row))
    if revoked:
        assert_refused(decision, "revoked", token)
        # the signature verified: the decision says whose token it was
        assert decision.subject == "alice" and decision.token_id == "t-1"
    else:
        assert decision.ok, decision.detail
        assert step(decision, "revocation").outcome == PASS


@pytest.mark.parametrize(
    ("iat", "revoked"),
    [(NOW - 60, True), (NOW - 0.5, True), (NOW, False), (NOW + 1, False), (None, True)],
)
def test_revocation_issued_before_covers_tokens_issued_earlier_or_without_iat(
    iat: float | None, revoked: bool, mint: Mint, check: Check, static_jwks: str
) -> None:
    """issued_before: tokens with iat before it are revoked, fresh ones are not; a token
    without iat is revoked (fail closed: nothing shows it was issued afterwards)."""
    token = mint({"iat": iat}) if iat is not None else mint(remove=("iat",))
    cfg = revoked_config(static_jwks, {"subject": "alice", "issued_before": NOW})
    decision = check(token, cfg=cfg)
    if revoked:
        assert_refused(decision, "revoked", token)
        assert "of tokens issued before" in decision.detail
    else:
        assert decision.ok, decision.detail


def test_revocation_detail_names_the_row_and_reason(
    mint: Mint, check: Check, static_jwks: str
) -> None:
    cfg = revoked_config(
        static_jwks,
        {"subject": "bob"},
        {"subject": "alice", "reason": "laptop stolen", "expires_at": NOW + 3600},
    )
    decision = check(mint(), cfg=cfg)
    assert decision.reason == "revoked"
    assert "revocation 2 (by subject 'alice')" in decision.detail
    assert "laptop stolen" in decision.detail and "until" in decision.detail


def test_revocation_is_checked_after_the_signature(
    mint: Mint, check: Check, static_jwks: str
) -> None:
    token = mint(sign_with_unpublished=True)
    cfg = revoked_config(static_jwks, {"subject": "alice"})
    assert check(token, cfg=cfg).reason == "bad_signature"


def test_revocation_without_any_column_revokes_nothing() -> None:
    rev = Revocation(id=1)
    assert not rev.matches(ISS, "alice", "t-1", NOW)


# -- structure limits ------------------------------------------------------------------


def test_nesting_beyond_the_limit_is_malformed(dev: DevIssuer, check: Check) -> None:
    kid = dev.current_kid("EdDSA")
    nested: Any = "x"
    for _ in range(MAX_JSON_DEPTH):
        nested = [nested]
    payload = {"iss": ISS, "sub": "alice", "aud": AUD, "exp": NOW + 60, "deep": nested}
    token = encode_jws({"alg": "EdDSA", "kid": kid}, payload, dev.private_key(kid))
    decision = check(token)
    assert_refused(decision, "malformed", token)
    assert "nested deeper" in decision.detail
    payload["deep"] = nested[0]  # one level less: fine
    token = encode_jws({"alg": "EdDSA", "kid": kid}, payload, dev.private_key(kid))
    assert check(token).ok


def test_unknown_crit_is_refused_and_named(mint: Mint, check: Check) -> None:
    token = mint(headers={"crit": ["b64"], "b64": False})
    decision = check(token)
    assert_refused(decision, "malformed", token)
    assert "'b64'" in decision.detail


def test_kid_is_required_when_the_jwks_has_several_keys(
    dev: DevIssuer, mint: Mint, check: Check, config: Any
) -> None:
    token = mint(headers={"kid": REMOVE})
    decision = check(token)
    assert_refused(decision, "unknown_key", token)
    assert "kid is required" in decision.detail
    one = json.dumps({"keys": [k for k in dev.jwks()["keys"] if k["alg"] == "RS256"]})
    assert check(token, cfg=config(jwks=one)).ok


# -- several issuers --------------------------------------------------------------------


def test_each_issuer_has_its_own_policy(
    dev: DevIssuer, check: Check, static_jwks: str
) -> None:
    other = "https://other.example.com"
    cfg = Config.from_rows(
        [
            issuer_row(jwks=static_jwks, algorithms=["RS256"]),
            issuer_row(issuer=other, audiences=["other-aud"], jwks=static_jwks,
                       algorithms=["ES256"], typ=["at+jwt"]),
        ],
        [rule_row(1, "alice", "alice"), rule_row(2, "alice", "bob", issuer=other)],
    )  # fmt: skip
    first = dev.mint({"iss": ISS}, aud=AUD, now=NOW)
    second = dev.mint(
        {"iss": other}, aud="other-aud", alg="ES256", headers={"typ": "at+jwt"}, now=NOW
    )
    assert check(first, cfg=cfg).allowed_roles == ["alice"]
    assert check(second, "bob", cfg=cfg).allowed_roles == ["bob"]
    assert check(
        dev.mint({"iss": other}, aud="other-aud", now=NOW), "bob", cfg=cfg
    ).reason == ("unsupported_alg")
    assert check(dev.mint({"iss": ISS}, aud="other-aud", now=NOW), cfg=cfg).reason == (
        "audience_mismatch"
    )


# -- the trail ---------------------------------------------------------------------------


def test_every_step_records_its_input(mint: Mint, check: Check, config: Any) -> None:
    token = mint({"jti": "t-9", "azp": "cli"}, headers={"typ": "at+jwt"})
    cfg = config(
        typ=["at+jwt"], authorized_parties=["cli"], required_claims=["azp"],
        max_token_lifetime=600.0,
    )  # fmt: skip
    decision = check(token, cfg=cfg)
    assert decision.ok, decision.detail
    assert [c.name for c in decision.trail] == list(STEPS)
    inputs = {c.name: c.input for c in decision.trail}
    assert "alg RS256" in inputs["header"] and "typ 'at+jwt'" in inputs["header"]
    assert inputs["issuer"] == f"iss {ISS!r}"
    assert inputs["exp"].startswith("exp 1700000300; now 1700000000")
    assert "'t-9'" in inputs["revocation"]
    assert "role 'alice'" in inputs["mapping"]
    assert all(c.input for c in decision.trail)
    signature = token.split(".")[2]
    assert all(signature not in c.input + c.info for c in decision.trail)


def test_explain_adds_one_row_per_rule(mint: Mint, config: Any, check: Check) -> None:
    from unit_support import no_network

    from pyhook.jwks_cache import KeyStore
    from pyhook.validator import validate

    rules = [
        rule_row(1, "alice", "alice"),
        rule_row(2, "(.*)@example\\.com", r"mail_\1", claim="email"),
        rule_row(3, "alice", "reporter", databases=["reports"]),
        rule_row(4, "alice", "ops", client_cidrs=["192.0.2.0/24"]),
    ]
    cfg = config(rules=rules)
    token = mint()
    decision = validate(token, "reporter", "app", "10.0.0.5", True, cfg,
                        KeyStore(fetch=no_network), now=NOW, explain=True)  # fmt: skip
    assert decision.reason == "database_not_allowed"
    assert "the token allows ['alice'] here" in decision.detail
    rows = {c.name: c for c in decision.trail if c.name.startswith("rule ")}
    assert rows["rule 1"].outcome == PASS
    assert rows["rule 2"].outcome == SKIP and "email absent" in rows["rule 2"].input
    assert rows["rule 3"].outcome == FAIL and "not for database" in rows["rule 3"].info
    assert rows["rule 4"].outcome == FAIL and "192.0.2.0/24" in rows["rule 4"].input
    names = [c.name for c in decision.trail]
    assert names.index("rule 4") < names.index("mapping")
    assert "rule 1" not in [c.name for c in check(token, "reporter", cfg=cfg).trail]


def test_explain_shows_where_keys_came_from(mint: Mint, config: Any) -> None:
    from unit_support import no_network

    from pyhook.jwks_cache import KeyStore
    from pyhook.validator import validate

    decision = validate(mint(), "alice", "app", None, True, config(),
                        KeyStore(fetch=no_network), now=NOW, explain=True)  # fmt: skip
    assert "static keys from oauth.issuers.jwks" in step(decision, "key").input
    assert "exp 1700000300 (2023-11-14T22:18:20Z)" in step(decision, "exp").input


def test_no_role_here_names_roles_elsewhere(
    mint: Mint, check: Check, config: Any
) -> None:
    cfg = config(rules=[rule_row(1, "alice", "reporter", databases=["reports"])])
    decision = check(mint(), "alice", cfg=cfg)
    assert decision.reason == "role_not_allowed"
    assert "elsewhere: ['reporter']" in decision.detail


def test_new_issuer_columns_are_read() -> None:
    cfg = IssuerConfig.from_row(
        issuer_row(
            typ=["Application/AT+JWT"],
            required_claims=["email"],
            authorized_parties=["x"],
            jwks_max_stale=600.0,
            jwks_refresh_min=10.0,
            jwks_refresh_max=900.0,
        )
    )
    assert cfg.typ == ("at+jwt",)
    assert [r.text for r in cfg.required_claims] == ["email"]
    assert cfg.authorized_parties == ("x",)
    assert (cfg.jwks_max_stale, cfg.jwks_refresh_min, cfg.jwks_refresh_max) == (
        600.0,
        10.0,
        900.0,
    )
    assert cfg.refresh_interval(None) == cfg.jwks_refresh
    assert cfg.refresh_interval(1.0) == 10.0
    assert cfg.refresh_interval(86400.0) == 900.0
    assert cfg.refresh_interval(120.0) == 120.0
