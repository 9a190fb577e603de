"""Placeholders a policy template leaves for values only someone else can give.

``secfl policy init`` writes a complete policy, but some values belong to other
parties: a site's data key is sealed to the SPM by that site (``secfl policy
seal-secret``), and the policy holds only the sealed text. Where such a value is
not given yet, the template writes ``TODO(secfl): <what to run>``. The document is
valid as a schema (so it can be reviewed, diffed and digested), but :func:`todos`
finds every placeholder, and ``secfl policy validate``, ``sign`` and ``submit``
refuse a policy that still holds one, naming the field and what to run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from secfl.errors import PolicyError
from secfl.policy._model import Policy
from secfl.policy._references import key_path

__all__ = ["TODO", "check_no_todos", "todo", "todos"]

#: How a placeholder starts (compared case-insensitively: validation lowercases hex).
TODO = "TODO(secfl): "


def todo(what: str) -> str:
    """A placeholder saying ``what`` to do (one line)."""
    return TODO + " ".join(what.split())


def todos(policy: Policy) -> list[tuple[str, str]]:
    """Every placeholder left in ``policy``: (field path, what to do), in document order."""
    return list(_walk(policy.model_dump(mode="json"), ""))


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if value[: len(TODO)].lower() == TODO.lower():
            yield path, value[len(TODO) :].strip()
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}{key_path(str(key))}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def check_no_todos(policy: Policy) -> None:
    """Refuse, in one line, a policy that still holds a placeholder."""
    found = todos(policy)
    if found:
        path, what = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise PolicyError(f"todo: {path.removeprefix('.')}: {what[:600]}{more}")
