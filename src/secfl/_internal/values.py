"""An untrusted value shown in a refusal: short whatever it is.

A number a peer sent, or a task returned, may be an integer of a million digits
(``str()`` of one over 4300 digits raises ``ValueError``, and showing its first
digits makes ``10**400`` look like a finite number) or an object whose ``repr``
runs arbitrary code. :func:`describe` shows small integers and floats as they are
(``nan`` and ``inf`` included), a huge integer by its size, anything else (a bool
too) by its type name only.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["describe"]

#: Integers of more digits than this are shown by their size.
MAX_DIGITS = 20
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
