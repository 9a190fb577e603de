"""A board-approved reset of the aggregator's freshness check.

When the newest checkpoint is lost (a disk failure, a restore from backup), the
aggregator refuses to resume: it cannot tell that loss from a rollback attack.
The board can decide otherwise, explicitly: its members sign a statement naming
the policy (by digest), the counter and the SPM's current value of it; with the
policy's m-of-n approval the aggregator resumes from the newest checkpoint it has
(or starts over), and moves the counter on. The statement names the counter's
value, so it cannot be replayed once training went on past it.

File (JSON)::

    {"statement": {"policy": NAME, "policy_digest": HEX, "counter": NAME,
                   "value": INT, "reason": TEXT},
     "signatures": [Signature, ...]}      # domain "secfl/fl-reset/v1"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from secfl._internal.canonical import canonical_sha256
from secfl.errors import FlError, PolicyError
from secfl.fl._untrusted import read_json_file
from secfl.policy import _keys as keys
from secfl.policy._model import Policy
from secfl.policy._signatures import Signature, check_approval, sign_statement

__all__ = [
    "MAX_RESET_BYTES",
    "RESET_DOMAIN",
    "check_reset",
    "reset_statement",
    "sign_reset",
    "statement_digest",
]

RESET_DOMAIN = "secfl/fl-reset/v1"
#: A reset file holds one statement and a board's signatures: small.
MAX_RESET_BYTES = 256 << 10


def reset_statement(
    policy: str, policy_digest: str, counter: str, value: int, reason: str
) -> dict[str, Any]:
    return {
        "policy": policy,
        "policy_digest": policy_digest,
        "counter": counter,
        "value": int(value),
        "reason": reason,
    }


def statement_digest(doc: dict[str, Any]) -> str:
    """SHA-256 (hex) of the reset statement's canonical JSON: what board members sign."""
    return canonical_sha256(doc)


def sign_reset(path: Path, doc: dict[str, Any], key: bytes, member: str) -> int:
    """Add ``member``'s signature of ``doc`` to the reset file ``path`` (created if
    absent; an existing file must hold the same statement). Returns the count."""
    current: dict[str, Any] = {"statement": doc, "signatures": []}
    if path.exists():
        current = _read(path)
        if current["statement"] != doc:
            raise FlError(f"reset: {path} holds another statement")
    sig = sign_statement(RESET_DOMAIN, statement_digest(doc), keys.load_private(key), member)
    current["signatures"] = [s for s in current["signatures"] if s.get("member") != member] + [
        sig.model_dump(mode="json")
    ]
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return len(current["signatures"])


def check_reset(path: Path, policy: Policy, policy_digest: str, counter: str) -> int:
    """The counter value the board approved a reset at; FlError naming what failed."""
    doc = _read(path)
    statement = doc["statement"]
    try:
        sigs = [Signature.model_validate(s) for s in doc["signatures"]]
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"])[:80]
        raise FlError(f"reset: {path} holds a malformed signature ({where})") from None
    want = {"policy": policy.name, "policy_digest": policy_digest, "counter": counter}
    for key, value in want.items():
        if statement.get(key) != value:
            raise FlError(f"reset: the statement's {key} is not {value!r}")
    approved = statement.get("value")
    if type(approved) is not int or not 0 <= approved < 2**63:
        raise FlError("reset: the statement names no counter value (an integer from 0 to 2**63-1)")
    try:
        check_approval(policy.board, statement_digest(statement), sigs, domain=RESET_DOMAIN)
    except PolicyError as exc:
        raise FlError(f"reset: {exc}") from None
    return approved


def _read(path: Path) -> dict[str, Any]:
    """A reset file's ``{"statement": {...}, "signatures": [{...}, ...]}``, bounded (it
    lies in the host's checkpoint folder: anyone there may have written it)."""
    doc = read_json_file(path, "reset", MAX_RESET_BYTES)
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("statement"), dict)
        or not isinstance(doc.get("signatures"), list)
        or not all(isinstance(s, dict) for s in doc["signatures"])
    ):
        raise FlError(
            f"reset: {path} is not a reset file (a statement and a list of signatures): "
            "sign a new one with `secfl policy sign-reset`"
        )
    return doc
