"""The commands the docs pages show work as written: every ``secfl`` line of their
``sh`` blocks names a command whose options parse, and the `secfl policy init`
example of docs/operations.md writes a policy when run, in a folder holding the
files it names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secfl.spm._sealing import seal_imported
from tests.clirun import call, check_parses, shell_commands
from tests.spm.harness import make_sim

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ["operations.md", "operations-board.md", "runs.md", "tasks.md", "quickstart-task.md"]


@pytest.mark.parametrize("page", PAGES)
def test_every_command_of_a_docs_page_parses(page: str) -> None:
    commands = shell_commands((DOCS / page).read_text())
    assert commands, f"{page} shows no secfl command"
    for argv in commands:
        check_parses(argv)


def test_the_policy_init_example_writes_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (example,) = [
        argv
        for argv in shell_commands((DOCS / "operations.md").read_text())
        if argv[:2] == ["policy", "init"]
    ]
    monkeypatch.chdir(tmp_path)
    make_sim(tmp_path / "sim")
    shutil.copy(tmp_path / "sim" / "root.pem", "root.pem")
    for member in ("alice", "bob", "carol"):
        code, _, err = call(capsys, "policy", "keygen", "--out-dir", ".", "--member", member,
                            "--recovery")  # fmt: skip
        assert code == 0, err
    for volume in ("task", "validation", "site-1"):
        os.mkdir(volume)
        Path(volume, "part.csv").write_text("1,2\n")
        assert call(capsys, "shield", "keygen", "-o", f"{volume}.key")[0] == 0
        code, _, err = call(capsys, "shield", "encrypt", volume, "-o", f"{volume}.secfl",
                            "--key-file", f"{volume}.key")  # fmt: skip
        assert code == 0, err
    code, _, err = call(capsys, "policy", "keygen", "--out-dir", "site-keys", "--member",
                        "site-1")  # fmt: skip
    assert code == 0, err  # site-1's own site key, given to the board as site-1.pub
    spm_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    for name, file in (("task-key", "task.sealed"), ("output-key", "model.sealed")):
        Path(file).write_text(seal_imported(os.urandom(32), spm_key, "fed", name, "0" * 64))

    code, out, err = call(capsys, *example)
    assert code == 0, err
    assert out.startswith("wrote policy.yaml: policy fed version 1 (digest "), out
    assert "to fill in before it is signed" in out  # the sites' keys: theirs to seal
    assert "note: sites" not in out  # every site has a site key: its own, or one made here
    assert Path("site-keys", "site-2.key").stat().st_mode & 0o777 == 0o600
