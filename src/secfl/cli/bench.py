"""``secfl bench rounds``: round time on your own hardware, and the overhead coefficients
of Casella et al. 2025 against a baseline file (see :mod:`secfl.eval.bench`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from secfl._internal import files
from secfl.cli._common import UsageError, err, is_stream, out, replaces_file, write_output

__all__ = ["app", "rounds_cmd"]

#: ``--out -``: standard output, as every other command's output option takes it.
STDOUT = "-"

app = typer.Typer(help="Benchmarks on your own hardware.", no_args_is_help=True)

ROUNDS_HELP = """Run a real federation on loopback and print its round time.

An aggregator and K collaborators (separate processes; secure: each under `secfl
run`, attested, mutual TLS, signed models, a sealed checkpoint and an SPM counter
increment per round; insecure: plaintext, no TEE, no SPM) train the digits data
with an MLP of about N float32 parameters, a little per round. Prints the time
per round over rounds 2..R (from round 1's commit to round R's), each round's own
time and the aggregator's per-phase timings, and writes a JSON result (--out) that
can be another run's --baseline.

With --baseline PATH it prints overhead coefficients in the form of Casella et al.
2025 (arXiv:2501.11558), O = C * T_baseline, so C = T / T_baseline - 1 with T the
median round time: C_TLS = T_secure / T_insecure - 1 (this run's two modes, else
this run's secure against the baseline's insecure run) and C_TEE = T_secure(this
run, in a TEE) / T_secure(baseline, a machine without one) - 1. Run it inside the
TEE (e.g. a TDX guest) with the baseline from an alike machine without one. The
paper's figures (100 rounds): C_TDX 0.126 (ResNet-18) and 0.245 (MobileNetV3-Small);
C_TLS 0.079 (ResNet-18) and 0.065 (MobileNetV3-Small).
"""


@app.command("rounds", help=ROUNDS_HELP)
def rounds_cmd(
    model_params: Annotated[
        int,
        typer.Option(
            "--model-params",
            min=100,
            max=2_000_000_000,
            metavar="N",
            help="Model size in float32 parameters (about).",
        ),
    ],
    clients: Annotated[
        int, typer.Option("--clients", min=1, max=64, metavar="K", help="Collaborators.")
    ],
    secure: Annotated[
        bool | None,
        typer.Option("--secure/--insecure", help="Only one mode (default: both, secure first)."),
    ] = None,
    rounds: Annotated[
        int, typer.Option(min=2, max=10_000, metavar="R", help="Rounds (round 1 left out).")
    ] = 5,
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Local epochs per round.")] = 1,
    samples: Annotated[
        int | None,
        typer.Option(
            min=20, max=1797, help="Digits rows to split (default: 60 per client, >= 200)."
        ),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(metavar="PATH", help="A result file to compare with.")
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="PATH",
            help="Write the result here (JSON); - writes it to standard output, and the "
            "figures to standard error.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
) -> None:
    from secfl.eval.bench import PAPER, Workload, check_same_workload, coefficients, load_result
    from secfl.eval.bench_run import BenchSettings, run_bench, task_source

    base = load_result(baseline) if baseline is not None else None  # refused before any run
    modes = ("secure", "insecure") if secure is None else ("secure",) if secure else ("insecure",)
    settings = BenchSettings(model_params=model_params, clients=clients, rounds=rounds,
                             epochs=epochs, samples=samples, modes=modes)  # fmt: skip
    if base is not None:  # refused before any run too
        exact, total = task_source(model_params)[1], settings.total_samples
        planned = Workload(model_params=exact, clients=clients, rounds=rounds, epochs=epochs,
                           samples=total)  # fmt: skip
        check_same_workload(planned, base.workload)
    to_stdout = out_file is not None and str(out_file) == STDOUT
    if out_file is not None and not to_stdout:  # before the run, which may take hours
        _check_out(out_file, baseline, force=force)
    result = run_bench(settings, say=lambda line: err.print(line, markup=False))
    # with --out -, standard output is the result document alone (a program reads it,
    # or it is saved as a baseline): the figures go to standard error
    report = err if to_stdout else out
    w, h = result.workload, result.host
    report.print(
        f"{w.model_params} parameters ({w.model_params * 4 / 2**20:.1f} MiB), {w.clients} "
        f"collaborators, {w.rounds} rounds, {w.epochs} local epoch(s), {w.samples} samples; "
        f"{h.cpus} CPUs, TEE: {h.tee}",
        markup=False,
    )
    for mode, run in result.runs.items():
        rounds_text = " ".join(f"{d:.3f}" for d in run.rounds_s)
        report.print(
            f"{mode:<8} {run.cycle_s:.3f} s per round (rounds 2..R, commit to commit); "
            f"duration_s median {run.median_s:.3f} s (all: {rounds_text}); "
            f"whole run {run.wall_s:.1f} s",
            markup=False,
        )
        if run.phases_ms:
            phases = ", ".join(f"{k} {v:.1f} ms" for k, v in run.phases_ms.items())
            report.print(f"{'':<8} phases (median): {phases}", markup=False)
        else:
            report.print(f"{'':<8} phases: none recorded by this aggregator", markup=False)
    found = coefficients(result, base)
    for c in found:
        report.print(
            f"{c.name} = {c.value:+.3f}  ({c.numerator} / {c.denominator} - 1)", markup=False
        )
    if base is not None:
        if not any(c.name == "C_TEE" for c in found):
            report.print("C_TEE: needs a secure run here and in the baseline", markup=False)
        elif h.tee == "none" or base.host.tee != "none":
            report.print(f"note: C_TEE compares a run in TEE '{h.tee}' with a baseline in TEE "
                         f"'{base.host.tee}'", markup=False)  # fmt: skip
        paper = "; ".join(f"{m}: C_TDX {t:.3f}, C_TLS {s:.3f}" for m, (t, s) in PAPER.items())
        report.print(f"Casella et al. 2025 (100 rounds): {paper}", markup=False)
    if to_stdout:
        write_output(result.to_json().encode(), STDOUT)
    elif out_file is not None:
        _write_result(out_file, result.to_json().encode(), force=force)
        out.print(f"result written to {out_file}", markup=False)


def _check_out(out_file: Path, baseline: Path | None, *, force: bool) -> None:
    """Refuse an --out that would lose a file (the baseline itself, or any file without
    --force) or cannot be written, before the run rather than after it."""
    if baseline is not None and replaces_file(str(out_file), str(baseline)):
        raise UsageError(f"--out {out_file}: is the --baseline file; write the result to another")
    if is_stream(str(out_file)):
        return  # a pipe or /dev/stdout: written to as it is
    if out_file.is_dir() or not out_file.parent.is_dir():
        raise UsageError(f"--out {out_file}: is a folder, or its folder does not exist")
    if os.path.lexists(out_file) and not force:
        raise UsageError(f"--out {out_file}: exists; use --force to replace it")


def _write_result(out_file: Path, data: bytes, *, force: bool) -> None:
    """The result file whole or not at all, a link at its name replaced (never written
    through); without --force, a file that appeared there during the run is kept."""
    try:
        if is_stream(str(out_file)):
            files.write_stream(out_file, data)
        else:
            files.atomic_write(out_file, data, replace=force)
    except FileExistsError:
        raise UsageError(
            f"--out {out_file}: a file appeared there during the run and is kept (the "
            "figures are printed above); use --force to replace it"
        ) from None
    except OSError as exc:
        raise UsageError(f"--out {out_file}: {exc.strerror or exc}") from None
