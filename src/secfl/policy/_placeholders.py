"""``$$SECFL::name[:selector]$$`` placeholders: how policies inject secrets.

A service's args, environment and injected files name secrets with placeholders;
the launcher substitutes them after attestation. The selectors pick a part or an
encoding of a secret: ``crt``, ``key``, ``chain`` (X.509 secrets), ``hex``,
``base64`` (the raw bytes of ``aes-256``, ``random`` and ``imported`` secrets),
``pub`` (key pairs and certificates). Which selector applies to which kind, and
which parts are public (the only ones allowed in args), is in
:mod:`secfl.policy._secrets` (``SELECTOR_KINDS``, ``PUBLIC_SELECTORS``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "PATTERN",
    "SELECTORS",
    "Placeholder",
    "find",
]

SELECTORS = frozenset({"crt", "key", "chain", "hex", "base64", "pub"})
PATTERN = re.compile(r"\$\$SECFL::([A-Za-z0-9][A-Za-z0-9._-]*)(?::([a-z0-9]+))?\$\$")
#: Anything that starts like a placeholder, to catch malformed ones.
_LOOSE = re.compile(r"\$\$SECFL::[^$]*\$\$")


@dataclass(frozen=True)
class Placeholder:
    """One ``$$SECFL::name[:selector]$$`` occurrence."""

    text: str
    name: str
    selector: str | None


def find(text: str) -> Iterator[Placeholder]:
    """Every placeholder in ``text``; a malformed one raises ``ValueError``."""
    for loose in _LOOSE.finditer(text):
        match = PATTERN.fullmatch(loose.group(0))
        if match is None:
            raise ValueError(f"malformed placeholder '{loose.group(0)}'")
        selector = match.group(2)
        if selector is not None and selector not in SELECTORS:
            raise ValueError(
                f"unknown selector ':{selector}' in '{loose.group(0)}' "
                f"(one of {', '.join(sorted(SELECTORS))})"
            )
        yield Placeholder(match.group(0), match.group(1), selector)
