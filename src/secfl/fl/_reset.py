"""A board-approved reset of the aggregator's freshness check.

When the newest checkpoint is lost (a disk failure, a restore from backup), the
aggregator refuses to resume: it cannot tell that loss from a rollback attack.
The board can decide otherwise, explicitly: its members sign a statement naming
the policy (by digest), the counter and the SPM's current value of it; with the
policy's m-of-n approval the aggregator resumes from the newest checkpoint it has
(or starts over), and moves the counter on. The statement names the counter's
value, so it cannot be replayed once training went on past it.

A reset is used up once applied (:func:`pending_reset`): the first commit after it
moves the counter past its value, and the aggregator renames the file to
``reset-used-c<value>.json``. A reset file whose value the counter has passed can
never apply again: it is set aside the same way with one line in the log, never a
reason to refuse a start; one that names another policy version goes to
``reset-other-c<value>.json``, its line naming the version to sign for.

File (JSON)::

    {"statement": {"policy": NAME, "policy_digest": HEX, "counter": NAME,
                   "value": INT, "reason": TEXT},
     "signatures": [Signature, ...]}      # domain "secfl/fl-reset/v1"
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from secfl._internal import files
from secfl._internal.canonical import canonical_sha256
from secfl._internal.values import one_line
from secfl.errors import FlError, PolicyError
from secfl.fl._untrusted import read_json_file
from secfl.policy import _keys as keys
from secfl.policy._model import Policy
from secfl.policy._signatures import Signature, check_approval, sign_statement

__all__ = [
    "MAX_RESET_BYTES",
    "RESET_DOMAIN",
    "ApprovedReset",
    "check_reset",
    "pending_reset",
    "reset_statement",
    "sign_reset",
    "statement_digest",
]

log = logging.getLogger("secfl.fl")

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
            raise FlError(
                f"reset: {path} holds another statement (other value, policy or reason): "
                "sign the same one as the other members, or write to another file"
            )
    sig = sign_statement(RESET_DOMAIN, statement_digest(doc), keys.load_private(key), member)
    current["signatures"] = [s for s in current["signatures"] if s.get("member") != member] + [
        sig.model_dump(mode="json")
    ]
    # atomically: a write cut short (disk full, a kill) keeps the other members' signatures
    text = json.dumps(current, indent=2, sort_keys=True) + "\n"
    try:
        files.atomic_write(path, text.encode(), mode=0o644)
    except OSError as exc:
        raise FlError(f"reset: cannot write {path}: {exc.strerror or exc}") from None
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
    again = f"; remove {path} or have the board sign a new reset (secfl policy sign-reset)"
    want = {"policy": policy.name, "policy_digest": policy_digest, "counter": counter}
    for key, value in want.items():
        if statement.get(key) != value:
            raise FlError(f"reset: the statement's {key} is not {value!r}{again}")
    approved = _value(statement)
    if approved is None:
        raise FlError(
            "reset: the statement names no counter value (an integer from 0 to 2**63-1)" + again
        )
    try:
        check_approval(policy.board, statement_digest(statement), sigs, domain=RESET_DOMAIN)
    except PolicyError as exc:
        raise FlError(
            f"reset: {exc}; collect the signatures the policy's board rule needs in {path}"
        ) from None
    return approved


def _value(statement: dict[str, Any]) -> int | None:
    value = statement.get("value")
    return value if type(value) is int and 0 <= value < 2**63 else None


@dataclass(frozen=True)
class ApprovedReset:
    """A board-approved reset that applies now: at counter ``value``, from ``path``."""

    path: Path
    value: int

    def use_up(self) -> None:
        """Set the file aside once the counter moved past ``value``: it never applies
        again, and it must not stand in the way of the next start."""
        _set_aside(self.path, self.value)


def pending_reset(
    path: Path, policy: Policy, policy_digest: str, counter: str, current: int
) -> ApprovedReset | None:
    """The reset in ``path`` if it applies at the SPM's counter value ``current``.

    None when there is no file, or when it is used up: its value is below
    ``current`` (the counter went on after it) or it names another policy version.
    Such a file is renamed ``reset-used-c<value>.json`` (``reset-other-c<value>.json``
    for another version's) with one line in the log.
    A file that could still apply is checked whole (:func:`check_reset`); one whose
    value is ahead of the counter is refused, with the value to sign instead.
    """
    if not _present(path):
        return None
    statement = _read(path)["statement"]
    value = _value(statement)
    same = (statement.get("policy"), statement.get("counter")) == (policy.name, counter)
    if same and value is not None:
        if value < current:
            log.info("%s approved a reset at counter %d, the counter is at %d: used up",
                     path, value, current)  # fmt: skip
            _set_aside(path, value)
            return None
        if statement.get("policy_digest") != policy_digest:
            # (the file it signed for is named: an old policy.yaml was signed, say)
            log.warning(
                "%s approves a reset for another version of '%s' (digest %.16s...), not this "
                "run's version %d (digest %.16s...): set aside as reset-other-c%d.json; sign "
                "the reset again with version %d's policy file",
                path, policy.name, one_line(str(statement.get("policy_digest"))), policy.version,
                policy_digest, value, policy.version,
            )  # fmt: skip
            _set_aside(path, value, "other")
            return None
    approved = check_reset(path, policy, policy_digest, counter)
    if approved != current:
        raise FlError(
            f"reset: {path} approves a reset at counter {approved}, the SPM's counter is "
            f"{current}: have the board sign a new reset with --value {current}"
        )
    return ApprovedReset(path, approved)


def _present(path: Path) -> bool:
    """Whether a reset file is at ``path`` (the host's folder: a link it cannot follow is
    a one-line refusal, not an OSError)."""
    try:
        return path.exists()
    except OSError as exc:
        raise FlError(
            f"reset: cannot read {path}: {exc.strerror or exc}; remove it or have the board "
            "sign a reset there"
        ) from None


def _set_aside(path: Path, value: int, why: str = "used") -> None:
    """Rename a used (or another version's) reset file (a failure is only logged: its
    value keeps it used up)."""
    target = path.with_name(f"reset-{why}-c{value}.json")
    try:
        path.replace(target)
    except OSError as exc:
        log.warning("could not rename %s to %s: %s", path, target.name, exc.strerror or exc)


def _read(path: Path) -> dict[str, Any]:
    """A reset file's ``{"statement": {...}, "signatures": [{...}, ...]}``, bounded (it
    lies in the host's checkpoint folder: anyone there may have written it)."""
    doc = read_json_file(path, "reset", MAX_RESET_BYTES, regular=True)  # the host's folder
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
