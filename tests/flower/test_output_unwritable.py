"""The SuperLink's --output: checked at start, and not lost when it fails at the end.

Found by a hostile review: nothing checked at start that the wrapper could write
--output, so a folder it could not write was found only once the run had completed;
then the wrapper stopped at the error, fl.flower.run-finished was never written to the
SPM's log, and the ServerApp's outputs (the model) went with the run's RAM folder. Now
such an --output is refused in one line before the SuperLink starts, and one the host
breaks during the run is tried again (one line says so) until it can be written or
OUTPUT_PATIENCE passed; run-finished is written either way.

Real processes: an SPM, the SuperLink and two SuperNodes under `secfl run` (the
simulated TEE), the example app (``examples/flower``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.errors import FlowerError
from secfl.flower._federation import LocalFlowerFederation
from secfl.flower._local import Process, flower_python

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFlowerFederation]:
    try:
        flower_python()
    except FlowerError as exc:
        pytest.skip(str(exc))
    fed = LocalFlowerFederation(
        tmp_path_factory.mktemp("flower"), sites=2, rounds=1, run_config=["fraction-evaluate=0.0"]
    )
    try:
        fed.start_spm()
        fed.prepare()
        fed.submit_policy()
        yield fed
    finally:
        fed.stop()


def _break(folder: Path) -> None:
    """The host puts a file where the output's folder was."""
    shutil.rmtree(folder)
    folder.write_text("not a folder\n")


def _mend(folder: Path) -> None:
    folder.unlink()
    folder.mkdir()


def _wait_for(process: Process, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in process.text():
            return True
        if process.proc.poll() is not None:
            return text in process.text()
        time.sleep(0.5)
    return False


def test_an_output_that_cannot_be_written_is_refused_at_start(
    fed: LocalFlowerFederation,
) -> None:
    out = fed.work / "output"
    _break(out)
    try:
        link = fed.start_superlink()
        try:
            code = link.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the SuperLink started with an --output it cannot write: {link.tail()}")
        text = link.text()
        assert code != 0
        assert "--output" in text and "cannot be written" in text, text[-2000:]
        assert "Traceback" not in text, text[-3000:]
        assert "Fleet API is served" not in text
    finally:
        if "superlink" in fed.processes:
            fed.stop_process("superlink")
        _mend(out)


def test_an_output_broken_during_the_run_is_written_once_mended(
    fed: LocalFlowerFederation,
) -> None:
    out = fed.work / "output"
    fed.processes.pop("superlink", None)
    (fed.work / "logs" / "superlink.log").unlink(missing_ok=True)  # the first start's
    link = fed.start_superlink()
    fed.wait_gate()
    _break(out)  # after the start's check: the host changes it while the run goes on
    try:
        fed.start_supernodes()
        said = _wait_for(link, "cannot write", 400)
        assert said, link.text()[-3000:]
        time.sleep(2)
        assert link.proc.poll() is None, link.text()[-3000:]  # the outputs wait in RAM
    finally:
        _mend(out)
    assert fed.wait(120) == 0, link.text()[-3000:]
    assert "Traceback" not in link.text()
    assert fed.final_model()  # the model owner opens it
    finished = [e for e in fed.audit() if e["event"] == "fl.flower.run-finished"]
    assert len(finished) == 1 and finished[0]["detail"]["output_tag"], finished


def test_an_output_that_is_a_link_is_refused_at_start(tmp_path: Path) -> None:
    """The sealing never follows a link at --output (the host's folder): it is refused
    at start, not after the run."""
    from secfl.flower._superlink_output import check_output

    (tmp_path / "model.secfl").write_text("")
    (tmp_path / "link.secfl").symlink_to(tmp_path / "model.secfl")
    with pytest.raises(FlowerError, match="symbolic link"):
        check_output(tmp_path / "link.secfl")
    check_output(tmp_path / "model.secfl")  # a file there is replaced when sealed
