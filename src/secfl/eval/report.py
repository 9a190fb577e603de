"""The robustness report: CSV, JSON, Markdown tables and PNG plots from a grid's runs
(:func:`write_results`)."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from secfl._internal.files import atomic_write
from secfl.errors import FlError
from secfl.eval.grid import ATTACKS, DEFENCES, Evaluation, key

__all__ = [
    "CSV_COLUMNS",
    "csv_text",
    "markdown",
    "md_code",
    "md_text",
    "overview",
    "plots",
    "write_results",
]


def write_results(ev: Evaluation, out: Path, command: str) -> dict[str, Path]:
    """results.csv, results.json, report.md and plots in ``out``.

    The folder may hold what anyone put there: each file is written whole and then
    renamed into place (:func:`~secfl._internal.files.atomic_write`), so a symbolic
    link planted as ``report.md`` is replaced, never written through. A file that
    cannot be written (a full disk) is one line saying so (:class:`FlError`)."""
    try:
        return _write_results(ev, out, command)
    except OSError as exc:
        raise FlError(
            f"{out}: cannot write the report ({exc.strerror or exc}): free some space, "
            f"then write it with --report-only -o {shlex.quote(str(out))}"
        ) from None


def _write_results(ev: Evaluation, out: Path, command: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = ev.rows()
    _write(out / "results.csv", csv_text(rows))
    rounds = {key(r): r.get("rounds", []) for r in ev.records}
    doc = {"command": command, "seconds": round(ev.seconds, 1), "grid": vars(ev.grid),
           "runs": [{**r, "rounds": rounds.get(key(r), [])} for r in rows]}  # fmt: skip
    _write(out / "results.json", json.dumps(doc, indent=1, default=str))
    compute = sum(r["seconds"] for r in rows if isinstance(r.get("seconds"), int | float))
    total = ev.grid.cells()
    _write(out / "report.md", markdown(rows, command, compute, total))
    pngs = plots(rows, out)
    return {"csv": out / "results.csv", "json": out / "results.json",
            "report": out / "report.md", **pngs}  # fmt: skip


def _write(path: Path, data: str | bytes) -> None:
    """``data`` as the whole of ``path`` (see :func:`write_results`)."""
    atomic_write(path, data.encode() if isinstance(data, str) else data, fsync=False)


#: The columns of results.csv, in this order (those no row has are left out): a
#: run's row (:meth:`~secfl.eval.grid.Run.row`) and what :meth:`Evaluation.rows`
#: adds. Nothing else a runs file holds becomes a column.
CSV_COLUMNS = ("task", "partition", "malicious", "attack", "defence", "seed", "error",
               "accuracy", "backdoor_success", "tpr", "fpr_mean", "aggregate_s",
               "audit_ratio", "audit_round_ratio", "diverged_round", "seconds",
               "fallbacks", "gap_to_clean_fedavg")  # fmt: skip
#: What makes a spreadsheet read a cell as a formula (CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV of the known columns (:data:`CSV_COLUMNS`); a text cell a
    spreadsheet would take for a formula (an error message of ``=HYPERLINK(...)``)
    gets a leading ``'``, so it is shown as text."""
    columns: list[str] = []  # in the order the records give them, as before
    for r in rows:
        columns += [c for c in r if c in CSV_COLUMNS and c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_cell(v) for c, v in r.items() if c in columns})
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA) else value


_MD_ESCAPES = {"&": "&amp;", "<": "&lt;"} | {  # (a ">" inside a line starts nothing)
    c: "\\" + c for c in "\\`|*_[]#!~"
}  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def md_text(text: str) -> str:
    """``text`` from a folder (a run's error message) as plain Markdown text on one
    line: no HTML, link, emphasis, code or table cell of its own can begin in it
    (``< &`` as entities, Markdown's punctuation escaped, control characters and
    line breaks as spaces)."""
    return "".join(_MD_ESCAPES.get(c, c) for c in _CONTROL.sub(" ", text))


def md_code(text: str) -> str:
    """``text`` (a command line) as a code span, or as :func:`md_text` where it
    holds what a code span cannot (a backtick, a line break) or a renderer might
    still take for HTML."""
    if _CONTROL.search(text) or any(c in text for c in "`<>&"):
        return md_text(text)
    return f"`{text}`"


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["partition"], r["malicious"])].append(r)
    return groups


def markdown(
    rows: list[dict[str, Any]], command: str, seconds: float, total: int | None = None
) -> str:
    """Per (task, partition, malicious fraction): attack x defence tables of final test
    accuracy (mean ± std over seeds), then the backdoor and audit figures. ``total``
    is the grid's number of runs: a report of a grid still under way says so."""
    lines = ["# Robustness evaluation", "", f"Command: {md_code(command)}  ",
             f"Compute: {seconds:.0f} s (summed over runs)  "]  # fmt: skip
    if total is not None and len(rows) < total:
        lines.append(
            f"**Partial: {len(rows)} of the grid's {total} runs** (the rest: the same "
            "command with `--resume`); a cell's ± is over the seeds it has so far."
        )
    else:
        lines.append(f"Runs: {len(rows)}")
    lines += [""]
    defences = _ordered({r["defence"] for r in rows}, DEFENCES)
    lines += overview(rows, defences)
    for (task, part, frac), group in sorted(_groups(rows).items(), key=_setting_order):
        attacks = _ordered({r["attack"] for r in group}, ["none", *ATTACKS])
        lines += [f"## {task}, {part}, {frac:.0%} malicious", "",
                  "Final test accuracy (mean ± std over seeds):", "",
                  "| attack | " + " | ".join(defences) + " |",
                  "|---|" + "---|" * len(defences)]  # fmt: skip
        for attack in attacks:
            cells = []
            for d in defences:
                runs = [r for r in group if r["attack"] == attack and r["defence"] == d]
                accs = [r["accuracy"] for r in runs if "accuracy" in r]
                cells.append(_cell(accs) if accs else ("n/a" if runs else ""))
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        worst = _worst_case(group, defences)
        if worst:
            lines += ["", "Worst case over attacks: " + ", ".join(
                f"{d} {v:.3f}" for d, v in worst.items())]  # fmt: skip
        audit = [r for r in group if r["defence"].startswith("clone-audit") and r.get("tpr") != ""]
        if audit:
            lines += ["", "| clone audit | attack | seeds | TPR (final round) | "
                      "FPR (mean over rounds) | audit time / aggregation | "
                      "audit time / plain round |", "|---|---|---|---|---|---|---|"]  # fmt: skip
            by_cell: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
            for r in audit:
                by_cell[(r["defence"], r["attack"])].append(r)
            order = {a: i for i, a in enumerate(_ordered(set(attacks), ["none", *ATTACKS]))}
            for d, attack in sorted(by_cell, key=lambda c: (defences.index(c[0]), order[c[1]])):
                runs = by_cell[(d, attack)]
                lines.append(
                    f"| {d} | {attack} | {len(runs)} | {_avg(runs, 'tpr')} | "
                    f"{_avg(runs, 'fpr_mean')} | {_avg(runs, 'audit_ratio', 1, 'x')} | "
                    f"{_avg(runs, 'audit_round_ratio', 2, 'x')} |"
                )
        bd = defaultdict(list)
        for r in group:
            if r["attack"] == "backdoor" and isinstance(r.get("backdoor_success"), int | float):
                bd[r["defence"]].append(r)
        if bd:
            lines += ["", "Backdoor success rate (mean over seeds): " + ", ".join(
                f"{d} {_avg(bd[d], 'backdoor_success')}" for d in defences if d in bd)]  # fmt: skip
        errors = sorted({f"{r['defence']}: {md_text(r['error'])}" for r in group if r.get("error")})
        if errors:
            lines += ["", "Not applicable here: " + "; ".join(errors)]
        lines.append("")
    return "\n".join(lines) + "\n"


def _setting_order(item: tuple[tuple[Any, ...], Any]) -> tuple[Any, ...]:
    """Task, then IID before ever stronger label skew, then the malicious fraction."""
    task, part, frac = item[0]
    alpha = 0.0 if part == "iid" else -float(str(part).removeprefix("dirichlet-"))
    return (task, part != "iid", alpha, frac)


def overview(rows: list[dict[str, Any]], defences: list[str]) -> list[str]:
    """The whole grid in one table: per setting, each defence's worst-case accuracy over
    attacks (clean accuracy at 0%), the best in bold; then the audit's detection."""
    lines = ["## Overview", "",
             "Worst-case final test accuracy over attacks (mean over seeds; at 0%: clean):", "",
             "| task | partition | malicious | " + " | ".join(defences) + " |",
             "|---|---|---|" + "---|" * len(defences)]  # fmt: skip
    audits = [d for d in defences if d.startswith("clone-audit")]
    detection = ["", "The audit's detection, mean over attacks and seeds (TPR in the final "
                 "round; FPR over rounds; rounds its guard committed the best clone, of 10):",
                 "", "| task | partition | malicious | " + " | ".join(
                     f"{d} TPR / FPR / guard" for d in audits) + " |",
                 "|---|---|---|" + "---|" * len(audits)]  # fmt: skip
    for (task, part, frac), group in sorted(_groups(rows).items(), key=_setting_order):
        if frac == 0:
            values = {d: statistics.fmean(v) for d in defences
                      if (v := [r["accuracy"] for r in group
                                if r["defence"] == d and "accuracy" in r])}  # fmt: skip
        else:
            values = _worst_case(group, defences)
        best = max(values.values(), default=None)
        cells = [("**{:.3f}**" if a == best else "{:.3f}").format(a) if (a := values.get(d))
                 is not None else "n/a" for d in defences]  # fmt: skip
        lines.append(f"| {task} | {part} | {frac:.0%} | " + " | ".join(cells) + " |")
        if audits:
            found = []
            for d in audits:
                runs = [r for r in group if r["defence"] == d]
                found.append(f"{_avg(runs, 'tpr', 2)} / {_avg(runs, 'fpr_mean', 3)} / "
                             f"{_avg(runs, 'fallbacks', 1)}")  # fmt: skip
            detection.append(f"| {task} | {part} | {frac:.0%} | " + " | ".join(found) + " |")
    return [*lines, *(detection if audits else []), ""]


def _ordered(names: set[str], known: list[str]) -> list[str]:
    """``names`` in the evaluation's own order (runs finish in any order), others last."""
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def _avg(runs: list[dict[str, Any]], name: str, digits: int = 3, unit: str = "") -> str:
    values = [r[name] for r in runs if isinstance(r.get(name), int | float)]
    return _num(statistics.fmean(values), digits) + unit if values else "-"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _worst_case(group: list[dict[str, Any]], defences: list[str]) -> dict[str, float]:
    worst: dict[str, float] = {}
    for d in defences:
        by_attack: dict[str, list[float]] = defaultdict(list)
        for r in group:
            if r["defence"] == d and "accuracy" in r and r["attack"] != "none":
                by_attack[r["attack"]].append(r["accuracy"])
        if by_attack:
            worst[d] = min(statistics.fmean(v) for v in by_attack.values())
    return worst


def plots(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """One PNG per (task, partition): worst-case accuracy per defence against the
    malicious fraction."""
    from matplotlib.figure import Figure

    paths: dict[str, Path] = {}
    defences = _ordered({r["defence"] for r in rows}, DEFENCES)
    by_setting: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_setting[(r["task"], r["partition"])].append(r)
    for (task, part), group in sorted(by_setting.items()):
        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        fracs = sorted({r["malicious"] for r in group})
        for d in defences:
            xs, ys = [], []
            for frac in fracs:
                cell = [r for r in group if r["malicious"] == frac]
                worst = _worst_case(cell, [d]).get(d)
                if frac == 0:
                    accs = [r["accuracy"] for r in cell if r["defence"] == d and "accuracy" in r]
                    worst = statistics.fmean(accs) if accs else None
                if worst is not None:
                    xs.append(frac * 100)
                    ys.append(worst)
            if xs:
                ax.plot(xs, ys, marker="o", label=d)
        ax.set_xlabel("malicious participants (%)")
        ax.set_ylabel("final test accuracy, worst attack")
        ax.set_title(f"{task}, {part}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out / f"worst-case-{task}-{part}.png"
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
        _write(path, png.getvalue())
        paths[f"png:{task}:{part}"] = path
    return paths
