"""A federation's per-round metrics, read back and turned into a report.

The aggregator appends one JSON object per completed round to a metrics file (JSON
lines): ``round``, ``participants``, ``updates``, ``duration_s``, ``counter`` and,
when the task reports them, ``train_loss``, ``val_loss``, ``val_accuracy``,
``test_loss``, ``test_accuracy``. A round redone after a restart is appended again,
so :func:`read_metrics` keeps the last entry of each round.

:func:`write_report` writes what a person (``accuracy.png``) or a spreadsheet
(``metrics.csv``) reads, and a JSON document (``metrics.json``) for other tools.
Everything is plain text or PNG: nothing is ever pickled.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from secfl.errors import FlError

__all__ = [
    "ACCURACY_KEYS",
    "KNOWN_KEYS",
    "LOSS_KEYS",
    "read_metrics",
    "write_report",
]

#: The columns every round has, then the optional metrics, in report order.
KNOWN_KEYS = (
    "participants",
    "updates",
    "duration_s",
    "counter",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
)
ACCURACY_KEYS = ("val_accuracy", "test_accuracy")
LOSS_KEYS = ("train_loss", "val_loss")


def _round_of(entry: object) -> int | None:
    """The entry's integer round, or None if it is not a round object."""
    if not isinstance(entry, dict):
        return None
    number = entry.get("round")
    return number if type(number) is int else None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rounds of a JSON-lines metrics file, sorted by round; a round that appears
    twice keeps its later entry. :class:`FlError` naming the line if one is bad."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FlError(f"metrics: cannot read {path}: {exc.strerror}") from None
    rounds: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            raise FlError(f"metrics: line {number} is not JSON") from None
        key = _round_of(entry)
        if key is None:
            raise FlError(f"metrics: line {number} is not a round (no integer 'round')")
        rounds[key] = entry
    return [rounds[key] for key in sorted(rounds)]


def _columns(rounds: Iterable[Mapping[str, Any]]) -> list[str]:
    """'round', the known keys present, then any other keys sorted."""
    present = {key for entry in rounds for key in entry}
    known = [key for key in KNOWN_KEYS if key in present]
    others = sorted(present - {"round", *KNOWN_KEYS})
    return ["round", *known, *others]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)  # a CSV cell for people, not hashed
    return str(value)


def _number(value: Any) -> float | None:
    """A finite plottable number, or None (missing, null, NaN, not a number)."""
    if type(value) not in (int, float) or not math.isfinite(value):
        return None
    return float(value)


def _series(rounds: list[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["round"], _number(entry.get(key))) for entry in rounds]
    kept = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _plot(path: Path, rounds: Sequence[Mapping[str, Any]], title: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ordered = sorted(rounds, key=lambda entry: entry["round"])
    figure = Figure(figsize=(8, 4.5), dpi=100)
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines = []
    for key in ACCURACY_KEYS:
        xs, ys = _series(ordered, key)
        if xs:
            lines += ax.plot(xs, ys, marker="o", label=key)
    if not lines:
        ax.text(0.5, 0.5, "no accuracy reported", transform=ax.transAxes, ha="center")
    losses = [(key, *_series(ordered, key)) for key in LOSS_KEYS]
    if any(xs for _, xs, _ in losses):
        loss_ax = ax.twinx()
        loss_ax.set_ylabel("loss")
        for key, xs, ys in losses:
            if xs:
                lines += loss_ax.plot(xs, ys, linestyle="--", marker=".", label=key)
    if lines:
        ax.legend(handles=lines, loc="best")  # each line's label
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")


def write_report(
    directory: str | Path,
    rounds: list[dict[str, Any]],
    *,
    title: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.csv``, ``metrics.json`` and ``accuracy.png`` into ``directory``
    (created if needed); return their paths under the keys "csv", "json", "png"."""
    for index, entry in enumerate(rounds):
        if _round_of(entry) is None:
            raise FlError(f"report: entry {index} of rounds has no integer 'round'")
    extra = dict(extra or {})
    clash = sorted({"title", "rounds"} & extra.keys())
    if clash:
        raise FlError(f"report: extra may not set {', '.join(clash)}")
    try:
        document = json.dumps({"title": title, "rounds": rounds, **extra}, indent=2)
    except (TypeError, ValueError) as exc:
        raise FlError(f"report: the rounds or extra are not JSON: {exc}") from None

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "metrics.csv", "json": out / "metrics.json", "png": out / "accuracy.png"}
    columns = _columns(rounds)
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for entry in rounds:
            writer.writerow([_cell(entry.get(key)) for key in columns])
    paths["json"].write_text(document + "\n", encoding="utf-8")
    _plot(paths["png"], rounds, title)
    return paths
