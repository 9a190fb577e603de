"""The operator's path through the CLI, every step a real process: start an SPM,
verify and pin it, make board keys, sign and submit a policy, verify the audit log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from secfl.tee import _simulated as simulated
from tests.clirun import secfl_all
from tests.spm.harness import Board, SpmProcess, make_sim, policy_document


def secfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_operator_flow(tmp_path: Path) -> None:
    # Steps that do not depend on each other run two at a time (secfl_all).
    make_sim(tmp_path / "sim")
    root = str(tmp_path / "sim" / simulated.ROOT_CERT)
    spm = SpmProcess(tmp_path / "data", tmp_path / "sim", None).start()
    keys = tmp_path / "keys"
    members = (("alice", "ed25519"), ("bob", "ecdsa-p256"), ("carol", "ed25519"))
    try:
        expected, verified, wrong, *made = secfl_all(
            ("spm", "measurement"),
            ("spm", "verify", spm.url, "--expect-measurement", spm.measurement,
             "--sim-root", root),
            ("spm", "verify", spm.url, "--expect-measurement", "00" * 48, "--sim-root", root),
            *(("policy", "keygen", "--out-dir", str(keys), "--member", member, "--kind", kind,
               "--recovery") for member, kind in members),
            timeout=120,
        )  # fmt: skip
        assert expected.returncode == 0 and expected.stdout.strip() == spm.measurement

        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.strip() == spm.pin
        assert "SIMULATED" in verified.stderr

        assert wrong.returncode == 1
        assert wrong.stderr.strip().startswith(
            f"error: measurement: the SPM runs simulated measurement {spm.measurement}, which "
            f"is not the expected one ({'00' * 48}): it runs other code than expected"
        ), wrong.stderr
        # what to do next: the first step of every party, so the line says it
        assert "compare with what its operator published (`secfl spm measurement` on its host)" \
            in wrong.stderr  # fmt: skip

        for done in made:
            assert done.returncode == 0, done.stderr
        board = Board()
        for member, _ in members:
            board.public[member] = (keys / f"{member}.pub").read_bytes()
            board.recovery_public[member] = (keys / f"{member}.recovery.pub").read_bytes()
            board.keys[member] = b""
        policy = tmp_path / "policy.yaml"
        policy.write_text(policy_document("cli", board, Path(root).read_bytes()))
        assert yaml.safe_load(policy.read_text())["board"]["threshold"] == 2

        sigs = []
        signers = ("alice", "bob")
        for member, signed in zip(signers, secfl_all(
            *(("policy", "sign", str(policy), "--key", str(keys / f"{member}.key"),
               "--member", member, "-o", str(tmp_path / f"{member}.sig")) for member in signers),
            timeout=120,
        ), strict=True):  # fmt: skip
            assert signed.returncode == 0, signed.stderr
            sigs += ["--sig", str(tmp_path / f"{member}.sig")]

        too_few, bad_pin, digest_of = secfl_all(
            ("policy", "submit", str(policy), *sigs[:2], "--spm", spm.url, "--spm-pin", spm.pin),
            ("policy", "submit", str(policy), *sigs, "--spm", spm.url, "--spm-pin", "ab" * 32),
            ("policy", "digest", str(policy)),
            timeout=120,
        )
        assert too_few.returncode == 1
        assert too_few.stderr.strip() == "error: approval: 1 valid signature(s) of the 2 required"

        assert bad_pin.returncode == 1 and "not the pinned" in bad_pin.stderr

        submitted = secfl("policy", "submit", str(policy), *sigs, "--spm", spm.url,
                          "--spm-pin", spm.pin)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        digest = digest_of.stdout.strip()
        assert f"digest {digest}" in submitted.stdout

        audited = secfl("audit", "verify", "--spm", spm.url, "--spm-pin", spm.pin)
        assert audited.returncode == 0, audited.stderr
        assert audited.stdout.startswith("audit verify: OK")
    finally:
        spm.stop()
    offline, db_only = secfl_all(
        ("audit", "verify", "--data", str(tmp_path / "data")),
        ("audit", "verify", "--db", f"sqlite:///{tmp_path / 'data' / 'spm.db'}"),
        timeout=120,
    )
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == audited.stdout
    assert db_only.returncode == 0, db_only.stderr
    assert db_only.stdout == audited.stdout and "not authenticated" in db_only.stderr


@pytest.mark.parametrize("listen", ["nowhere", "127.0.0.1:99999", "127.0.0.1:000000080"])
def test_serve_refuses_a_bad_listen_address(tmp_path: Path, listen: str) -> None:
    """(A port past 65535 was a traceback from bind(), found by a walk through the docs.)"""
    done = secfl("spm", "serve", "--data", str(tmp_path), "--listen", listen)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: --listen: '{listen}' is not HOST:PORT (port 0 to 65535)"


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    """Found by a walk through the docs: the SPM announced itself as serving, then
    uvicorn logged the bind error. Now one line, and nothing opened or made."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        make_sim(tmp_path / "sim")
        done = secfl("spm", "serve", "--data", str(tmp_path / "data"), "--listen",
                     f"127.0.0.1:{port}", "--platform", "simulated",
                     "--sim-dir", str(tmp_path / "sim"))  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"error: listen: cannot listen on 127.0.0.1:{port}: address already in use; stop "
        "the process that holds it or give another --listen"
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("url", ["https://[::1", "https://spm:99999", "https://spm:abc"])
def test_a_malformed_spm_url_is_one_line(url: str) -> None:
    """Found by a hostile review: each gave urllib's ValueError as a traceback."""
    done = secfl("status", "--policy", "fed", "--spm", url, "--spm-pin", "ab" * 32)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: spm: '{url}' is not a URL: give https://HOST:PORT"
    ]
