"""The monotonic counter a commit moves: the SPM's in production (each increment a
compare-and-increment in one request, logging the round it commits), one in memory in
--insecure mode and tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from secfl.errors import CounterMoved, FlError, SecflError

__all__ = ["Ledger", "MemoryLedger", "SpmLedger", "new_version"]


class Ledger(Protocol):
    """A monotonic counter: the SPM's in production, a local one with --insecure."""

    def current(self) -> int: ...

    def committed(self) -> tuple[int, str | None]:
        """The counter's value and the name of the increment that took it there (None
        when it had none): which checkpoint at that value is the committed one."""
        ...

    def increment(self, expect: int | None = None, *, request: str | None = None) -> int:
        """The counter moved on by one; with ``expect``, only if it is at that value,
        else :class:`~secfl.errors.CounterMoved` and the counter unchanged. ``request``
        names the increment (a compare-and-increment only)."""
        ...

    def request_at(self, value: int) -> str | None:
        """The name of the increment that took the counter to ``value`` (at most its
        current value), None when it had none or is no longer remembered."""
        ...


class MemoryLedger:
    """A counter in this process (tests and --insecure mode: no rollback protection)."""

    def __init__(self, value: int = 0, request: str | None = None) -> None:
        self.value = value
        #: The name of the increment that took it to ``value`` (as the SPM says).
        self.request = request
        self._history: dict[int, str] = {value: request} if request is not None else {}
        self._lock = threading.Lock()

    def current(self) -> int:
        return self.value

    def committed(self) -> tuple[int, str | None]:
        with self._lock:
            return self.value, self.request

    def increment(self, expect: int | None = None, *, request: str | None = None) -> int:
        with self._lock:
            if expect is not None and self.value != expect:
                raise CounterMoved(self.value)
            self.value += 1
            self.request = request if expect is not None else None
            if self.request is not None:
                self._history[self.value] = self.request
            return self.value

    def request_at(self, value: int) -> str | None:
        with self._lock:
            return self._history.get(value)


class SpmLedger:
    """A counter of the policy in the SPM, incremented with the workload's session."""

    def __init__(
        self, client: Callable[[], Any], policy: str, counter: str, token: Callable[[], str]
    ) -> None:
        self._client, self.policy, self.counter, self._token = client, policy, counter, token

    def current(self) -> int:
        return int(self._client().counter(self.policy, self.counter))

    def committed(self) -> tuple[int, str | None]:
        value, request = self._client().counter_state(self.policy, self.counter)
        return int(value), request

    def request_at(self, value: int) -> str | None:
        from secfl.errors import SpmRefused

        try:
            return self._client().request_at(self.policy, self.counter, value)
        except SpmRefused as exc:  # an SPM older than this question names nothing
            if exc.status == 404 and not str(exc).startswith("counter: "):
                return None
            raise

    def increment(self, expect: int | None = None, *, request: str | None = None) -> int:
        """The counter moved on by one (given ``expect``, a compare-and-increment in
        one request). The SPM refuses a session attested under a policy version the
        board has since replaced: this run must not commit again."""
        return self.increment_round(expect, None, request=request)

    def increment_round(
        self, expect: int | None, round: dict[str, Any] | None, *, request: str | None = None
    ) -> int:
        """:meth:`increment`, the SPM logging ``round`` (an ``fl.round`` detail) with it."""
        from secfl.errors import SpmRefused

        token = self._token()
        try:
            client = self._client()
            return int(client.increment(self.policy, self.counter, token, expect, round,
                                        request=request))  # fmt: skip
        except SpmRefused as exc:
            if renewed_meanwhile(exc, token, self._token()):
                # refused whole; but a first try whose answer was lost may have landed
                # before the renewal (the client's resend met the ended session): the
                # counter's newest named increment says (found by a review)
                if request is not None and expect is not None:
                    value, newest = self.committed()
                    if newest == request and value == expect + 1:
                        return value
                return self.increment_round(expect, round, request=request)
            if exc.status == 409 and str(exc).startswith("policy: version "):
                raise new_version(self.policy) from None
            if exc.status == 409 and str(exc).startswith("counter: "):
                raise CounterMoved(self._seen()) from None
            raise

    def _seen(self) -> int | None:
        """The counter's value, read for an error message (``None`` if it cannot be)."""
        try:
            return self.current()
        except (SecflError, ValueError):
            return None


def renewed_meanwhile(exc: Exception, sent: str, now: str) -> bool:
    """Whether ``exc`` refused the token ``sent`` because the workload attested again
    while the request was under way (its token is ``now``): the SPM refuses a session
    (401, ``session: ...``: ended, or its row gone on an SPM that has not heard yet)
    before it applies any of the request (secfl.spm._renewal)."""
    from secfl.errors import SpmRefused

    return (
        isinstance(exc, SpmRefused)
        and exc.status == 401
        and str(exc).startswith("session: ")
        and now != sent
    )


def new_version(policy: str) -> FlError:
    """The aggregator's stop once the board approved a new version of ``policy``."""
    return FlError(
        f"policy: the board approved a new version of '{policy}': this run stops here; "
        "start the aggregator again with `secfl run` to begin the new run"
    )
