"""The next version of a policy: what a board edits when the federation changes.

A new version must name its predecessor's digest and carry the next version number
(the SPM accepts it only then, and only with the previous board's approval). Doing
that by hand means running ``secfl policy digest`` and pasting 64 hex digits into
the right line; :func:`next_version` does it, and replaces the ``federation``
section when new settings are given.

The edit keeps the document as its authors wrote it, so that the board reviews a
diff of exactly what changed: the ``version`` and ``predecessor`` lines are replaced
where they stand, and in the ``federation`` section only the lines of the settings
that changed (an added setting goes at its end). Comments elsewhere (``secfl policy
init`` explains each measurement in them) survive. Every edited text is read back
and must hold exactly the intended document; when it does not (a layout the line
edit cannot follow), the whole section is written out again, and failing that the
whole document, without comments.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from secfl.errors import PolicyError
from secfl.policy._canonical import digest
from secfl.policy._document import _parse, load_policy
from secfl.policy._model import Policy
from secfl.policy._yaml_out import dump_yaml

__all__ = ["next_version"]

#: A top-level key at the start of a line (not indented, not a comment).
_TOP_LEVEL = re.compile(r"^[^\s#]")
#: ``  key: value  # comment`` (the comment kept when the value changes).
_SETTING = re.compile(r"^(?P<indent>\s+)(?P<key>[\w.-]+)\s*:(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")

_Section = Callable[[list[str], int, dict[str, Any], dict[str, Any]], list[str] | None]


def next_version(text: str, federation: Mapping[str, Any] | None = None) -> tuple[Policy, str]:
    """Version N+1 of the policy in ``text``: its predecessor is ``text``'s digest;
    ``federation`` (if given) replaces the ``federation`` section. Returns the new
    policy and its text; :class:`~secfl.errors.PolicyError` (one line) when ``text``
    or the result is not a valid policy."""
    current = load_policy(text)
    old = _parse(text)
    doc = {**old, "version": current.version + 1, "predecessor": digest(current)}
    if federation is not None:
        doc["federation"] = dict(federation)
    for section in (_edit_settings, _replace_section):  # the smallest edit that reads back
        edited = _edit(text, old, doc, section if federation is not None else None)
        if edited is not None and _reads_as(edited, doc):
            break
    else:
        edited = dump_yaml(doc)
    return load_policy(edited), edited


def _reads_as(text: str, doc: dict[str, Any]) -> bool:
    try:
        return bool(_parse(text) == doc)
    except PolicyError:
        return False


def _edit(
    text: str, old: dict[str, Any], doc: dict[str, Any], section: _Section | None
) -> str | None:
    """``text`` with the version and predecessor lines replaced in place, and the
    federation section edited by ``section``; None when a line edit cannot do it."""
    lines = text.splitlines()
    version = _top_level(lines, "version")
    if version is None:
        return None
    lines[version] = f"version: {doc['version']}"
    predecessor = _top_level(lines, "predecessor")
    if predecessor is None:
        lines.insert(version + 1, f"predecessor: {doc['predecessor']}")
    else:
        lines[predecessor] = f"predecessor: {doc['predecessor']}"
    if section is not None:
        start = _top_level(lines, "federation")
        if start is None:
            lines.extend(dump_yaml({"federation": doc["federation"]}).splitlines())
        else:
            edited = section(lines, start, dict(old.get("federation") or {}), doc["federation"])
            if edited is None:
                return None
            lines = edited
    return "\n".join(lines) + "\n"


def _edit_settings(
    lines: list[str], start: int, old: dict[str, Any], new: dict[str, Any]
) -> list[str] | None:
    """Only the lines of the settings that changed, each written on one line (an added
    one at the section's end); None unless each changed setting is one line."""
    if lines[start].split("#", 1)[0].strip() != "federation:":
        return None  # a flow-style section: written out again instead
    end = _block_end(lines, start)
    first = next((m for line in lines[start + 1 : end] if (m := _SETTING.match(line))), None)
    indent = first["indent"] if first else "  "
    found: dict[str, list[int]] = {}  # the section's own settings, not nested ones
    for i in range(start + 1, end):
        match = _SETTING.match(lines[i])
        if match and match["indent"] == indent:
            found.setdefault(match["key"], []).append(i)
    out = list(lines)
    drop: list[int] = []
    for key in [k for k in old if k not in new or old[k] != new[k]]:
        at = found.get(key, [])
        if len(at) != 1 or not _one_line(lines, at[0], end, indent):
            return None
        match = _SETTING.match(lines[at[0]])
        assert match is not None  # found holds only lines it matched
        if key in new:
            out[at[0]] = f"{indent}{key}: {_flow(new[key])}{match['comment'] or ''}"
        else:
            drop.append(at[0])
    added = [f"{indent}{key}: {_flow(value)}" for key, value in new.items() if key not in old]
    out[end:end] = added
    return [line for i, line in enumerate(out) if i not in drop]


def _one_line(lines: list[str], at: int, end: int, indent: str) -> bool:
    """Whether the setting on line ``at`` holds its whole value (nothing nested below)."""
    for line in lines[at + 1 : end]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        return len(line) - len(line.lstrip()) <= len(indent)
    return True


def _replace_section(
    lines: list[str], start: int, old: dict[str, Any], new: dict[str, Any]
) -> list[str]:
    """The whole section written out again (its comments are lost)."""
    end = _block_end(lines, start)
    return [*lines[:start], *dump_yaml({"federation": new}).splitlines(), *lines[end:]]


def _top_level(lines: list[str], key: str) -> int | None:
    """The index of the one line ``key: ...`` at the top level, else None."""
    found = [i for i, line in enumerate(lines) if re.match(rf"{key}\s*:", line)]
    return found[0] if len(found) == 1 else None


def _block_end(lines: list[str], start: int) -> int:
    """Where the top-level block that starts at ``start`` ends: before the next
    top-level key and the comments and blank lines that lead up to it."""
    end = next((i for i in range(start + 1, len(lines)) if _TOP_LEVEL.match(lines[i])), len(lines))
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1
    return end


def _flow(value: Any) -> str:
    """``value`` as YAML on one line (``{epochs: 2, lr: 0.05}``, ``previous``, ``12``)."""
    return dump_yaml(value, flow=True)
