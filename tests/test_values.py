"""Untrusted values shown in refusals (secfl._internal.values): short and on one line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl._internal.values import (
    MAX_CHARS,
    MAX_MESSAGE,
    describe,
    one_line,
    quoted,
    shown,
    shows_nothing,
)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("site-1", "'site-1'"),
        ("x\nCRITICAL forged", "'x\\nCRITICAL forged'"),
        ("a\rb\x1b[2Jc\u2028d", "'a\\rb\\x1b[2Jc\\u2028d'"),
        (7, "7"),
        (10**400, "an integer of 401 digits"),
        (None, "None"),
        (["a\nb"], "a list"),
    ],
)
def test_a_value_is_shown_on_one_line(value: object, shown: str) -> None:
    assert quoted(value) == shown


def test_a_long_string_is_cut_and_its_length_said() -> None:
    shown = quoted("\n" * 10**6)
    assert shown.startswith("'" + "\\n" * MAX_CHARS + "'...") and "(1000000 characters)" in shown
    assert len(shown) < 4 * MAX_CHARS and "\n" not in shown


def test_describe_shows_no_string() -> None:
    assert describe("x\ny") == "a str"


def test_one_line_keeps_a_message_readable_on_one_line() -> None:
    assert one_line("peer: 'a' has 4 calls") == "peer: 'a' has 4 calls"  # as it is
    assert one_line("x\r\ny\u202ez\x00") == r"x\r\ny\u202ez\x00"
    long = one_line("a" * (MAX_MESSAGE + 5))
    assert long == "a" * MAX_MESSAGE + f"... ({MAX_MESSAGE + 5} characters)"


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(codec=None)) | st.text(st.characters(max_codepoint=0x7F)))
def test_shown_escapes_each_character_that_would_not_show(text: str) -> None:
    """:func:`shown` returns ASCII text that needs no escape as it is, without looking
    at each character: the same as escaping character by character."""
    each = "".join(
        c if c.isprintable() and not shows_nothing(c) else c.encode("unicode_escape").decode()
        for c in text
    )
    assert shown(text) == each
