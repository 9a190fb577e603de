"""`secfl bench rounds`: a tiny real run writes a valid result file; the coefficients
of two result files are C = T / T_baseline - 1 (hand-computed here); a malformed
baseline is refused in one line, before anything runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import UsageError
from secfl.eval.bench import coefficients, load_result, phase_medians
from secfl.eval.bench_run import task_source
from tests.clirun import check_parses, one_error, secfl, secfl_all, shell_commands

pytestmark = pytest.mark.timeout(120)


def result(tee: str = "none", **medians: float) -> dict[str, Any]:
    """A result document with the given modes' medians."""
    return {
        "format": "secfl-bench-rounds/1",
        "secfl": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "host": {"machine": "x86_64", "python": "3.11.7", "cpus": 2, "tee": tee},
        "workload": {"model_params": 5035, "clients": 2, "rounds": 3, "epochs": 1, "samples": 200},
        "runs": {
            mode: {
                "rounds_s": [2.0, m, m],
                "median_s": m,
                "cycle_s": m,
                "phases_ms": {},
                "wall_s": 9.0,
            }
            for mode, m in medians.items()
        },
    }


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_a_tiny_run_writes_a_result_that_can_be_a_baseline(tmp_path: Path) -> None:
    out = tmp_path / "plain.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out.symlink_to(victim)  # a link at --out is replaced (--force), never written through
    done = secfl("bench", "rounds", "--model-params", "2000", "--clients", "2", "--rounds", "2",
                 "--insecure", "--out", str(out), "--force", timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "mine" and not out.is_symlink()
    assert "s per round (rounds 2..R, commit to commit)" in done.stdout
    res = load_result(out)
    assert set(res.runs) == {"insecure"}
    assert res.workload.clients == 2 and res.workload.rounds == 2
    assert res.workload.model_params == task_source(2000)[1] == 75 * 27 + 10
    assert len(res.runs["insecure"].rounds_s) == 2
    run = res.runs["insecure"]
    assert run.median_s == pytest.approx(run.rounds_s[1])
    assert 0 < run.cycle_s < run.wall_s
    # the file reads back as what it was written from
    assert json.loads(res.to_json()) == json.loads(out.read_text())


def test_out_dash_is_standard_output_and_no_file(tmp_path: Path) -> None:
    """`--out -` wrote the result to a file named '-' in the working folder, where every
    other command's output option takes '-' for standard output. Now standard output is
    the result document alone (it can be saved as a baseline), the figures go to standard
    error, and no file is made."""
    done = secfl("bench", "rounds", "--model-params", "2000", "--clients", "2", "--rounds", "2",
                 "--insecure", "--out", "-", timeout=90, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []
    assert "s per round (rounds 2..R, commit to commit)" in done.stderr
    saved = write(tmp_path / "saved.json", json.loads(done.stdout))
    res = load_result(saved)
    assert set(res.runs) == {"insecure"} and res.workload.rounds == 2


def test_coefficients_from_two_result_files(tmp_path: Path) -> None:
    # on a TDX guest: secure 0.50 s, insecure 0.40 s; on a machine without a TEE:
    # secure 0.40 s, insecure 0.32 s
    tee = load_result(write(tmp_path / "tee.json", result("tdx", secure=0.5, insecure=0.4)))
    base = load_result(write(tmp_path / "base.json", result("none", secure=0.4, insecure=0.32)))
    got = {c.name: c.value for c in coefficients(tee, base)}
    assert got["C_TLS"] == pytest.approx(0.5 / 0.4 - 1)  # 0.25, this run's two modes
    assert got["C_TEE"] == pytest.approx(0.5 / 0.4 - 1)  # 0.25, secure against secure
    # a secure-only run against an --insecure baseline (same machine): C_TLS only
    only = load_result(write(tmp_path / "s.json", result("none", secure=0.27)))
    plain = load_result(write(tmp_path / "i.json", result("none", insecure=0.25)))
    got = {c.name: c.value for c in coefficients(only, plain)}
    assert got == {"C_TLS": pytest.approx(0.27 / 0.25 - 1)}  # 0.08
    # no baseline: only what this run has
    assert [c.name for c in coefficients(only, None)] == []


def test_a_baseline_of_another_workload_is_refused(tmp_path: Path) -> None:
    other = result(secure=0.4)
    other["workload"]["model_params"] = 10_000_010
    base = load_result(write(tmp_path / "b.json", other))
    run = load_result(write(tmp_path / "r.json", result(secure=0.5)))
    with pytest.raises(UsageError, match=r"workload\.model_params"):
        coefficients(run, base)
    # the CLI refuses it before running anything
    done = secfl("bench", "rounds", "--model-params", "5000", "--clients", "2",
                 "--baseline", str(tmp_path / "b.json"))  # fmt: skip
    assert "field 'workload.model_params' is 10000010, this run's is 5035" in one_error(done)


def test_out_replaces_no_file_without_force_and_never_the_baseline(tmp_path: Path) -> None:
    """`--baseline b.json --out b.json` destroyed the baseline, and any --out was
    overwritten; both are refused before the run."""
    base = write(tmp_path / "b.json", result(secure=0.4)).read_text()
    (tmp_path / "mine.json").write_text("mine")
    same = ["bench", "rounds", "--model-params", "5000", "--clients", "2", "--rounds", "3",
            "--baseline", str(tmp_path / "b.json"), "--out", str(tmp_path / "b.json")]  # fmt: skip
    runs = secfl_all(
        [*same, "--force"], same,
        ["bench", "rounds", "--model-params", "1000", "--clients", "2",
         "--out", str(tmp_path / "mine.json")],
    )  # fmt: skip
    for done in runs[:2]:
        assert one_error(done).endswith(
            "b.json: is the --baseline file; write the result to another"
        )
    assert one_error(runs[2]).endswith("mine.json: exists; use --force to replace it")
    assert (tmp_path / "b.json").read_text() == base
    assert (tmp_path / "mine.json").read_text() == "mine"


def bad_documents() -> list[tuple[str, Any, str]]:
    good = result(secure=0.4)
    cases: list[tuple[str, Any, str]] = []

    def change(label: str, edit: Any, expect: str) -> None:
        doc = copy.deepcopy(good)
        edit(doc)
        cases.append((label, doc, expect))

    change("median as text", lambda d: d["runs"]["secure"].update(median_s="0.4"), "median_s")
    change("zero median", lambda d: d["runs"]["secure"].update(median_s=0.0), "median_s")
    change("negative round", lambda d: d["runs"]["secure"].update(rounds_s=[1.0, -1.0]), "rounds_s")
    change("unknown mode", lambda d: d["runs"].update(fast=d["runs"]["secure"]), "runs")
    change("no runs", lambda d: d.update(runs={}), "runs")
    change("extra field", lambda d: d.update(note="x"), "note")
    change("huge clients", lambda d: d["workload"].update(clients=10**9), "workload.clients")
    change("tee", lambda d: d["host"].update(tee="quantum"), "host.tee")
    cases.append(("other format", {**good, "format": "x"}, "format"))
    cases.append(("a list", [1, 2], "format"))
    return cases


@pytest.mark.parametrize(("label", "doc", "field"), bad_documents(), ids=lambda x: str(x)[:20])
def test_a_malformed_baseline_is_refused_naming_the_field(
    tmp_path: Path, label: str, doc: Any, field: str
) -> None:
    with pytest.raises(UsageError, match=field) as caught:
        load_result(write(tmp_path / "bad.json", doc))
    assert "\n" not in str(caught.value), label


def test_the_cli_refuses_a_malformed_baseline_in_one_line(tmp_path: Path) -> None:
    doc = result(secure=0.4)
    doc["runs"]["secure"]["rounds_s"] = "fast"
    cases = [(b"{not json", "not JSON"), (b"\0" * (2 << 20), "larger than"),
             (json.dumps(doc).encode(), "field 'runs.secure.rounds_s'")]  # fmt: skip
    for i, (content, _) in enumerate(cases):
        (tmp_path / f"bad-{i}.json").write_bytes(content)
    runs = secfl_all(*(  # independent: two at a time
        ["bench", "rounds", "--model-params", "1000", "--clients", "2",
         "--baseline", str(tmp_path / f"bad-{i}.json")] for i in range(len(cases))
    ))  # fmt: skip
    for (_, field), done in zip(cases, runs, strict=True):
        assert field in one_error(done)


def test_phases_are_read_defensively() -> None:
    entries = [
        {"round": 1, "duration_s": 2.0, "phases_ms": {"train": 900.0}},
        {"round": 2, "duration_s": 0.1, "phases_ms": {"train": 40.0, "commit": 2.0, "x": "?"}},
        {
            "round": 3,
            "duration_s": 0.1,
            "phases_ms": {"train": 60.0, "bad name": 1.0},
            "wait_s": 0.004,
            "ok": True,
        },
        {"round": 4, "duration_s": 0.1, "phases_ms": [1, 2], "commit_ms": float("nan")},
    ]
    assert phase_medians(entries) == {"commit": 2.0, "train": 50.0, "wait": 4.0}


def test_the_commands_of_docs_benchmarks_parse() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
    commands = shell_commands(page.read_text())
    assert len(commands) == 2
    for argv in commands:
        check_parses(argv)
