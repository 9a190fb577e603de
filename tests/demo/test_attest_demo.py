"""``secfl attest demo`` finds the vendor evidence from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.demo.attestation import CHECKOUT_VECTORS, VECTOR_FILES, find_vectors
from tests.clirun import failed
from tests.conftest import in_ci


def checkout_vectors() -> Path:
    """The evidence beside this checkout; a skip (under CI a failure) where it is absent."""
    if all((CHECKOUT_VECTORS / name).is_file() for name in VECTOR_FILES):
        return CHECKOUT_VECTORS
    message = f"real vendor evidence not found at {CHECKOUT_VECTORS}"
    if in_ci():
        pytest.fail(f"vectors: {message}, and CI must test against it", pytrace=False)
    pytest.skip(message)


def attest_demo(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "attest", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=cwd,
    )


def test_attest_demo_from_another_folder_verifies_the_vendor_evidence(tmp_path: Path) -> None:
    checkout_vectors()
    env = {k: v for k, v in os.environ.items() if k != "SECFL_TESTVECTORS"}
    env["COLUMNS"] = "200"
    result = attest_demo(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Intel SGX quote v3" in result.stdout and "AMD SEV-SNP report" in result.stdout
    assert "vendor steps skipped" not in result.stdout
    assert f"all {5 + 8} decisions correct" in result.stdout
    assert list(tmp_path.iterdir()) == []  # and wrote nothing where it ran


def test_the_default_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = checkout_vectors()
    monkeypatch.delenv("SECFL_TESTVECTORS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert find_vectors() == where
    monkeypatch.setenv("SECFL_TESTVECTORS", str(tmp_path / "absent"))
    assert find_vectors() is None  # named by the environment but absent: skipped, and said


def test_a_named_folder_without_the_evidence_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "intel").mkdir()
    line = failed(capsys, "attest", "demo", "--vectors", str(tmp_path))
    assert line.startswith(f"error: vectors: {tmp_path} has no intel/sgx_v3_quote.bin (and ")
    assert "--vectors" in line
