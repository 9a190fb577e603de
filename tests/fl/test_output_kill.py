"""The final model is sealed for its owner from memory: an aggregator killed with
SIGKILL while it seals leaves no plaintext of it anywhere. Found by a hostile review:
it was staged in a folder in ``/dev/shm`` (or the system's temporary folder) for
``encrypt_directory``, and that folder, the model and the metrics in it, outlived the
kill (a real process, killed the moment it opens its output's file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfl.shield import Volume

CHILD = textwrap.dedent(
    """
    import sys, types
    from pathlib import Path
    import numpy as np
    from secfl.fl._startup import AggregatorOptions, write_output

    out, key_file = Path(sys.argv[1]), Path(sys.argv[2])
    agg = types.SimpleNamespace(
        scores=types.SimpleNamespace(summary=lambda: {}),
        config=types.SimpleNamespace(rounds=3, run=1),
        commit=types.SimpleNamespace(counter=4, policy_digest="d" * 64),
        policy_version=None,
        history=[{"round": 1, "marker-of-the-metrics": 0.5}],
    )
    ident = types.SimpleNamespace(
        secret_file=lambda name, given, required=False: key_file, policy="p",
        token=lambda: "t", spm=lambda: types.SimpleNamespace(report=lambda *args: 1),
        with_session=lambda call: call("t"),
    )
    params = {"w": np.full(int(sys.argv[3]), 0.123, np.float32)}
    write_output(agg, AggregatorOptions(task="digits", output=out, output_key=None), params, ident)
    """
)
#: What only the plaintext holds: the safetensors header of the model, the metrics.
MARKERS = (b'"shape":[40000000]', b"marker-of-the-metrics")


def _writing_in(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` holds a file of ``folder`` open: its output's file, which
    has no name there until it is whole (O_TMPFILE; else a hidden temporary name)."""
    if any(p.name.startswith(".model.secfl.") for p in folder.iterdir()):
        return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{folder}/"):
            return True
    return False


def _plaintext_under(top: Path, since: float) -> list[str]:
    found = []
    for folder, _, names in os.walk(top):
        for name in names:
            path = Path(folder, name)
            try:
                if path.stat().st_mtime < since:
                    continue
                with open(path, "rb") as fh:
                    head = fh.read(1 << 16)
            except OSError:
                continue  # another test's file, gone or not ours to read
            if any(marker in head for marker in MARKERS):
                found.append(str(path))
    return found


@pytest.mark.timeout(120)
def test_a_sigkill_while_the_final_model_is_sealed_leaves_no_plaintext(tmp_path: Path) -> None:
    out, tmp = tmp_path / "output", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    key_file = tmp_path / "output.key"
    key_file.write_text("11" * 32)
    began = time.time() - 1
    env = {**os.environ, "TMPDIR": str(tmp)}
    args = [sys.executable, "-c", CHILD, str(out), str(key_file)]
    child = subprocess.Popen([*args, "40000000"], env=env)  # a 160 MB model
    sealing = False
    try:
        deadline = time.monotonic() + 90
        while not sealing and child.poll() is None and time.monotonic() < deadline:
            sealing = _writing_in(child.pid, out)
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert sealing, "the child never began to seal its output"
    shm = Path("/dev/shm")
    left = _plaintext_under(tmp, began) + (_plaintext_under(shm, began) if shm.is_dir() else [])
    left += _plaintext_under(out, began)
    assert left == []
    # and the same program, not killed, seals a volume only the key opens
    done = subprocess.run([*args, "1000"], env=env, timeout=60, check=False)
    assert done.returncode == 0
    with Volume.open(out / "model.secfl", bytes.fromhex("11" * 32)) as volume:
        assert sorted(f.path for f in volume.files) == ["metrics.json", "model.safetensors"]
        assert b"marker-of-the-metrics" in bytes(volume.read_bytes("metrics.json"))


def _stand_ins(report: Any) -> tuple[Any, Any]:
    import types

    agg = types.SimpleNamespace(
        scores=types.SimpleNamespace(summary=lambda: {}),
        config=types.SimpleNamespace(rounds=3, run=1),
        commit=types.SimpleNamespace(counter=4, policy_digest="d" * 64),
        policy_version=None, history=[{"round": 1}],
    )  # fmt: skip
    return agg, types.SimpleNamespace(
        secret_file=lambda name, given, required=False: KEY_FILE[0], policy="p",
        token=lambda: "t", spm=lambda: types.SimpleNamespace(report=report),
        with_session=lambda call: call("t"),
    )  # fmt: skip


KEY_FILE: list[Path] = []


def test_the_final_model_is_recorded_or_the_run_fails(tmp_path: Path) -> None:
    """The review: the record of the model's tag failed open (a warning), so a host that
    dropped that one connection left the previous run's record as the newest, and the
    model owner's --expect-tag opened the older output it kept."""
    from secfl.errors import FlError, SpmError
    from secfl.fl._startup import AggregatorOptions, write_output

    KEY_FILE[:] = [tmp_path / "output.key"]
    KEY_FILE[0].write_text("ab" * 32)
    params = {"w": np.full(4, 0.5, np.float32)}
    calls: list[dict[str, Any]] = []

    def unreachable(policy: str, event: str, detail: dict[str, Any], token: str) -> int:
        calls.append(detail)
        raise SpmError("spm: POST /v1/policies/p/events failed: connection refused")

    agg, ident = _stand_ins(unreachable)
    out = tmp_path / "output"
    with pytest.raises(FlError, match="the SPM did not record it"):
        write_output(agg, AggregatorOptions(task="digits", output=out, output_key=None), params,
                     ident)  # fmt: skip
    assert len(calls) == 3 and calls[0]["counter"] == 4
    # a link the host planted at the name is replaced, never followed nor a failure
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (out / "model.secfl").unlink()
    (out / "model.secfl").symlink_to(victim)
    agg, ident = _stand_ins(lambda *args: 1)
    path = write_output(agg, AggregatorOptions(task="digits", output=out, output_key=None),
                        params, ident)  # fmt: skip
    assert victim.read_bytes() == b"precious" and not path.is_symlink()
    assert Volume.open(path, bytes.fromhex("ab" * 32)).tag


def test_a_model_a_new_version_cut_off_from_its_record_says_what_to_do(tmp_path: Path) -> None:
    """Found by running the README's steps 6-8: the board approved version 2 while run 1
    sealed its final model, so the SPM refused its record (the session's version was
    replaced), three times, and the error said to start the aggregator again "to record
    it"; started again, the aggregator began version 2's run and overwrote the file. The
    refusal is final: one try, and the line says what the same command does next."""
    from secfl.errors import FlError, SpmRefused
    from secfl.fl._startup import AggregatorOptions, write_output

    KEY_FILE[:] = [tmp_path / "output.key"]
    KEY_FILE[0].write_text("ab" * 32)
    calls: list[dict[str, Any]] = []

    def superseded(policy: str, event: str, detail: dict[str, Any], token: str) -> int:
        calls.append(detail)
        raise SpmRefused("policy: version 2 of 'p' replaced this session's version 1: attest "
                         "again (start the workload again with `secfl run`)", 409)  # fmt: skip

    agg, ident = _stand_ins(superseded)
    out = tmp_path / "output"
    with pytest.raises(FlError) as refused:
        write_output(agg, AggregatorOptions(task="digits", output=out, output_key=None),
                     {"w": np.full(4, 0.5, np.float32)}, ident)  # fmt: skip
    line = str(refused.value)
    assert len(calls) == 1
    assert line.startswith("output: the final model of run 1 is sealed in "), line
    assert "the SPM did not record it: the board approved a new version of 'p'" in line
    assert "to record it" not in line  # the same command cannot record it
    assert line.endswith("start the aggregator again with the same command to begin the "
                         "new version's run")  # fmt: skip
    assert Volume.open(out / "model.secfl", bytes.fromhex("ab" * 32)).tag in line
