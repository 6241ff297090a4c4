"""A JWKS document as verification keys: each JWK parsed once into a cryptography
public-key object, and the choice of the key that must verify a token.

Only public members are read (a JWKS leaking private parts yields no private-key
objects) and only they are kept, for the copy persisted in oauth.jwks_cache. A key
that cannot be used is skipped with a note saying why, never fatal to the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from pyhook.config import SUPPORTED_ALGORITHMS
from pyhook.edwards_points import eddsa_key_problem
from pyhook.errors import JwksUnavailable, KeyNotFound, UnknownKey, show

MAX_KEYS = 100  # keys parsed per JWKS document; more is abuse, not rotation
MIN_RSA_BITS = 2048

# alg -> (kty, curves the key may have; None: any)
_KEY_TYPE_FOR_ALG: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


# JWS signatures of EC keys are r||s, each padded to the curve's size (RFC 7518
# 3.4); EdDSA signatures are R||S (RFC 8032)
_SIGNATURE_SIZES: dict[str, int] = {
    "P-256": 64,
    "P-384": 96,
    "P-521": 132,
    "Ed25519": 64,
    "Ed448": 114,
}


# members that make up a public JWK; nothing else is kept or persisted
_PUBLIC_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
}


@dataclass(frozen=True)
class JsonWebKey:
    """One public verification key; ``key`` is a cryptography public-key object."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any = field(repr=False)
    bits: int | None = None
    # the public members as a JWK (kty, kid, alg, n/e or crv/x/y): for oauth.jwks_cache
    public: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a token signed with ``alg``."""
        wanted = _KEY_TYPE_FOR_ALG.get(alg)
        if wanted is None or self.kty != wanted[0]:
            return False
        if wanted[1] is not None and self.crv not in wanted[1]:
            return False
        return self.alg is None or self.alg == alg

    def signature_size(self) -> int:
        """The length every signature by this key has, in bytes."""
        if self.kty == "RSA":
            return ((self.bits or 0) + 7) // 8  # k, the modulus length (RFC 8017)
        return _SIGNATURE_SIZES[str(self.crv)]

    def describe(self) -> str:
        """A label without key material, e.g. ``RSA 2048-bit`` or ``EC P-256``."""
        kind = f"RSA {self.bits}-bit" if self.kty == "RSA" else f"{self.kty} {self.crv}"
        return kind if self.alg is None else f"{kind} for {self.alg}"


class _SkipKey(Exception):
    pass


def parse_jwk(obj: Any) -> JsonWebKey:
    """One JWK (a dict) as a JsonWebKey; raises _SkipKey with a safe reason."""
    if not isinstance(obj, dict):
        raise _SkipKey("not a JSON object")
    kid = obj.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _SkipKey("kid is not a string")
    # present means present: "use": null is no more a signing key than "enc" is
    if "use" in obj and obj["use"] != "sig":
        raise _SkipKey(f"use is {show(obj['use'])}, not 'sig'")
    if "key_ops" in obj:
        ops = obj["key_ops"]
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise _SkipKey("key_ops is not a list of strings")
        if "verify" not in ops:
            raise _SkipKey(f"key_ops {show(ops[:10], 100)} does not include 'verify'")
    alg = obj.get("alg")
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        raise _SkipKey(f"alg {show(alg)} is not supported")
    kty = obj.get("kty")
    crv = obj.get("crv")
    bits: int | None = None
    try:
        # only the public members are passed on: a JWKS leaking private parts must
        # not turn into private-key objects here
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk({"kty": "RSA", "n": obj["n"], "e": obj["e"]})
            bits = key.key_size
            crv = None
        elif kty == "EC" and crv in ("P-256", "P-384", "P-521"):
            key = ECAlgorithm.from_jwk(
                {"kty": "EC", "crv": crv, "x": obj["x"], "y": obj["y"]}
            )
        elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
            key = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": crv, "x": obj["x"]})
        elif kty in ("EC", "OKP"):
            raise _SkipKey(f"curve {show(crv)} is not supported")
        else:
            raise _SkipKey(f"key type {show(kty)} is not supported")
    except _SkipKey:
        raise
    except Exception as exc:  # noqa: BLE001 - any bad member skips only this key
        raise _SkipKey(f"invalid key parameters ({type(exc).__name__})") from None
    if bits is not None and bits < MIN_RSA_BITS:
        raise _SkipKey(f"RSA key of {bits} bits is too short")
    if kty == "OKP":
        # what OpenSSL holds, however x was spelled
        problem = eddsa_key_problem(
            str(crv), key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        if problem is not None:
            raise _SkipKey(problem)
    public: dict[str, Any] = {"kty": kty}
    public.update({name: obj[name] for name in _PUBLIC_MEMBERS[str(kty)]})
    for name in ("kid", "alg", "use"):
        if obj.get(name) is not None:
            public[name] = obj[name]
    return JsonWebKey(
        kid=kid, kty=str(kty), crv=crv, alg=alg, key=key, bits=bits, public=public
    )


def parse_jwks(document: bytes | str) -> tuple[list[JsonWebKey], list[str]]:
    """The usable keys of a JWKS document and one note per skipped key."""
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):
        raise JwksUnavailable("JWKS document is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksUnavailable("JWKS document has no 'keys' array")
    keys: list[JsonWebKey] = []
    notes: list[str] = []
    for position, obj in enumerate(data["keys"][:MAX_KEYS]):
        try:
            keys.append(parse_jwk(obj))
        except _SkipKey as exc:
            kid = obj.get("kid") if isinstance(obj, dict) else None
            prefix = (
                skip_note_prefix(kid) if isinstance(kid, str) else f"key #{position} skipped: "
            )
            notes.append(f"{prefix}{exc}")
    if len(data["keys"]) > MAX_KEYS:
        notes.append(f"only the first {MAX_KEYS} keys were read")
    return keys, notes


def skip_note_prefix(kid: str) -> str:
    """How the note of a skipped key with this kid begins."""
    return f"key kid {show(kid, 60)} skipped: "


def select_key(keys: list[JsonWebKey], alg: str, kid: str | None) -> JsonWebKey:
    """The key for a token; KeyNotFound when a refetch might help, UnknownKey otherwise."""
    if kid is not None:
        same_kid = [k for k in keys if k.kid == kid]
        if not same_kid:
            raise KeyNotFound(f"no key with kid {show(kid, 60)}")
        for key in same_kid:
            if key.fits(alg):
                return key
        raise UnknownKey(
            f"key {show(kid, 60)} is {same_kid[0].describe()} and cannot verify {alg}"
        )
    # without a kid the choice of key would be a guess: only a single-key JWKS allows it
    if len(keys) > 1:
        raise UnknownKey(
            f"token has no kid and the JWKS has {len(keys)} keys; a kid is required"
        )
    if keys and keys[0].fits(alg):
        return keys[0]
    if keys:
        raise KeyNotFound(
            f"token has no kid and the only key ({keys[0].describe()}) cannot verify {alg}"
        )
    raise KeyNotFound(f"token has no kid and no key fits {alg}")
