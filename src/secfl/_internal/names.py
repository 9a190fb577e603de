"""File names as secfl records them (in a volume's manifest, in a measurement).

A name is recorded in Unicode NFC, so that one name typed on two systems (macOS
writes NFD) is one name, and only if it is valid UTF-8: Python hands a name whose
bytes are not UTF-8 over with lone surrogates, which no record could carry.
"""

from __future__ import annotations

import unicodedata

__all__ = ["nfc_name"]


def nfc_name(name: str) -> str | None:
    """``name`` in NFC, or None when it is not valid UTF-8 (the caller refuses it)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return unicodedata.normalize("NFC", name)
