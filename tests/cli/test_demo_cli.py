"""``secfl demo --keep work`` with a relative path once failed.

The demo starts every process inside its work folder, so a relative work path
named a folder below itself: the SPM wrote its ready file where nobody waited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secfl.cli.main import main
from secfl.demo import federation
from secfl.demo.federation import DemoSettings, Federation
from secfl.errors import DemoError


def test_a_relative_work_folder_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fed = Federation(Path("work"), DemoSettings(clients=1))
    try:
        assert fed.work == tmp_path / "work"
        fed.start_spm()  # a real `secfl spm serve`, started in the work folder
        assert fed.spm_url.startswith("https://127.0.0.1:")
        assert (tmp_path / "work" / "spm.ready.json").exists()
        assert not (tmp_path / "work" / "work").exists()
    finally:
        fed.stop()


def test_the_command_gives_the_demo_an_absolute_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Path] = []

    class Stub:
        def __init__(self, work: Path, settings: Any) -> None:
            seen.append(work)
            self.settings = settings

        def start_spm(self) -> None:
            raise DemoError("demo: stopped here by the test")

        def stop(self) -> None:
            pass

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(federation, "Federation", Stub)
    assert main(["demo", "--keep", "work", "--rounds", "1", "--clients", "1"]) == 1
    assert "demo: stopped here by the test" in capsys.readouterr().err
    assert seen == [tmp_path / "work"]
