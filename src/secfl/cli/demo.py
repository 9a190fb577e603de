"""``secfl demo``: a whole confidential federation on this machine, with its defences."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from secfl._internal import files
from secfl.cli._common import keep_folder, out
from secfl.errors import DemoError, UsageError
from secfl.launcher._private import owned_prefix, wipe_stale

__all__ = [
    "demo",
]


def demo(
    task: Annotated[
        str, typer.Option(help="digits | breast-cancer | fashion-mnist | diabetes (regression)")
    ] = "digits",
    clients: Annotated[int, typer.Option(help="Honest collaborators (one site each).")] = 4,
    rounds: Annotated[int, typer.Option(help="Training rounds.")] = 10,
    samples: Annotated[
        int | None, typer.Option(help="Use a random subset of this many samples.")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 2,
    report: Annotated[str, typer.Option(help="Folder for the report.")] = "secfl-demo-report",
    defence: Annotated[
        str, typer.Option(help="Aggregation rule: fedavg, median, trimmed-mean, clone-audit...")
    ] = "fedavg",
    poisoned: Annotated[
        int,
        typer.Option(
            help="Add this many sites whose data is poisoned (labels flipped; genuine code, "
            "so attestation admits them); fewer than --clients."
        ),
    ] = 0,
    keep: Annotated[
        str | None,
        typer.Option(
            help="Keep the work folder here, a new or empty one (default: a temporary one)."
        ),
    ] = None,
) -> None:
    """Train a model with an SPM, a 2-of-3 board, shielded code and data, an attested
    aggregator and collaborators as separate processes; refuse a tampered site."""
    from secfl.demo.federation import DemoSettings, Federation

    if clients < 1 or rounds < 1 or epochs < 1:
        raise UsageError("--clients, --rounds and --epochs must be at least 1")
    if not 0 <= poisoned < clients:
        raise UsageError(
            f"--poisoned: {poisoned} is not from 0 to {clients - 1}: the poisoned sites are "
            "added to the --clients honest ones and must be fewer; lower it or raise --clients"
        )
    from secfl.fl.strategies import get_strategy
    from secfl.tasks import get_task

    get_strategy(defence)  # an unknown rule or task fails here, before any process starts
    get_task(task)
    _check_report(report, keep)
    if task == "fashion-mnist" and samples is None:
        samples = 12000  # the full 70k on 2 cores takes long; --samples 70000 for all of it
    settings = DemoSettings(task=task, clients=clients, rounds=rounds, samples=samples,
                            epochs=epochs, defence=defence, poisoned=poisoned)  # fmt: skip
    # Absolute at once: the demo's processes run inside this folder.
    # In RAM where there is /dev/shm: the folder holds every party's data in the clear
    # (staged before it is shielded), and a SIGKILLed demo cannot remove it; the next
    # demo does (its name says whose it is).
    wipe_stale(DEMO_PREFIX)
    work = (
        keep_folder(keep)
        if keep
        else Path(tempfile.mkdtemp(prefix=owned_prefix(DEMO_PREFIX), dir=files.ram_base()))
    )
    fed = Federation(work, settings)
    began = time.monotonic()
    try:
        _setup(fed)
        tampered = _train(fed, rounds)
        _conclude(fed, tampered, Path(report), time.monotonic() - began)
    finally:
        fed.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


#: What the report holds; a folder holding both is an earlier report, replaced.
_REPORT_MARKS = ("metrics.json", "audit.jsonl")


def _check_report(report: str, keep: str | None) -> None:
    """Refuse, before the demo starts, a ``--report`` folder whose files the report
    would write over or through: one holding files of its own (``--report .`` replaced
    the user's ``policy.yaml`` and ``logs/``), or one another user may write in, who
    could plant a link there as ``model.safetensors`` to a file of this user's (found by
    a review). A new folder, an empty one, or an earlier report of this user's is fine;
    not the ``--keep`` folder, whose ``policy.yaml`` the report copies (a traceback at
    the demo's end)."""
    if not report:  # (the current folder, which os.stat("") does not find)
        raise UsageError("--report: the path is empty; name a new folder")
    if keep is not None and os.path.realpath(report) == os.path.realpath(keep):
        raise UsageError(
            "--report: it is the --keep folder, whose policy.yaml and logs/ the report "
            "copies: name another folder"
        )
    try:
        st = os.stat(report)
        names = set(os.listdir(report)) if stat.S_ISDIR(st.st_mode) else set()
    except (FileNotFoundError, NotADirectoryError):
        return  # made at the end (or refused in one line then)
    except OSError as exc:
        raise UsageError(f"--report: cannot use '{report}': {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--report: '{report}' is not a folder; name a new folder")
    # (group-writable is left alone: under umask 002 each user's group is their own)
    if st.st_uid != os.geteuid() or st.st_mode & 0o002:
        raise UsageError(
            f"--report: others may write in '{report}' (it is another user's, or world "
            "writable): name a folder of your own"
        )
    if names and not all(mark in names for mark in _REPORT_MARKS):
        raise UsageError(
            f"--report: '{report}' holds files of its own, not an earlier demo's report; "
            "name a new or empty folder"
        )


#: The demo's temporary folder's name begins so (then its owner: :func:`owned_prefix`).
DEMO_PREFIX = "secfl-demo-"


def _step(text: str) -> None:
    out.print(f"[bold cyan]>[/] {text}")


def _setup(fed: Any) -> None:
    s = fed.settings
    _step("simulated TEE root; the SPM starts in it and seals its TLS key")
    fed.start_spm()
    _step(f"{s.task}: split into {len(fed.sites)} sites + validation + test; the task code "
          "and each party's data shielded with the party's own key")  # fmt: skip
    fed.prepare_data()
    _step("board alice/bob/carol: a 2-of-3 policy, signed by alice and bob, submitted")
    fed.submit_policy()
    _step("aggregator: `secfl run` attests it, opens its volumes, injects its keys")
    fed.start_aggregator()
    poisoned = f" (+{s.poisoned} with poisoned data)" if s.poisoned else ""
    _step(f"{s.clients} collaborators{poisoned} attested and joining; a site with modified "
          "task code too")  # fmt: skip
    fed.start_collaborators()


def _train(fed: Any, rounds: int) -> Any:
    tampered = fed.start_tampered()
    columns = (
        TextColumn("[bold]round {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        bar = progress.add_task("waiting for collaborators", total=rounds)
        while not fed.finished():
            failed = fed.failed()
            if failed is not None:
                raise DemoError(f"demo: {failed.name} failed: {failed.tail()}")
            history = fed.rounds()
            if history:
                last = history[-1]
                score = _score(history)
                progress.update(
                    bar,
                    completed=last["round"],
                    description=f"{last['updates']} updates · train loss "
                    f"{last.get('train_loss', float('nan')):.3f} · val {score} "
                    f"{last.get(f'val_{score}', float('nan')):.3f}",
                )
            time.sleep(0.25)
        progress.update(bar, completed=rounds)
    tampered.proc.wait(timeout=60)
    return tampered


def _conclude(fed: Any, tampered: Any, report: Path, seconds: float) -> None:
    from secfl.demo.report import write_report

    history = fed.rounds()
    score = _score(history)
    table = Table(title="rounds")
    for column in ("round", "updates", "train loss", f"val {score}", f"test {score}", "s"):
        table.add_column(column, justify="right")
    table.add_column("left out by the audit")
    for e in history:
        table.add_row(str(e["round"]), str(e["updates"]), _f(e.get("train_loss")),
                      _f(e.get(f"val_{score}")), _f(e.get(f"test_{score}")),
                      f"{e['duration_s']:.1f}", ", ".join(e.get("excluded", [])))  # fmt: skip
    out.print(table)
    if fed.poisoned:
        out.print(f"sites with poisoned data (attested: their code is genuine): "
                  f"{', '.join(fed.poisoned)}")  # fmt: skip

    entries = fed.audit()
    decisions = [e for e in entries if e["event"].startswith("attestation.")]
    dt = Table(title="attestation decisions (from the SPM's audit log)")
    for column in ("service", "decision", "measurement", "detail"):
        dt.add_column(column, overflow="fold")
    for e in decisions:
        d = e["detail"]
        ok = e["event"] == "attestation.accepted"
        dt.add_row(str(d.get("service", "")), "[green]accepted[/]" if ok else "[red]refused[/]",
                   str(d.get("measurement", ""))[:16] + "…",
                   "" if ok else str(d.get("reason", "")))  # fmt: skip
    out.print(dt)
    count, head = fed.verify_audit()
    out.print(f"[green]audit verify: OK[/], {count} entries, head {head}")

    refused = tampered.proc.returncode != 0 and any(
        e["event"] == "attestation.refused" for e in decisions
    )
    report.mkdir(parents=True, exist_ok=True)
    final = history[-1] if history else {}
    paths = write_report(report, history, title=f"secfl demo: {fed.settings.task}", extra={
        "settings": vars(fed.settings), "seconds": round(seconds, 1),
        "tampered_site_refused": refused, "audit_entries": count,
    })  # fmt: skip
    with open(report / "audit.jsonl", "w", encoding="utf-8") as fh:
        for e in entries:
            fh.write(json.dumps(e, sort_keys=True) + "\n")
    (report / "model.safetensors").write_bytes(fed.final_model())
    shutil.copy(fed.work / "policy.yaml", report / "policy.yaml")
    shutil.copytree(fed.logs, report / "logs", dirs_exist_ok=True)
    out.print(f"report: {paths['csv'].parent} (metrics.csv, metrics.json, accuracy.png, "
              "audit.jsonl, policy.yaml, model.safetensors, logs/)")  # fmt: skip
    if not refused:
        out.print("[bold red]the tampered site was NOT refused[/]")
        raise typer.Exit(1)
    out.print(f"[green]the site with modified task code was refused by attestation[/]: "
              f"{tampered.tail()}")  # fmt: skip
    out.print(f"[bold green]done in {seconds:.0f} s[/]: test {score} "
              f"{_f(final.get(f'test_{score}'))} after {final.get('round', 0)} rounds")  # fmt: skip


def _score(history: list[dict[str, Any]]) -> str:
    """The metric the demo shows: a classifier's accuracy; a regression's root mean
    squared error (in the target's units), else its loss."""
    for metric in ("accuracy", "rmse"):
        if any(f"val_{metric}" in e or f"test_{metric}" in e for e in history):
            return metric
    return "loss"


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
