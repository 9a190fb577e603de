"""The one canonical JSON encoding of everything secfl signs, MACs or hashes.

A signer and a verifier that encode the same value differently disagree on the
digest: a classic signature bug. So every digest, signature, MAC and AEAD
associated data over a JSON value goes through :func:`canonical_json`:

    UTF-8 of json.dumps(value, sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False, allow_nan=False)

Sorted keys and no whitespace make the bytes depend on the value only; UTF-8
without escapes keeps one spelling per string; NaN and infinities, which JSON
cannot carry, are refused (ValueError) rather than written as non-JSON tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any


def canonical_json(value: Any) -> bytes:
    """The canonical encoding of a JSON-able ``value`` (see the module docstring)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_sha256(value: Any) -> str:
    """SHA-256 (lowercase hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


PairsHook = Callable[[list[tuple[str, Any]]], dict[str, Any]]


def unique_keys(refuse: Callable[[str], Exception]) -> PairsHook:
    """A ``json.loads`` ``object_pairs_hook`` that refuses a key given twice (JSON allows
    it and keeps the last, so two readers could see two different documents): raises
    ``refuse(key)``."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise refuse(key)
            out[key] = value
        return out

    return hook
