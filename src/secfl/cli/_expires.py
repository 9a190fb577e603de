"""``--expires``: until when a board-signed statement, or a signature, may be applied.

A statement signed by some members and then abandoned (or held back by one of them)
could otherwise be submitted months later, when the board no longer means it. Every
member signs with the same flags and must get the same digest, so the time is given
as it is (a date or a UTC time), never computed from the clock of whoever signs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from secfl.cli.audit import printable
from secfl.errors import UsageError

__all__ = [
    "REQUEST_DAYS",
    "SIGNATURE_DAYS",
    "Expires",
    "expires_after",
    "signature_expires",
    "with_expires",
]

Expires = Annotated[
    str | None,
    typer.Option(
        metavar="WHEN",
        help="Not applied after WHEN: a date (its end, 23:59:59 UTC) or a UTC time "
        "YYYY-MM-DDTHH:MM[:SS]Z; every member gives the same.",
    ),
]

#: Days a statement for a clone-audit request is given (`secfl revocations` prints it).
REQUEST_DAYS = 7


def with_expires(
    statement: dict[str, str], expires: str | None, *, now: datetime | None = None
) -> dict[str, str]:
    """``statement`` with ``expires`` in its one spelling (``YYYY-MM-DDTHH:MM:SSZ``);
    ``now`` (when signing) refuses a time already past."""
    if expires is None:
        return statement
    text = _when(expires)
    if text is None:
        raise UsageError(
            f"--expires: '{printable(expires, 40)}' is not a date (YYYY-MM-DD) or a UTC "
            "time (YYYY-MM-DDTHH:MM[:SS]Z)"
        )
    _not_past(text, now)
    return {**statement, "expires": text}


def _when(value: str) -> str | None:
    """A date (its end) or UTC time in its one spelling, ``YYYY-MM-DDTHH:MM:SSZ``."""
    text = value.strip()
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        text += "T23:59:59Z"
    elif re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}Z", text):
        text = text[:-1] + ":00Z"
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", text):
        return None  # (strptime takes any script's digits: one spelling only)
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return text


def _not_past(text: str, now: datetime | None) -> None:
    until = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    if now is not None and until <= now:
        raise UsageError(f"--expires: {text} is past; the SPM would never apply it")


def expires_after(at: object, days: int = REQUEST_DAYS) -> str | None:
    """The date ``days`` after the audit timestamp ``at`` (``YYYY-MM-DD``): what every
    member gets from the same request, whenever they sign (None if ``at`` is none)."""
    try:
        start = datetime.fromisoformat(str(at))
    except ValueError:
        return None
    return (start + timedelta(days=days)).strftime("%Y-%m-%d")


#: Days a member's signature of a policy version counts by default (`secfl policy sign`).
SIGNATURE_DAYS = 30


def signature_expires(value: str, now: datetime) -> str | None:
    """``secfl policy sign --expires``: a duration (``30d``, ``12h``), a date (its end,
    UTC), a UTC time, or ``never``; the time in a signature's spelling (None for never).
    Each member chooses their own: it is their signature's, not the version's digest."""
    text = value.strip().lower()
    if text == "never":
        return None
    found = re.fullmatch(r"([0-9]{1,4})([dh])", text)
    if found:
        amount = int(found.group(1))
        span = timedelta(days=amount) if found.group(2) == "d" else timedelta(hours=amount)
        if not span:
            raise UsageError("--expires: give a duration of at least 1h")
        return (now + span).strftime("%Y-%m-%dT%H:%M:%SZ")
    when = _when(value.upper())
    if when is None:
        raise UsageError(
            f"--expires: '{printable(value, 40)}' is not a duration (30d, 12h), a date "
            "(YYYY-MM-DD), a UTC time (YYYY-MM-DDTHH:MM[:SS]Z) or 'never'"
        )
    _not_past(when, now)
    return when
