"""Policy documents written as YAML that reads back as it reads to people.

Multi-line text (PEM keys and certificates) is a literal block, long lines are never
folded, and text that YAML 1.1 reads as text but people as a number (``1e-3``: its
floats need a dot and a signed exponent) is quoted: written plain, a new version
holding it is refused (:func:`secfl.policy._new_version.check_new_version`).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["EXPONENT_TEXT", "dump_yaml"]

#: Numbers with an exponent that YAML 1.1 reads as text (``lr: 1e-3`` is "1e-3").
EXPONENT_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


class _Dumper(yaml.SafeDumper):
    """SafeDumper with the text styles of the module docstring."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else "'" if EXPONENT_TEXT.fullmatch(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump_yaml(value: Any, *, flow: bool = False) -> str:
    """``value`` as YAML, in block style (or all on one line with ``flow``)."""
    text = yaml.dump(
        value, Dumper=_Dumper, sort_keys=False, width=1 << 16, allow_unicode=True,
        default_flow_style=flow,
    )  # fmt: skip
    return text.removesuffix("\n").removesuffix("\n...").strip() if flow else text
