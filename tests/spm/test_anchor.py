"""The anchor: the last audit head, kept outside the database in two slots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secfl.errors import IntegrityError
from secfl.spm._integrity import Anchor


def test_a_torn_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    key = os.urandom(32)
    anchor = Anchor(tmp_path / "audit.anchor", key)
    for seq in range(1, 8):
        anchor.write(seq, f"{seq:064x}")
    anchor.close()
    assert Anchor(tmp_path / "audit.anchor", key).read() == (7, f"{7:064x}")
    raw = bytearray((tmp_path / "audit.anchor").read_bytes())
    raw[Anchor.SLOT + 5] ^= 0x01  # slot 1 holds seq 7: a write torn by a crash
    (tmp_path / "audit.anchor").write_bytes(bytes(raw))
    assert Anchor(tmp_path / "audit.anchor", key).read() == (6, f"{6:064x}")


def test_an_anchor_of_another_key_or_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.anchor"
    Anchor(path, os.urandom(32)).write(3, "ab" * 32)
    with pytest.raises(IntegrityError, match="^integrity: .* is not an anchor of this SPM"):
        Anchor(path, os.urandom(32)).read()
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(IntegrityError, match="not an anchor of this SPM"):
        Anchor(path, os.urandom(32)).read()


def test_the_anchor_is_private_and_never_goes_back(tmp_path: Path) -> None:
    key = os.urandom(32)
    anchor = Anchor(tmp_path / "audit.anchor", key)
    anchor.write(5, "cd" * 32)
    anchor.write(4, "ef" * 32)  # an older head (another thread's commit) is ignored
    assert (tmp_path / "audit.anchor").stat().st_mode & 0o777 == 0o600
    assert Anchor(tmp_path / "audit.anchor", key).read() == (5, "cd" * 32)


def test_a_new_anchor_is_synced_with_its_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review of the missing-anchor refusal: the anchor was never synced, so a power
    loss right after an SPM's first start could leave none, which its next start now
    refuses. The first write of a start syncs the file and its folder; later ones, on
    every commit, do not."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    anchor = Anchor(tmp_path / "audit.anchor", os.urandom(32))
    for seq in range(1, 5):
        anchor.write(seq, f"{seq:064x}")
    anchor.close()
    assert synced == [str(tmp_path / "audit.anchor"), str(tmp_path)]
