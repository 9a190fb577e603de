"""An untrusted value shown in a refusal: short whatever it is.

A number a peer sent, or a task returned, may be an integer of a million digits
(``str()`` of one over 4300 digits raises ``ValueError``, and showing its first
digits makes ``10**400`` look like a finite number) or an object whose ``repr``
runs arbitrary code. :func:`describe` shows small integers and floats as they are
(``nan`` and ``inf`` included), a huge integer by its size, anything else (a bool
too) by its type name only. A string a peer sent (a tensor's name, a round's label)
may hold a newline and a forged log line after it, or a megabyte: :func:`quoted`
shows it on one line, escaped, and cut short.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["describe", "one_line", "quoted", "shown"]

#: Integers of more digits than this are shown by their size.
MAX_DIGITS = 20
#: A string is shown up to this many characters.
MAX_CHARS = 60
#: A peer's message (an error it answered with) is shown up to this many characters.
MAX_MESSAGE = 1000
#: Past this many bits, even counting the digits (``str()``) is refused or slow.
MAX_BITS = 14_000


def describe(value: Any) -> str:
    """``value`` in a refusal: ``None``, ``-3``, ``nan``, ``1e+300``, ``an integer of
    401 digits``, ``an integer of 16610 bits``, or ``a <type>`` (``a bool``, ``a str``)."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, numbers.Integral):
        try:
            number = int(value)
        except Exception:
            return f"a {type(value).__name__}"
        if number.bit_length() > MAX_BITS:
            return f"an integer of {number.bit_length()} bits"
        digits = len(str(abs(number)))
        return str(number) if digits <= MAX_DIGITS else f"an integer of {digits} digits"
    if isinstance(value, float):  # numpy's float64 too
        real = float(value)
        return repr(real) if math.isfinite(real) else str(real)
    return f"a {type(value).__name__}"


def quoted(value: Any) -> str:
    """A string in a refusal: quoted, every control or invisible character escaped (one
    line whatever it holds: ``'x\\nCRITICAL ...'``), cut at :data:`MAX_CHARS`
    characters (``'aaa...'...``); anything else as :func:`describe` shows it."""
    if not isinstance(value, str):
        return describe(value)
    if len(value) <= MAX_CHARS:
        return repr(value)
    return f"{value[:MAX_CHARS]!r}... ({len(value)} characters)"


#: Code points that display as nothing though Python calls them printable: Unicode's
#: default-ignorables that are neither format (Cf) nor control characters (fillers, the
#: combining grapheme joiner, variation selectors, U+2065), and the braille blank.
_SHOWS_NOTHING = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x2065, 0x2065), (0x2800, 0x2800), (0x3164, 0x3164), (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)  # fmt: skip
#: Of those, the variation selectors: after a visible character they choose its form
#: (an emoji's ⚠️, a CJK ideograph's variant) and hide nothing.
_SELECTORS = ((0x180B, 0x180D), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF))


def shows_nothing(char: str) -> bool:
    """Whether ``char`` displays as nothing though it is printable (:data:`_SHOWS_NOTHING`)."""
    point = ord(char)
    return any(low <= point <= high for low, high in _SHOWS_NOTHING)


def selects_form(char: str) -> bool:
    """Whether ``char`` is a variation selector (it chooses the form of the one before)."""
    point = ord(char)
    return any(low <= point <= high for low, high in _SELECTORS)


def shown(text: str) -> str:
    """``text`` as it is, but every control or invisible character escaped (``\\n``,
    ``\\x1b``, ``\\u202e``, ``\\u3164``): a name someone else chose, listed for a
    reviewer."""
    if text.isascii() and text.isprintable():
        # the common case, at C speed: what displays as nothing lies past ASCII, and
        # ASCII's controls are not printable (`secfl policy show` of a large policy
        # spent half its time here, a character at a time)
        return text
    return "".join(
        c if c.isprintable() and not shows_nothing(c)
        else c.encode("unicode_escape").decode("ascii")
        for c in text
    )  # fmt: skip


def one_line(text: str) -> str:
    """A message a peer wrote (an error it answered with), shown as it is but on one
    line: control and invisible characters escaped (:func:`shown`), cut at
    :data:`MAX_MESSAGE` characters."""
    cut = shown(text[:MAX_MESSAGE])
    return cut if len(text) <= MAX_MESSAGE else f"{cut}... ({len(text)} characters)"
