"""Reading a policy document: YAML text in, a validated :class:`Policy` out.

Policies are written by people and submitted by anyone who can reach the SPM,
so reading one is strict and bounded:

- YAML is read with a safe loader that also refuses duplicate mapping keys (the
  usual YAML behaviour — the last one silently wins — would let two readers of
  the same document disagree on what the board approved), aliases and merge
  keys (a few lines of aliases expand to gigabytes: "billion laughs"), nesting
  deeper than :data:`MAX_DEPTH`, documents larger than :data:`MAX_BYTES` and
  numbers written with more than :data:`MAX_NUMBER_CHARS` characters (Python
  refuses to convert more than 4300 digits, and a policy has no use for them;
  the schema then bounds every number and text, see :mod:`secfl.policy._model`).
- Every failure is a :class:`~secfl.errors.PolicyError` with one line that names
  the field path, e.g. ``policy: services[1].inject.env.KEY: placeholder names
  unknown secret 'x'`` or ``policy: board.members[0].publc_key: unknown field``;
  YAML syntax errors give the line and column.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from secfl._internal.canonical import unique_keys
from secfl._internal.yamlload import FastSafeLoader, source_of
from secfl.errors import PolicyError
from secfl.policy._model import Policy
from secfl.policy._validation_text import squeezed as _one_line
from secfl.policy._validation_text import validation_message
from secfl.policy._visible import check_no_lone_cr, check_visible
from secfl.policy._yaml_out import EXPONENT_TEXT

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NUMBER_CHARS",
    "load_policy",
    "load_policy_file",
    "policy_text",
    "read_setting",
]

#: The largest policy document accepted (bytes of YAML).
MAX_BYTES = 1 << 20
#: The deepest nesting of YAML collections accepted.
MAX_DEPTH = 64
#: The longest number accepted, as written (sign, digits, prefix, underscores).
MAX_NUMBER_CHARS = 100
#: The most values (scalars, lists, mappings) in one document: pure-Python PyYAML
#: reads about 25 000 a second, so a megabyte of one-character list items cost 20 s of
#: CPU before any signature could be checked (found by a review). A large real policy
#: has far fewer (250 sites, each pinning 6 TDX builds: about 25 000); at this cap a
#: hostile document costs about 1 s of CPU with libyaml's parser (5 s without), and
#: the SPM reads two at a time.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(FastSafeLoader):
    """A safe loader (libyaml's parser when there is one: see
    :mod:`secfl._internal.yamlload`) without duplicate keys, aliases, merge keys or
    deep nesting."""

    def __init__(self, stream: str) -> None:
        if not isinstance(stream, str):  # the escapes' check reads the text as written
            raise TypeError("a policy document is read as text (policy_text)")
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, "YAML aliases are not allowed", event.start_mark)
        event = self.peek_event()
        if getattr(event, "tag", None) not in (None, "!"):  # !!binary, !!str, !!int 0x10 ...
            raise ComposerError(
                None, None, f"YAML tags ({event.tag}) are not allowed", event.start_mark
            )
        if (
            isinstance(event, yaml.ScalarEvent)
            and event.style == '"'
            # "\x24\x24SECFL::..." hides a placeholder
            and _HIDING_ESCAPE.search(source_of(self, event))
        ):
            raise ComposerError(
                None, None, "escapes that spell characters by number (\\x, \\u, \\U) "
                "or name (\\N, \\_, \\L, \\P) are not allowed: write the characters",
                event.start_mark,  # type: ignore[arg-type]
            )  # fmt: skip
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise ComposerError(
                None, None, f"more than {MAX_NODES} values in one document",
                self.peek_event().start_mark,
            )  # fmt: skip
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()
                raise ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> Any:
        # Checked before PyYAML calls int(): 5000 digits raise ValueError there.
        text = self.construct_scalar(node)
        if len(text) > MAX_NUMBER_CHARS:
            raise ConstructorError(
                None, None, f"a number longer than {MAX_NUMBER_CHARS} characters", node.start_mark
            )
        if not _DECIMAL.fullmatch(text):  # YAML 1.1: 010 is 8, 1:30 is 90, 0x10 is 16
            value = super().construct_yaml_int(node)
            raise ConstructorError(
                None, None, f"{text} reads as {value} in YAML 1.1 (octal, hexadecimal, base 60 "
                "or '_'): write the number in decimal, or quote it", node.start_mark,
            )  # fmt: skip
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> Any:
        text = self.construct_scalar(node)
        if ":" in text or "_" in text:  # YAML 1.1's base 60 and digit separators
            raise ConstructorError(
                None, None, f"{text} reads as {super().construct_yaml_float(node)} in YAML 1.1 "
                "(base 60 or '_'): write the number in decimal, or quote it", node.start_mark,
            )  # fmt: skip
        return super().construct_yaml_float(node)

    def construct_yaml_bool(self, node: Any) -> Any:
        text = self.construct_scalar(node)
        if text.lower() not in ("true", "false"):  # YAML 1.1: yes, no, on, off
            raise ConstructorError(
                None, None, f"{text} reads as {super().construct_yaml_bool(node)} in YAML 1.1: "
                "write true or false, or quote it", node.start_mark,
            )  # fmt: skip
        return super().construct_yaml_bool(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise ConstructorError(
                        None, None, "YAML merge keys ('<<') are not allowed", key_node.start_mark
                    )
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    raise ConstructorError(
                        None, None, "a mapping key must be a plain value", key_node.start_mark
                    ) from None
                if duplicate:
                    raise ConstructorError(
                        None, None, f"duplicate key {_show(key)}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _StrictLoader.construct_yaml_bool)
#: Double-quoted YAML escapes that hide what a string holds from whoever reads it.
_HIDING_ESCAPE = re.compile(r"(?<!\\)(\\\\)*\\[xuUN_LP]")
#: Integers as a reader takes them: decimal, no leading zero, no '_'.
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)")


class _NewVersionLoader(_StrictLoader):
    """The strict loader, refusing also what reads one way to people and another to
    YAML 1.1 but was accepted once (so only in a version about to be signed)."""

    def construct_yaml_str(self, node: Any) -> Any:
        text = super().construct_yaml_str(node)
        if node.style is None and EXPONENT_TEXT.fullmatch(text):
            raise ConstructorError(
                None, None, f"{text} reads as text in YAML 1.1, not as a number: write it "
                "with a dot and a signed exponent (1.0e-3) or in decimal, or quote it",
                node.start_mark,
            )  # fmt: skip
        return text


_NewVersionLoader.add_constructor("tag:yaml.org,2002:str", _NewVersionLoader.construct_yaml_str)


def read_setting(text: str) -> Any:
    """A value given on a command line for a new version (``--set KEY=VALUE``): JSON if
    it is JSON (``1e-3`` is a number there), else YAML as :class:`_NewVersionLoader`
    reads it; what is not YAML at all stays text. Raises :class:`PolicyError` with the
    reason for a value a policy may not hold (an alias, a tag, ``010``, ``1e400``...)."""
    hook = unique_keys(lambda key: ValueError(f"duplicate key {_show(key)}"))
    try:
        value = json.loads(text, object_pairs_hook=hook, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        pass
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise PolicyError(f"{text[:40]} is not a finite number")
        return value
    try:
        return yaml.load(text, Loader=_NewVersionLoader)  # noqa: S506 - a SafeLoader subclass
    except (ComposerError, ConstructorError) as exc:
        raise PolicyError(_one_line(exc.problem or str(exc))) from None
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise PolicyError("nested too deeply") from None
    except (ValueError, OverflowError) as exc:
        raise PolicyError(_one_line(str(exc))[:200]) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a policy may hold")


def policy_text(raw: bytes) -> str:
    """``raw`` as text, in the encoding :func:`load_policy` reads it (UTF-8, or UTF-16
    or UTF-32 as JSON and YAML detect them), without a byte order mark: what is
    submitted is what was validated and signed."""
    try:
        return raw.decode(json.detect_encoding(raw)).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"policy: the document is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None


def load_policy(text: str | bytes) -> Policy:
    """Parse and validate a policy document: YAML, or JSON (such as the canonical form).

    A document that parses as JSON is read as JSON, strictly (no duplicate
    keys, no NaN); anything else as YAML. JSON first because PyYAML (YAML 1.1)
    does not read every JSON string as JSON does (a raw U+0085 is a line break
    to it, U+0080 a refused character), and the canonical form must load back
    to the same policy.

    Raises :class:`PolicyError` with one line naming what is wrong and where.
    """
    if len(text) > MAX_BYTES:
        raise PolicyError(f"policy: the document is larger than {MAX_BYTES} bytes")
    if isinstance(text, bytes):  # decoded once, one way, for every command
        text = policy_text(text)
    data = _parse(text)
    if data is None:
        raise PolicyError("policy: the document is empty")
    if not isinstance(data, dict):
        raise PolicyError(
            f"policy: the document must be a mapping of fields, not {_type_name(data)}"
        )
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(validation_message(exc, Policy, "policy")) from None
    except RecursionError:
        raise PolicyError("policy: the document is nested too deeply") from None
    except UnicodeError:  # pydantic cannot even report text it cannot encode
        raise PolicyError("policy: the document holds text that is not valid Unicode") from None
    except (ValueError, OverflowError) as exc:  # a limit a check above missed: still one line
        raise PolicyError(f"policy: {_one_line(str(exc))[:200]}") from None


def _parse(text: str | bytes) -> Any:
    """The document's data: JSON if it is JSON, else YAML."""
    start = text.lstrip()[:1]
    if start in ("{", b"{"):
        try:
            data = json.loads(
                text,
                object_pairs_hook=_json_object,
                parse_constant=_json_constant,
                parse_int=_json_int,
            )
        except _JsonRefusal as exc:
            raise PolicyError(f"policy: JSON: {exc}") from None
        except (ValueError, RecursionError):
            pass  # not JSON (perhaps YAML in flow style): read it as YAML
        else:
            _check_depth(data)
            check_no_lone_cr(text)
            return data
    check_visible(text)  # YAML only: JSON reads no line break inside a string
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise PolicyError(f"policy: {_yaml_message(exc)}") from None
    except yaml.YAMLError as exc:  # ReaderError: bad encoding or a control character
        raise PolicyError(f"policy: YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise PolicyError("policy: the document is nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a YAML value no check above foresaw
        raise PolicyError(f"policy: YAML: {_one_line(str(exc))[:200]}") from None


class _JsonRefusal(Exception):
    """Valid JSON that a policy may not contain."""


_json_object = unique_keys(lambda key: _JsonRefusal(f"duplicate key {_show(key)}"))


def _json_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _JsonRefusal(f"a number longer than {MAX_NUMBER_CHARS} characters")
    return int(text)


def _json_constant(name: str) -> Any:
    raise _JsonRefusal(f"{name} is not a number a policy may hold")


def _check_depth(data: Any) -> None:
    """A JSON document's nesting and size, by the rules a YAML one is read under."""
    level, count = [data], 1
    for _ in range(MAX_DEPTH + 1):
        level = [
            child
            for value in level
            if isinstance(value, dict | list)
            for child in (value.values() if isinstance(value, dict) else value)
        ]
        count += len(level)
        if count > MAX_NODES:
            raise PolicyError(f"policy: JSON: more than {MAX_NODES} values in one document")
        if not level:
            return
    raise PolicyError(f"policy: JSON: nested deeper than {MAX_DEPTH} levels")


def load_policy_file(path: str | os.PathLike[str]) -> Policy:
    """:func:`load_policy` on a file; an unreadable file is a :class:`PolicyError` too."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError(f"policy: cannot read '{path}': {exc.strerror or exc}") from None
    return load_policy(data)


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    where = f"YAML line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
    return f"{where}: {_one_line(problem)}"


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def _type_name(value: Any) -> str:
    names = {list: "a list", str: "text", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), f"a {type(value).__name__}")
