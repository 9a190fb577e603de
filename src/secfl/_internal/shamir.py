"""Shamir secret sharing over GF(2^8), byte by byte.

:func:`split` draws, for every byte of the secret, a random polynomial of degree
``threshold - 1`` whose constant term is that byte, and gives share ``x`` (1..255)
the polynomial's values at ``x``. Any ``threshold`` shares give the secret back by
Lagrange interpolation at 0 (:func:`combine`); fewer reveal nothing about it
(information-theoretically) and interpolate to an unrelated value.

The field is GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1, the same as
most Shamir implementations (e.g. HashiCorp Vault's). Shares carry no integrity of
their own: the caller authenticates them (secfl seals each one with HPKE, an AEAD).
This pure-Python arithmetic uses lookup tables and is not constant-time; it runs
once per recovery, on keys that are then used anyway.
"""

from __future__ import annotations

import secrets as _random

_EXP = [0] * 510
_LOG = [0] * 256


def _init_tables() -> None:
    value = 1
    for power in range(255):
        _EXP[power] = value
        _LOG[value] = power
        # multiply by the generator 0x03 = x + 1
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= 0x11B
        value = doubled ^ value
    for power in range(255, 510):
        _EXP[power] = _EXP[power - 255]


_init_tables()


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


def split(secret: bytes, threshold: int, shares: int) -> list[tuple[int, bytes]]:
    """Split ``secret`` into ``shares`` shares (x = 1..shares), any ``threshold`` of
    which recover it. ``threshold`` 1 makes every share a copy of the secret."""
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ValueError("shamir: the secret must be non-empty bytes")
    if not isinstance(threshold, int) or not isinstance(shares, int):
        raise ValueError("shamir: threshold and shares must be integers")
    if threshold < 1:
        raise ValueError(f"shamir: threshold {threshold} must be at least 1")
    if shares < threshold:
        raise ValueError(f"shamir: {shares} shares cannot meet a threshold of {threshold}")
    if shares > 255:
        raise ValueError(f"shamir: at most 255 shares, not {shares}")
    size = len(secret)
    degree = threshold - 1
    coefficients = _random.token_bytes(size * degree)
    out: list[tuple[int, bytes]] = []
    for x in range(1, shares + 1):
        share = bytearray(size)
        for j in range(size):
            # Horner: ((a_d * x + a_{d-1}) * x + ...) * x + secret
            acc = 0
            for k in range(degree - 1, -1, -1):
                acc = _mul(acc, x) ^ coefficients[j * degree + k]
            share[j] = _mul(acc, x) ^ secret[j]
        out.append((x, bytes(share)))
    return out


def combine(shares: list[tuple[int, bytes]]) -> bytes:
    """Interpolate ``shares`` at 0. Given at least the threshold, that is the secret;
    given fewer, an unrelated value (nothing here can tell the two apart)."""
    if not shares:
        raise ValueError("shamir: no shares given")
    xs: list[int] = []
    size: int | None = None
    for item in shares:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError("shamir: a share is an (x, bytes) pair")
        x, value = item
        if not isinstance(x, int) or not 1 <= x <= 255:
            raise ValueError(f"shamir: share index {x!r} is not in 1..255")
        if not isinstance(value, bytes | bytearray) or not value:
            raise ValueError(f"shamir: share {x} is not non-empty bytes")
        if x in xs:
            raise ValueError(f"shamir: share {x} is given twice")
        if size is not None and len(value) != size:
            raise ValueError("shamir: the shares have different lengths")
        xs.append(x)
        size = len(value)
    assert size is not None
    # Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); minus is xor here.
    weights = []
    for i, xi in enumerate(xs):
        weight = 1
        for j, xj in enumerate(xs):
            if i != j:
                weight = _mul(weight, _div(xj, xj ^ xi))
        weights.append(weight)
    secret = bytearray(size)
    for weight, (_, value) in zip(weights, shares, strict=True):
        for k in range(size):
            secret[k] ^= _mul(weight, value[k])
    return bytes(secret)
