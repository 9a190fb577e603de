"""``secfl audit``: read and check the SPM's hash-chained audit log."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from secfl._internal.canonical import canonical_json
from secfl._internal.values import shown
from secfl.cli._common import out
from secfl.errors import UsageError

if TYPE_CHECKING:
    from secfl.spm._audit import AuditEntry
    from secfl.spm._audit_read import AuditSource

__all__ = [
    "app",
    "audit_source",
    "entry_filter",
    "printable",
    "seen_head",
    "show_cmd",
    "verify_cmd",
]

app = typer.Typer(help="The SPM's audit log: show it, verify it.", no_args_is_help=True)

SpmUrl = Annotated[str | None, typer.Option("--spm", help="SPM URL (with --spm-pin).")]
SpmPin = Annotated[str | None, typer.Option(help="SHA-256 of the SPM's TLS key.")]
Db = Annotated[str | None, typer.Option(help="Database URL of the SPM.")]
Data = Annotated[
    str | None, typer.Option(metavar="DIR", help="The SPM's data folder (master key).")
]

#: Seconds between two polls of --follow: at least this, at most a minute.
MIN_INTERVAL, MAX_INTERVAL = 0.2, 60.0
#: The widest detail shown in a table cell (the JSON form has it whole).
DETAIL_WIDTH = 400


@app.command("verify")
def verify_cmd(
    spm: SpmUrl = None,
    spm_pin: SpmPin = None,
    db: Db = None,
    data: Data = None,
    seen: Annotated[
        str | None,
        typer.Option(
            "--seen",
            metavar="SEQ:HASH",
            help="A head an earlier `audit verify` printed: the log must still hold that "
            "entry (else the SPM's database and data folder were rolled back together).",
        ),
    ] = None,
) -> None:
    """Detect any modified, removed or reordered audit entry (and, with --seen, a
    rollback of the whole SPM to an older copy)."""
    from secfl.spm._audit_verify import check_database, check_remote

    known = seen_head(seen) if seen is not None else None
    if spm:
        if not spm_pin:
            raise UsageError("--spm needs --spm-pin (from `secfl spm verify`)")
        count, head = check_remote(spm, spm_pin, seen=known)
    elif data or db:
        count, head = check_database(data, db, seen=known)
    else:
        raise UsageError("give --spm URL --spm-pin PIN, or --data DIR and/or --db URL")
    # the head in full: what the next run takes as --seen to detect a rollback
    out.print(f"audit verify: OK, {count} entries, head {head[0]}:{head[1]}", markup=False)
    if spm is None and data is None:
        typer.echo(
            "note: without the SPM's data folder the head is not authenticated; "
            "removal of the newest entries together with the head row would go unseen",
            err=True,
        )


@app.command("show")
def show_cmd(
    spm: SpmUrl = None,
    spm_pin: SpmPin = None,
    data: Data = None,
    db: Db = None,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            metavar="KIND",
            help="Only these events: a name (attestation.refused) or a prefix (fl, "
            "fl.audit); repeatable.",
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", metavar="NAME", help="Only this policy's entries.")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", help="The newest N matching entries (0: all).")
    ] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, the whole entry.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then show new entries as they come (Ctrl-C).")
    ] = False,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="How often --follow asks for new entries.")
    ] = 2.0,
) -> None:
    """Show the audit log as a table (or JSON lines), newest last.

    Read from the SPM (--spm URL --spm-pin PIN: its head signed by the pinned key) or
    from its database (--data DIR, and --db URL for PostgreSQL: the head's MAC checked
    with the master key, the anchor against a rollback). Every entry is verified
    against the chain from the authenticated head before it is shown."""
    if limit < 0 or limit > 10**9:
        raise UsageError("--limit: give 0 (all) or a positive number of entries")
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise UsageError(f"--interval: between {MIN_INTERVAL} and {MAX_INTERVAL:.0f} seconds")
    match = entry_filter(event or [], policy)
    from secfl.spm._audit_read import PAGE, newest

    with ExitStack() as stack:
        source = audit_source(stack, spm, spm_pin, data, db)
        if 0 < limit <= PAGE:
            entries, head = newest(source, limit, match)
            printer = _Printer(as_json, head[0])
            printer.show(entries)
            shown = bool(entries)
        else:  # all, or more than a page: read twice, held a window at a time
            head, shown, printer = _stream(source, limit or None, match, as_json)
        if (
            not (shown or follow)
            and policy is not None
            and not newest(source, 1, entry_filter([], policy))[0]
        ):
            # a mistyped name matched nothing either, but said only "no matching entries"
            raise UsageError(
                f"--policy: the audit log has no entry of a policy named '{printable(policy, 64)}' "
                f"(head {head[0]}): check the name (the `name:` in its policy.yaml)"
            )
        if not follow:
            if not shown and not as_json:
                out.print(f"no matching entries (head {head[0]})", markup=False)
            return
        try:
            while True:
                time.sleep(interval)
                entries, head = newest(source, None, match, after=head)
                printer.show(entries)
        except KeyboardInterrupt:
            return


def _stream(
    source: AuditSource,
    limit: int | None,
    match: Callable[[AuditEntry], bool],
    as_json: bool,
) -> tuple[tuple[int, str], bool, _Printer]:
    """Print the newest ``limit`` matching entries (all, with None) oldest first, a window
    at a time (:mod:`secfl.spm._audit_stream`): as one table of them all would be, its
    detail column as wide as their widest. The head, whether any was shown, the printer."""
    from secfl.spm._audit_stream import matching_windows, oldest_first

    head = source.head()
    widest = _Widest()
    windows = matching_windows(
        source, head, limit, match, seen=(lambda entry: None) if as_json else widest.add
    )
    printer = _Printer(as_json, head[0], widest.measurement)
    for entries in oldest_first(source, windows, match):
        printer.show(entries)
    return head, bool(windows), printer


def seen_head(value: str) -> tuple[int, str]:
    """``--seen SEQ:HASH`` as (seq, hash), or a usage error naming it."""
    seq, _, digest = value.strip().partition(":")
    digest = digest.lower()
    if not (
        seq.isascii() and seq.isdigit() and 0 < len(seq) <= 18
        and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    ):  # fmt: skip
        raise UsageError(
            f"--seen: '{printable(value, 90)}' is not SEQ:HASH (an entry number and its 64 "
            "hex digits, as `secfl audit verify` prints the head)"
        )
    if int(seq) == 0 and digest != "0" * 64:
        # entry 0 is no entry: the empty log's head, whose hash is the genesis (64
        # zeros); any other hash was taken without a check (found by a review)
        raise UsageError(
            f"--seen: entry 0 is the empty log's head, 0:{'0' * 64}, not "
            f"'{printable(value, 90)}': give the head `secfl audit verify` printed"
        )
    return int(seq), digest


def audit_source(
    stack: ExitStack, spm: str | None, spm_pin: str | None, data: str | None, db: str | None
) -> AuditSource:
    """Where the log is read from, per the options (closed with ``stack``)."""
    from secfl.spm._audit_read import DatabaseSource, RemoteSource
    from secfl.spm.client import SpmClient

    if spm and (data or db):
        raise UsageError("give either --spm URL --spm-pin PIN or --data DIR [--db URL], not both")
    if spm:
        if not spm_pin:
            raise UsageError("--spm needs --spm-pin (from `secfl spm verify`)")
        client = stack.enter_context(SpmClient(spm, pin=spm_pin))
        return RemoteSource(client)
    if db and not data:
        raise UsageError(
            "--db needs --data DIR: without the SPM's master key the entries cannot be "
            "authenticated (or read through the SPM: --spm URL --spm-pin PIN)"
        )
    if not data:
        raise UsageError("give --spm URL --spm-pin PIN, or the SPM's --data DIR [--db URL]")
    source = DatabaseSource(data, db)
    stack.callback(source.close)
    return source


def entry_filter(events: list[str], policy: str | None) -> Callable[[AuditEntry], bool]:
    """Entries of ``policy`` (any when None) whose event is one of ``events`` or under
    one of them (``fl`` takes ``fl.round`` and ``fl.audit.excluded``); any when empty."""
    kinds = [e.strip().rstrip(".") for e in events]
    if any(not k or len(k) > 64 or not k.replace(".", "").replace("-", "").isalnum()
           for k in kinds):  # fmt: skip
        raise UsageError("--event: an event name such as attestation.refused, or a prefix: fl")

    def match(entry: AuditEntry) -> bool:
        if policy is not None and entry.policy != policy:
            return False
        return not kinds or any(entry.event == k or entry.event.startswith(k + ".") for k in kinds)

    return match


class _Printer:
    """Entries as a table whose columns keep their widths batch after batch, or as
    JSON lines; flushed at once (``--follow`` output goes to pipes too)."""

    def __init__(self, as_json: bool, head: int, detail: Measurement | None = None) -> None:
        self.as_json = as_json
        self.seq_width = max(3, len(str(head)) + 2)
        self.header = True
        #: The detail column's measure over every entry to be shown (None: this batch's).
        self.detail = detail

    def show(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        if self.as_json:
            for entry in entries:
                sys.stdout.write(json.dumps(entry.to_dict(), sort_keys=True) + "\n")
            sys.stdout.flush()
            return
        table = Table(box=None, show_header=self.header, header_style="bold", pad_edge=False)
        table.add_column("SEQ", justify="right", width=self.seq_width, no_wrap=True)
        table.add_column("TIME (UTC)", width=19, no_wrap=True)
        table.add_column("EVENT", width=30, no_wrap=True, overflow="ellipsis")
        table.add_column("POLICY", width=16, no_wrap=True, overflow="ellipsis")
        table.add_column("DETAIL", overflow="fold")
        for i, entry in enumerate(entries):
            detail: RenderableType = Text(_detail(entry.detail))
            if i == 0 and self.detail is not None:
                detail = _Measured(detail, self.detail)
            table.add_row(
                str(entry.seq),
                printable(entry.at.replace("T", " ")[:19]),
                Text(printable(entry.event)),
                Text(printable(entry.policy or "-")),
                detail,
            )
        out.print(table)
        out.file.flush()
        self.header = False


class _Widest:
    """The measure of the detail column of a table of all the entries :meth:`add` saw,
    its header included (what rich sizes the column by)."""

    def __init__(self) -> None:
        self.measurement = Measurement.get(out, out.options, Text("DETAIL"))

    def add(self, entry: AuditEntry) -> None:
        this = Measurement.get(out, out.options, Text(_detail(entry.detail)))
        self.measurement = Measurement(
            max(self.measurement.minimum, this.minimum),
            max(self.measurement.maximum, this.maximum),
        )


class _Measured:
    """``renderable`` measured as at least ``floor``: one such cell sizes its column in
    every batch as in one table of all the entries."""

    def __init__(self, renderable: RenderableType, floor: Measurement) -> None:
        self.renderable, self.floor = renderable, floor

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        own = Measurement.get(console, options, self.renderable)
        return Measurement(
            max(own.minimum, self.floor.minimum), max(own.maximum, self.floor.maximum)
        )

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.renderable


def _detail(detail: dict[str, Any]) -> str:
    """``key=value`` pairs, values as compact JSON, bounded and safe for a terminal."""
    parts = []
    for key in sorted(detail):
        value = detail[key]
        text = value if isinstance(value, str) else canonical_json(value).decode()
        parts.append(f"{key}={text}")
    line = printable(" ".join(parts), DETAIL_WIDTH + 1)
    return line if len(line) <= DETAIL_WIDTH else line[: DETAIL_WIDTH - 1] + "…"


def printable(value: object, limit: int = 1024) -> str:
    """A value from the SPM or its database, safe for a terminal: bounded, and every
    control or invisible character escaped by the rule every refusal follows
    (:func:`~secfl._internal.values.shown`), so ``site-1\\u2800`` never looks like
    ``site-1``."""
    return shown(str(value)[:limit])
