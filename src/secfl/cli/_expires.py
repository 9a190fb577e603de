"""``--expires``: until when a board-signed statement may be applied.

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

__all__ = ["REQUEST_DAYS", "Expires", "expires_after", "with_expires"]

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
    text = expires.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        text += "T23:59:59Z"
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}Z", text):
        text = text[:-1] + ":00Z"
    try:
        until = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise UsageError(
            f"--expires: '{printable(expires, 40)}' is not a date (YYYY-MM-DD) or a UTC "
            "time (YYYY-MM-DDTHH:MM[:SS]Z)"
        ) from None
    if now is not None and until <= now:
        raise UsageError(f"--expires: {text} is past; the SPM would never apply the statement")
    return {**statement, "expires": text}


def expires_after(at: object, days: int = REQUEST_DAYS) -> str | None:
    """The date ``days`` after the audit timestamp ``at`` (``YYYY-MM-DD``): what every
    member gets from the same request, whenever they sign (None if ``at`` is none)."""
    try:
        start = datetime.fromisoformat(str(at))
    except ValueError:
        return None
    return (start + timedelta(days=days)).strftime("%Y-%m-%d")
