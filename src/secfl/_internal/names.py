"""Names as secfl records them: file names (in a volume's manifest, in a measurement)
and task names (in a policy, a shard, the logs).

A file name is recorded in Unicode NFC, so that one name typed on two systems (macOS
writes NFD) is one name, and only if it is valid UTF-8: Python hands a name whose
bytes are not UTF-8 over with lone surrogates, which no record could carry.

A task name is :data:`TASK_NAME`: plain ASCII with no markup or control characters,
so that one read from a shard or a user's task file is safe to print and to put in
a title (``evil[/]`` is rich markup; an escape sequence rewrites the terminal).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["TASK_NAME", "TASK_NAME_RULE", "nfc_name"]

#: A task's name: what the policy, the shards and the logs call it.
TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
#: :data:`TASK_NAME` in words, for a refusal.
TASK_NAME_RULE = "a letter, then up to 63 letters, digits, - or _"


def nfc_name(name: str) -> str | None:
    """``name`` in NFC, or None when it is not valid UTF-8 (the caller refuses it)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return unicodedata.normalize("NFC", name)
