"""A grid's settings that no run can honour, or that name one run twice, are refused
before anything runs, in one line naming the option: counts beyond what the runs take
(or what the folder's grid.json can be read back with), a malicious fraction that
makes no attacker or a half of the collaborators, and two entries that a run's record
names alike (a resume took the second for done; the report never counted the grid
whole)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from secfl.cli.main import main
from secfl.errors import FlError
from secfl.eval.folder import GridFolder, parse_shard
from secfl.eval.grid import Evaluation
from secfl.eval.options import GridOptions, assemble_grid

OPTIONS = ["--tasks", "digits", "--clients", "4", "--partitions", "iid", "--malicious", "0",
           "--attacks", "label-flip", "--defences", "fedavg", "--seeds", "1", "--rounds", "1",
           "--epochs", "1", "--samples", "200"]  # fmt: skip


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def with_option(option: str, value: str) -> list[str]:
    i = OPTIONS.index(option) if option in OPTIONS else len(OPTIONS)
    return [*OPTIONS[:i], option, value, *OPTIONS[i + 2 :]]


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--rounds", "3000000000", "--rounds: 3000000000 rounds; give at most 100000"),
        ("--rounds", "1" + "0" * 400, "--rounds: more than 10**15 rounds; give at most 100000"),
        ("--epochs", "100000", "--epochs: 100000 epochs; give at most 10000"),
        ("--clients", "20000", "--clients: 20000 clients; give at most 10000"),
        ("--samples", "10000000000", "--samples: 10000000000 samples; give at most"),
        ("--malicious", "0,0.1", "--malicious: 0.1 of 4 collaborators is no attacker"),
        ("--malicious", "0,0.45", "--malicious: 0.45 of 4 collaborators is 2 attackers, half"),
        ("--malicious", "0,0.25,0.250", "--malicious: 0.25 and 0.25 name the same runs"),
        ("--malicious", "0,0.0", "--malicious: 0.0 and 0.0 name the same runs"),
        (
            "--partitions",
            "0.5,0.5000001",
            "--partitions: 0.5 and 0.5000001 name the same runs (dirichlet-0.5)",
        ),
        ("--partitions", "iid,iid", "--partitions: iid and iid name the same runs (iid)"),
        ("--defences", "fedavg,median,fedavg", "--defences: fedavg and fedavg name the same"),
        ("--tasks", "digits,digits", "--tasks: digits and digits name the same runs"),
    ],
)
def test_a_setting_no_run_honours_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    out = tmp_path / "grid"
    assert main(["eval", "robustness", *with_option(option, value), "-o", str(out)]) == 1
    assert says in one_line_error(capsys)
    assert not out.exists()  # refused before anything is written


def test_fractions_that_make_attackers_are_taken() -> None:
    for clients, fracs in (("4", "0,0.25"), ("6", "0,0.34"), ("20", "0,0.1,0.2,0.3,0.4")):
        options = GridOptions(tasks="digits", clients=int(clients), malicious=fracs)
        assert assemble_grid(options, out="x")[0].malicious == [float(f) for f in fracs.split(",")]


def test_partitions_one_record_name_would_merge_no_longer_share_a_resume(tmp_path: Path) -> None:
    """What went wrong: alphas 0.5 and 0.5000001 are two runs with one key, so the
    record of the first made a resume skip the second (and the report say "Partial"
    for ever, one run short)."""
    options = GridOptions(tasks="digits", clients=4, partitions="0.5", malicious="0",
                          defences="fedavg", seeds=1, rounds=1, epochs=1, samples=200)  # fmt: skip
    grid = assemble_grid(options, out=str(tmp_path))[0]
    merged = dataclasses.replace(grid, partitions=[0.5, 0.5000001])
    label, first = next(iter(merged.scenarios()))
    from secfl.eval.grid import Run

    record = {**Run(first, first.label(), label, None).row(), "accuracy": 0.5}
    assert Evaluation(merged, [record]).pending() == []  # the second run was taken for done
    with pytest.raises(FlError, match="name the same runs"):
        from secfl.eval.options import check_grid

        check_grid(merged)


def test_an_edited_grid_json_of_clones_or_rounds_out_of_range_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = GridOptions(tasks="digits", clients=4, partitions="iid", malicious="0",
                          defences="fedavg", seeds=1, rounds=1, epochs=1, samples=200)  # fmt: skip
    grid, _, command = assemble_grid(options, out=str(tmp_path / "grid"))
    GridFolder(tmp_path / "grid", grid, command).claim()
    settings = tmp_path / "grid" / "grid.json"
    doc = json.loads(settings.read_text())
    for changes, says in (({"clones": 0}, "the grid's 'clones': 0 clones; give 2 or more"),
                          ({"rounds": 200_000}, "the grid's 'rounds': 200000 rounds"),
                          ({"seeds": [0, 0]}, "the grid's 'seeds': 0 and 0 name the same"),
                          ({"malicious": [0.0, 0.1]}, "is no attacker")):  # fmt: skip
        settings.write_text(json.dumps({**doc, "grid": {**doc["grid"], **changes}}))
        assert main(["eval", "robustness", "--report-only", "-o", str(tmp_path / "grid")]) == 1
        assert says in one_line_error(capsys)


@pytest.mark.parametrize("shard", ["²/³", "0/" + "9" * 5000])
def test_a_shard_of_other_digits_is_one_line(shard: str) -> None:
    with pytest.raises(FlError, match="is not K/N with 0 <= K < N"):
        parse_shard(shard)
