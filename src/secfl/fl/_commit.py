"""Each round made durable and fresh: a sealed checkpoint, then the SPM counter.

The order (see :mod:`secfl.fl._checkpoint_dir`): write the checkpoint of round ``r``
with counter ``c + 1``, increment the SPM counter (it must answer ``c + 1``, or
another aggregator is running for this policy), and only then sign and send the
model with ``(r, c + 1)``. A restart resumes from the checkpoint whose counter
equals the SPM's (of this run; a new policy version starts a new run:
:mod:`secfl.fl._runs`); an older one is a rollback and refused, unless the board
signed a reset for exactly that state (:mod:`secfl.fl._reset`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from secfl.errors import FlError
from secfl.fl._checkpoint import write_checkpoint
from secfl.fl._checkpoint_dir import latest_checkpoint, prune_checkpoints
from secfl.fl._runs import ResumePoint, find_resume_point

__all__ = ["Commit", "Ledger", "MemoryLedger", "SpmLedger", "new_version"]

log = logging.getLogger("secfl.fl._aggregator")


class Ledger(Protocol):
    """A monotonic counter: the SPM's in production, a local one with --insecure."""

    def current(self) -> int: ...

    def increment(self) -> int: ...


class MemoryLedger:
    """A counter in this process (tests and --insecure mode: no rollback protection)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._lock = threading.Lock()

    def current(self) -> int:
        return self.value

    def increment(self) -> int:
        with self._lock:
            self.value += 1
            return self.value


class SpmLedger:
    """A counter of the policy in the SPM, incremented with the workload's session."""

    def __init__(
        self, client: Callable[[], Any], policy: str, counter: str, token: Callable[[], str]
    ) -> None:
        self._client, self.policy, self.counter, self._token = client, policy, counter, token

    def current(self) -> int:
        return int(self._client().counter(self.policy, self.counter))

    def increment(self) -> int:
        """The counter moved on by one. The SPM refuses a session attested under a
        policy version the board has since replaced: this run must not commit again."""
        from secfl.errors import SpmRefused

        try:
            return int(self._client().increment(self.policy, self.counter, self._token()))
        except SpmRefused as exc:
            if exc.status == 409 and str(exc).startswith("policy: version "):
                raise new_version(self.policy) from None
            raise


def new_version(policy: str) -> FlError:
    """The aggregator's stop once the board approved a new version of ``policy``."""
    return FlError(
        f"policy: the board approved a new version of '{policy}': this run stops here; "
        "start the aggregator again with `secfl run` to begin the new run"
    )


class Commit:
    """Checkpoints in ``directory`` (``None``: none) tied to ``ledger``."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        directory: Path | None,
        key: bytes | None,
        policy_digest: str,
        keep: int = 2,
    ) -> None:
        if directory is not None and key is None:
            raise FlError("checkpoint: a checkpoint directory needs a checkpoint key")
        self.ledger = ledger
        self.directory = directory
        self.key = key
        self.policy_digest = policy_digest
        self.keep = keep
        self.counter = 0

    def resume(self, *, reset_from: int | None = None) -> ResumePoint:
        """Where this run goes on from (see :mod:`secfl.fl._runs`; the policy digest
        names the run).

        ``reset_from`` is the SPM counter value a board-approved reset names: the
        newest checkpoint of this run at or below it is accepted (or a fresh start
        when there is none), and the next commit moves the counter on from the SPM's
        value.
        """
        spm = self.ledger.current()
        self.counter = spm
        if self.directory is None:
            if spm and reset_from is None:
                log.warning("no checkpoints (counter at %d): starting from round 0", spm)
            return ResumePoint(spm)
        assert self.key is not None
        if reset_from is not None:
            if reset_from != spm:
                raise FlError(
                    f"reset: the board approved a reset at counter {reset_from}, the SPM's "
                    f"counter is {spm}: have the board sign a new reset with --value {spm}"
                )
            newest = latest_checkpoint(
                self.directory, key=self.key, policy_digest=self.policy_digest,
                below=spm,
            )  # fmt: skip
            return ResumePoint(spm, checkpoint=newest)
        return find_resume_point(self.directory, key=self.key, run=self.policy_digest, counter=spm)

    def commit(self, round: int, params_bytes: bytes, state: dict[str, Any]) -> int:
        """Make ``round`` durable and fresh; returns the new counter value.

        The counter is read before it is incremented: if another aggregator of the
        policy moved it (an old one still running when the board approved a new
        version, or a second copy), this one stops *without* incrementing, so that
        the value it would have taken is not burnt and the other's checkpoint stays
        the newest committed state (nobody needs a reset)."""
        target = self.counter + 1
        if self.directory is not None:
            assert self.key is not None
            write_checkpoint(
                self.directory, key=self.key, policy_digest=self.policy_digest,
                round=round, counter=target, params_bytes=params_bytes, state=state,
            )  # fmt: skip
        seen = self.ledger.current()
        if seen != self.counter:
            raise FlError(
                f"counter: the SPM's counter is {seen}, this aggregator committed "
                f"{self.counter} last: another aggregator of this policy is running; round "
                f"{round} is not committed; stop the other one, then start this one again"
            )
        value = self.ledger.increment()
        if value != target:
            raise FlError(
                f"counter: the SPM answered {value}, expected {target}: another aggregator "
                "incremented this policy's counter at the same moment; stop every other "
                "aggregator of this policy, then start this one again (if it refuses a "
                f"rollback, the board signs a reset with --value {value})"
            )
        self.counter = value
        if self.directory is not None:
            prune_checkpoints(self.directory, keep=self.keep)
        return value
