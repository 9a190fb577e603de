"""A federation's per-round metrics, read back and turned into a report.

The aggregator appends one JSON object per completed round to a metrics file (JSON
lines): ``round``, ``participants``, ``updates``, ``duration_s``, ``counter`` and,
when the task reports them, ``train_loss``, ``val_loss``, ``val_accuracy``,
``test_loss``, ``test_accuracy``. A round redone after a restart is appended again,
so :func:`read_metrics` keeps the last entry of each round.

:func:`write_report` writes what a person (``accuracy.png``) or a spreadsheet
(``metrics.csv``) reads, and a JSON document (``metrics.json``) for other tools. The
figure has one panel per metric the rounds carry (``val_accuracy`` and ``test_accuracy``
share the accuracy panel; a regression task's ``val_mse`` gets an mse panel), one colour
per data split in every panel, and the rounds where the audit excluded a participant
(the entry's ``excluded`` list) marked in red.
Everything is plain text or PNG: nothing is ever pickled.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secfl.errors import FlError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ACCURACY_KEYS",
    "EXCLUSION_COLOUR",
    "EXCLUSION_LABEL",
    "KNOWN_KEYS",
    "LOSS_KEYS",
    "MAX_PANELS",
    "SPLITS",
    "build_figure",
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


#: Each data split's colour, the same in every panel, and its legend label.
SPLITS = {"train": ("tab:green", "train"), "val": ("tab:blue", "validation"),
          "test": ("tab:orange", "test")}  # fmt: skip
#: Where the audit excluded a participant: a vertical line in every panel.
EXCLUSION_COLOUR = "tab:red"
EXCLUSION_LABEL = "audit excluded a participant"
#: Panels at most (one per metric); further metrics are in the CSV and JSON only.
MAX_PANELS = 4


def _metric_panels(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics to plot, one panel each: every ``SPLIT_METRIC`` key with a number,
    accuracy first, loss last, the others (a regression's ``mse``, ``r2``...) between.
    The sample count ``n`` is no curve; when there are more metrics than panels, the
    policy's objective (the entries' ``objective_metric``), accuracy and loss are kept."""
    metrics = {
        key.split("_", 1)[1]
        for entry in rounds
        for key, value in entry.items()
        if key.split("_", 1)[0] in SPLITS and "_" in key and _number(value) is not None
    } - {"n"}
    objective = {
        str(entry["objective_metric"]).split("_", 1)[-1]
        for entry in rounds
        if isinstance(entry.get("objective_metric"), str)
    }
    keep = sorted(metrics, key=lambda m: (m not in objective, m not in ("accuracy", "loss"), m))
    rank = {"accuracy": 0, "loss": 2}
    return sorted(keep[:MAX_PANELS], key=lambda m: (rank.get(m, 1), m))


def _excluded_rounds(rounds: Sequence[Mapping[str, Any]]) -> list[int]:
    """The rounds where the audit excluded at least one participant."""
    return [
        entry["round"]
        for entry in rounds
        if isinstance(entry.get("excluded"), list) and entry["excluded"]
    ]


def build_figure(rounds: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """The report's figure: one panel per metric over the rounds, one colour per split
    (train, validation, test) in every panel, a red vertical line at each round where
    the audit excluded a participant, and the legend below the panels."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ordered = sorted(rounds, key=lambda entry: entry["round"])
    metrics = _metric_panels(ordered)
    figure = Figure(figsize=(8, 2.2 + 2.3 * max(len(metrics), 1)), dpi=100, layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(max(len(metrics), 1), 1, sharex=True, squeeze=False)[:, 0]
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes, metrics, strict=False):
        ax.set_ylabel(metric.replace("_", " "))
        for split, (colour, label) in SPLITS.items():
            xs, ys = _series(ordered, f"{split}_{metric}")
            if xs:
                (line,) = ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=label)
                handles.setdefault(label, line)
    if not metrics:
        axes[0].text(0.5, 0.5, "no metrics reported", transform=axes[0].transAxes, ha="center")
    for ax in axes:
        for number in _excluded_rounds(ordered):
            marker = ax.axvline(
                number, color=EXCLUSION_COLOUR, linestyle=":", linewidth=1.5,
                label=EXCLUSION_LABEL,
            )  # fmt: skip
            handles.setdefault(EXCLUSION_LABEL, marker)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("round")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    order = [label for _, label in SPLITS.values()] + [EXCLUSION_LABEL]
    handles = {label: handles[label] for label in order if label in handles}
    if handles:
        figure.legend(
            list(handles.values()), list(handles), loc="outside lower center",
            ncols=len(handles), frameon=False,
        )  # fmt: skip
    return figure


def _plot(path: Path, rounds: Sequence[Mapping[str, Any]], title: str) -> None:
    build_figure(rounds, title).savefig(path, format="png")


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
