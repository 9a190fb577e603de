"""What a reviewer cannot see: line breaks that display as none, invisible format
characters. A board signs what it reads; a policy must read as the parser reads it."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from secfl._internal.values import selects_form, shows_nothing
from secfl.errors import PolicyError

__all__ = ["check_no_lone_cr", "check_strings_visible", "check_visible", "hidden_in"]

#: Line breaks to YAML (and CR, whitespace to JSON) that editors, ``cat`` and ``diff``
#: show inside one line, or let the next text overwrite on a terminal.
_HIDDEN_BREAKS = {"\r": "a carriage return", "\x85": "a next-line character",
                  "\u2028": "a line separator", "\u2029": "a paragraph separator"}  # fmt: skip


def _what(char: str, previous: str, strict: bool) -> str | None:
    """What ``char`` (after ``previous``) is, if a reader cannot see it as the parser
    reads it. ``strict`` (a new version's strings) adds the control characters a
    terminal acts on and what displays as nothing, but for a variation selector after a
    visible non-ASCII character (an emoji's ⚠️, an ideograph's variant)."""
    if char in _HIDDEN_BREAKS:
        return _HIDDEN_BREAKS[char]
    category = unicodedata.category(char)
    if category == "Cf":
        return "an invisible format character"
    if not strict:
        return None
    if category == "Cc" and char not in "\t\n":  # ESC, BS, DEL, C1: a terminal acts on them
        return "a control character"
    if shows_nothing(char):
        # variants exist for emoji, CJK ideographs and Mongolian: none after ASCII
        variant_of = previous > "\x7f" and previous.isprintable() and not previous.isspace()
        if selects_form(char) and variant_of and not shows_nothing(previous):
            return None
        return "a character that displays as nothing"
    return None


def _first_hidden(text: str, *, strict: bool) -> int:
    """The index of the first character :func:`_what` names, or -1."""
    previous = ""
    for index, char in enumerate(text):
        if char == "\r" and text[index + 1 : index + 2] == "\n":
            previous = char
            continue
        if _what(char, previous, strict) is not None:
            return index
        previous = char
    return -1


def hidden_in(text: str, *, strict: bool = True) -> str | None:
    """What in ``text`` a reader does not see as the parser reads it, if anything:
    a line break that displays as none (a lone CR, U+0085, U+2028, U+2029), an
    invisible format character (bidi controls, zero-width characters, a BOM), and with
    ``strict`` a control character a terminal acts on (ESC, BS, DEL, C1) or a character
    that displays as nothing (Hangul fillers, a stray variation selector, the braille
    blank)."""
    index = _first_hidden(text, strict=strict)
    if index < 0:
        return None
    char = text[index]
    return f"{_what(char, text[index - 1] if index else '', strict)} (U+{ord(char):04X})"


def check_visible(text: str | bytes) -> None:
    """Refuse what shows a reviewer something else than the parser reads: a line break
    that displays as none (a lone CR, U+0085, U+2028, U+2029: PyYAML starts a new line
    at each, so a "comment" after one is a field the SPM honours) and invisible format
    characters (bidi controls, zero-width characters, a byte-order mark past the start).
    Found by a hostile review: a 2-of-3 board signed a policy whose hidden line gave an
    attacker's code the model-signing key. YAML only: JSON starts no line at any of
    these (its canonical form may hold them inside strings). An SPM reads the versions it
    stored without this function."""
    if isinstance(text, bytes):
        try:  # the encodings PyYAML reads (UTF-8, UTF-16 with a byte-order mark)
            text = text.decode(json.detect_encoding(text))
        except (UnicodeDecodeError, LookupError):
            return  # not text: the YAML reader refuses it in its own words
    body = text.removeprefix("\ufeff")
    found = hidden_in(body, strict=False)  # any YAML file, comments and stored versions too
    if found is not None:
        index = _first_hidden(body, strict=False)
        line = body.count("\n", 0, index) + 1
        raise PolicyError(
            f"policy: line {line}: the document holds {found}, which hides text from whoever "
            "reads the file; remove it"
        )


def check_no_lone_cr(text: str | bytes) -> None:
    """A JSON document's whitespace holds no lone carriage return: a terminal shows
    the text after one over the text before it."""
    if isinstance(text, str):
        bare = text
    else:  # as json.loads reads bytes (UTF-16 and UTF-32 too: a CR there is followed by NULs)
        try:
            bare = text.decode(json.detect_encoding(text))
        except (UnicodeDecodeError, LookupError):
            return
    found = re.search(r"\r(?!\n)", bare)
    if found is not None:
        line = bare.count("\n", 0, found.start()) + 1
        raise PolicyError(
            f"policy: line {line}: the document holds a carriage return (U+000D), which "
            "hides text from whoever reads the file; remove it"
        )


def check_strings_visible(value: Any, where: str = "") -> None:
    """No field name or text of a new version hides what it holds: what
    :func:`check_visible` refuses in a YAML file, here in every string however it was
    written (JSON, or escapes), so a JSON document shows its reviewers what it says."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            found = hidden_in(str(key))
            if found is not None:
                raise PolicyError(f"policy: {where or 'a field'}: a name holds {found}")
            check_strings_visible(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_strings_visible(item, f"{where}[{i}]")
    elif isinstance(value, str):
        found = hidden_in(value)
        if found is not None:
            raise PolicyError(
                f"policy: {where}: the text holds {found}, which hides text from whoever "
                "reads the document; remove it"
            )
