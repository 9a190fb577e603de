"""One canonical JSON encoder for everything secfl signs, MACs or hashes.

Two encoders with different options (ASCII escapes, NaN, spacing) give a signer and
a verifier different bytes for the same value: a classic signature bug. This test
keeps every compact, key-sorted encoding in ``secfl._internal.canonical``.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pytest

from secfl._internal.canonical import canonical_json, canonical_sha256

SRC = Path(__file__).resolve().parents[1] / "src" / "secfl"
HAND_ROLLED = re.compile(r"json\.dumps\([^\n]*separators=\(\s*\",\"\s*,\s*\":\"\s*\)")


def test_no_module_rolls_its_own_canonical_json() -> None:
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        if path.name != "canonical.py" or path.parent.name != "_internal"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_ROLLED.search(line) and not line.lstrip().startswith(("#", "``"))
    ]
    assert found == [], f"use secfl._internal.canonical.canonical_json: {found}"


def test_the_encoding_is_one_spelling_per_value() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    assert canonical_json({"a": [1, 2]}) == canonical_json({"a": [1, 2]})
    with pytest.raises(ValueError):
        canonical_json({"x": math.nan})
    assert canonical_sha256({}) == hashlib.sha256(b"{}").hexdigest()
