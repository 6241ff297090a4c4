"""Checks of EdDSA public keys (RFC 8032) that OpenSSL leaves out.

OpenSSL loads any 32 (57) bytes as an Ed25519 (Ed448) public key. A small-order
point such as the identity ``01 00..00`` verifies a signature ``R = identity,
S = 0`` over (a fraction of) all messages: anyone could forge tokens. Here a key
is decoded as RFC 8032 5.1.3/5.2.3 say (canonical y, a point on the curve, no
"negative zero" x) and must lie in the prime-order subgroup, as every key made
by ``A = [a]B`` does. Plain integer arithmetic, run once per key when a JWKS is
parsed, never per login.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class _Curve:
    name: str
    size: int  # bytes of an encoded point
    p: int
    a: int  # a*x^2 + y^2 = 1 + d*x^2*y^2
    d: int
    order: int  # L, the prime order of the base point
    cofactor: int


_P25519 = 2**255 - 19
_P448 = 2**448 - 2**224 - 1
_CURVES = {
    "Ed25519": _Curve(
        "Ed25519",
        32,
        _P25519,
        -1,
        -121665 * pow(121666, -1, _P25519) % _P25519,
        2**252 + 27742317777372353535851937790883648493,
        8,
    ),
    "Ed448": _Curve(
        "Ed448",
        57,
        _P448,
        1,
        -39081 % _P448,
        2**446 - 13818066809895115352007386748515426880336692474882178609894547503885,
        4,
    ),
}

# projective (X : Y : Z), x = X/Z, y = Y/Z
_Point = tuple[int, int, int]


def _sqrt(value: int, p: int) -> int | None:
    """A square root of ``value`` mod ``p`` (p = 5 mod 8 or 3 mod 4), or None."""
    if p % 4 == 3:
        root = pow(value, (p + 1) // 4, p)
    else:
        root = pow(value, (p + 3) // 8, p)
        if root * root % p != value:
            root = root * pow(2, (p - 1) // 4, p) % p  # times sqrt(-1)
    return root if root * root % p == value else None


def _decode(curve: _Curve, raw: bytes) -> tuple[int, int] | str:
    """The affine point ``raw`` encodes, or why it encodes none (RFC 8032 5.1.3/5.2.3)."""
    if len(raw) != curve.size:
        return f"is {len(raw)} bytes, not {curve.size}"
    p = curve.p
    number = int.from_bytes(raw, "little")
    sign = number >> (8 * curve.size - 1)
    y = number & ((1 << (8 * curve.size - 1)) - 1)
    if y >= p:  # Ed448: this also refuses bits set in the last byte besides the sign
        return "has a non-canonical encoding (y is not below p)"
    y2 = y * y % p
    # x^2 = (1 - y^2) / (a - d*y^2); the denominator is never 0 on these curves
    x = _sqrt((1 - y2) * pow((curve.a - curve.d * y2) % p, -1, p) % p, p)
    if x is None:
        return "is not a point on the curve"
    if x == 0 and sign == 1:
        return "has a non-canonical encoding (negative zero x)"
    if x & 1 != sign:
        x = p - x
    return x, y


def _add(curve: _Curve, one: _Point, two: _Point) -> _Point:
    # unified addition; complete because a is a square and d is not
    p, a, d = curve.p, curve.a, curve.d
    x1, y1, z1 = one
    x2, y2, z2 = two
    zz = z1 * z2 % p
    b = zz * zz % p
    c = x1 * x2 % p
    dd = y1 * y2 % p
    e = d * c % p * dd % p
    f = (b - e) % p
    g = (b + e) % p
    x3 = zz * f % p * (((x1 + y1) * (x2 + y2) - c - dd) % p) % p
    y3 = zz * g % p * ((dd - a * c) % p) % p
    return x3, y3, f * g % p


def _multiply(curve: _Curve, point: _Point, scalar: int) -> _Point:
    result: _Point = (0, 1, 1)
    for bit in bin(scalar)[2:]:
        result = _add(curve, result, result)
        if bit == "1":
            result = _add(curve, result, point)
    return result


def _is_identity(curve: _Curve, point: _Point) -> bool:
    x, y, z = point
    return x % curve.p == 0 and (y - z) % curve.p == 0


@functools.lru_cache(maxsize=256)  # a refresh re-parses the same keys
def eddsa_key_problem(crv: str, raw: bytes) -> str | None:
    """Why ``raw`` is no usable public key on ``crv`` (Ed25519, Ed448); None if it is."""
    curve = _CURVES.get(crv)
    if curve is None:
        return f"curve {crv!a} is not an EdDSA curve"
    decoded = _decode(curve, raw)
    if isinstance(decoded, str):
        return f"{crv} public key {decoded}"
    point = (decoded[0], decoded[1], 1)
    if _is_identity(curve, _multiply(curve, point, curve.cofactor)):
        return f"{crv} public key is a small-order point"
    if not _is_identity(curve, _multiply(curve, point, curve.order)):
        return f"{crv} public key is not in the prime-order subgroup"
    return None
