"""Reading JSON and YAML that crossed a trust boundary: a value, or one line saying why not.

Python's parsers are not safe on hostile input as they stand: deep nesting raises
``RecursionError``, an integer of more than 4300 digits ``ValueError``, ``json``
reads ``NaN``, ``Infinity`` and ``1e400`` (infinite) as floats, YAML builds dates,
bytes and shared aliases (a "billion laughs" document expands exponentially when
walked). Every peer message header and every file the federation reads from disk
(``--federation`` settings, ``checkpoints/reset.json``, ``grid.json``) goes
through here, so each of those is a :class:`~secfl.errors.FlError` naming the
input, in one line, never a traceback.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from secfl._internal.files import TooLarge, read_bounded
from secfl._internal.yamlload import FastSafeLoader
from secfl.errors import FlError

__all__ = [
    "INT_DIGITS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "check_tree",
    "parse_json",
    "parse_yaml",
    "read_file",
    "read_json_file",
    "read_settings",
    "read_yaml_file",
]

#: Deepest nesting accepted (settings and headers need a handful of levels).
MAX_DEPTH = 32
#: Most values (containers, keys and scalars) one document may hold.
MAX_VALUES = 100_000
#: Largest file read by :func:`read_file` unless told otherwise.
MAX_FILE_BYTES = 1 << 20
#: Python's own limit on the digits of an integer parsed from text (3.11+).
INT_DIGITS = 4300


class _Refused(Exception):
    """A parse hook refused a value (the message says which)."""


def _no_constant(name: str) -> Any:
    raise _Refused("holds NaN or Infinity (numbers JSON does not have)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"holds a number too large for a float ({text[:20]}...)")
    return value


def parse_json(text: str | bytes, what: str) -> Any:
    """``text`` as JSON, bounded (see the module docstring); FlError starts with ``what``."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except _Refused as exc:
        raise FlError(f"{what} {exc}") from None
    except RecursionError:
        raise FlError(f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise FlError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FlError(f"{what} is not JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError:  # int(): more than INT_DIGITS digits
        raise FlError(f"{what} holds a number of more than {INT_DIGITS} digits") from None
    check_tree(value, what)
    return value


class _Loader(FastSafeLoader):
    """A safe loader (libyaml's parser when there is one) reading ``1e-3`` as the
    number people (and YAML 1.2, and JSON) read: YAML 1.1 made it the text "1e-3", and
    a task's ``lr: 1e-3`` was refused as text by every collaborator once the board had
    signed it. Quoted, it stays text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str | bytes, what: str) -> Any:
    """``text`` as YAML (JSON is YAML), bounded as :func:`parse_json`, plain JSON values only."""
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or "malformed").split())[:120]
        raise FlError(f"{what} is not YAML ({problem}{where})") from None
    except yaml.YAMLError:  # a reader error: bad encoding or a control character
        raise FlError(f"{what} is not YAML (unreadable characters)") from None
    except RecursionError:
        raise FlError(f"{what} is nested too deeply") from None
    except (ValueError, OverflowError):  # int(): more than INT_DIGITS digits
        raise FlError(f"{what} holds a number of more than {INT_DIGITS} digits") from None
    check_tree(value, what, json_only=True)
    return value


def check_tree(
    value: Any,
    what: str,
    *,
    json_only: bool = False,
    max_int: int | None = None,
    max_str: int | None = None,
) -> None:
    """Refuse nesting deeper than MAX_DEPTH, more than MAX_VALUES values, non-finite
    floats, (``json_only``) anything but JSON's types, and integers beyond
    ``±max_int`` or strings longer than ``max_str``. Iterative: a hostile document
    cannot exhaust the stack here, and shared YAML aliases count each time they occur."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise FlError(f"{what} holds more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise FlError(f"{what} is nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise FlError(f"{what} has a key that is not a string")
                _check_text(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise FlError(f"{what} holds NaN or Infinity")
        elif isinstance(item, int) and max_int is not None and abs(item) > max_int:
            bits = item.bit_length()
            raise FlError(f"{what} holds an integer of {bits} bits (at most ±{max_int})")
        elif isinstance(item, str):
            if max_str is not None and len(item) > max_str:
                size = len(item)
                raise FlError(f"{what} holds a string of {size} characters (at most {max_str})")
            _check_text(item, what)
        elif json_only and not (item is None or isinstance(item, str | int)):
            raise FlError(f"{what} holds a {type(item).__name__}, not a JSON value")


def _check_text(text: str, what: str) -> None:
    """``text`` has a UTF-8 form: JSON's ``\\ud800`` escape decodes to a lone surrogate,
    which no digest, signature or file of it can encode (a traceback, not a refusal)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise FlError(f"{what} holds text with no UTF-8 form (a lone surrogate)") from None


def read_file(
    path: Path, what: str, max_bytes: int = MAX_FILE_BYTES, *, regular: bool = False
) -> bytes:
    """The bytes of ``path``, at most ``max_bytes``; FlError (starting ``what``) otherwise.
    ``regular``: a file the host may have planted (in the aggregator's folders), so a
    regular file only, opened without blocking (a FIFO there is refused, not waited on);
    otherwise the operator's own input, which may be a pipe (``--settings <(...)``)."""
    try:
        return read_bounded(path, max_bytes, regular=regular)
    except TooLarge:
        raise FlError(f"{what}: {path} is larger than {max_bytes} bytes") from None
    except OSError as exc:
        raise FlError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def read_json_file(
    path: Path, what: str, max_bytes: int = MAX_FILE_BYTES, *, regular: bool = False
) -> Any:
    """A JSON file from disk, bounded; FlError ``"<what>: <path> ..."`` otherwise
    (``regular``: see :func:`read_file`)."""
    return parse_json(read_file(path, what, max_bytes, regular=regular), f"{what}: {path}")


def read_yaml_file(path: Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """A YAML (or JSON) file from disk, bounded; FlError ``"<what>: <path> ..."`` otherwise."""
    return parse_yaml(read_file(path, what, max_bytes), f"{what}: {path}")


def read_settings(path: Path) -> dict[str, Any]:
    """Federation settings from a YAML/JSON file: the file itself, or its ``federation``
    section (a policy's, or a settings file written as one: no setting has that name).
    Here, not with the aggregator: `secfl policy init --settings` reads them too, on a
    board member's machine, which has no use for the aggregator's imports (torch)."""
    doc = read_yaml_file(path, "federation")
    if isinstance(doc, dict) and "federation" in doc:
        doc = doc["federation"]
    if not isinstance(doc, dict):
        raise FlError(f"federation: {path} is not a mapping of settings")
    return doc
