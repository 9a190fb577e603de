"""The CLI contract that scripts depend on: JSON claims on stdout, or one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.cli.main import main
from tests.clirun import secfl_all

CLAIM_FIELDS = {
    "kind",
    "quote_version",
    "measurements",
    "report_data",
    "debug",
    "tcb_status",
    "advisory_ids",
    "platform",
    "simulated",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a real process, the way scripts call it."""
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim")
    result = run("sim", "init", str(path))
    assert result.returncode == 0, result.stderr
    assert "root sha256:" in result.stdout
    return path


def test_simulated_quote_and_verify_as_processes(sim: Path, tmp_path: Path) -> None:
    evidence = tmp_path / "ev.bin"
    mr = "ab" * 48
    q = run(
        "attest",
        "quote",
        "--report-data",
        "01" * 32,
        "--platform",
        "simulated",
        "--sim-dir",
        str(sim),
        "--measurement",
        mr,
        "-o",
        str(evidence),
    )
    assert q.returncode == 0, q.stderr
    # with the simulation's root, and without it (refused): independent, at once
    v, refused = secfl_all(
        ["attest", "verify", str(evidence), "--sim-root", str(sim / "root.pem")],
        ["attest", "verify", str(evidence)],
        timeout=120,
    )
    assert v.returncode == 0, v.stderr
    claims = json.loads(v.stdout)
    assert set(claims) == CLAIM_FIELDS
    assert claims["kind"] == "simulated" and claims["simulated"] is True
    assert claims["measurements"]["measurement"] == mr
    assert claims["report_data"] == "01" * 32 + "00" * 32

    assert refused.returncode == 1
    assert refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: simulation:")
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("fmt", ["hex", "json"])
def test_quote_formats_verify(
    capsys: pytest.CaptureFixture[str], sim: Path, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"ev.{fmt}"
    code, _, err = call(
        capsys,
        "attest",
        "quote",
        "--report-data",
        "ff",
        "--platform",
        "simulated",
        "--sim-dir",
        str(sim),
        "--format",
        fmt,
        "-o",
        str(out),
    )
    assert code == 0, err
    code, stdout, err = call(
        capsys,
        "attest",
        "verify",
        str(out),
        "--kind",
        "simulated",
        "--sim-root",
        str(sim / "root.pem"),
    )
    assert code == 0, err
    assert json.loads(stdout)["report_data"].startswith("ff00")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("attest", "verify", "/nonexistent/evidence"), "error: cannot read evidence"),
        (("attest", "verify", "-", "--at", "yesterday"), "error: --at:"),
        (("attest", "verify", "-", "--kind", "tpm"), "error: --kind:"),
        (
            ("attest", "quote", "--report-data", "zz", "--platform", "simulated"),
            "error: --report-data: not hex",
        ),
        (("attest", "quote", "--report-data", "00" * 65, "--platform", "simulated"), "at most 64"),
        (
            (
                "attest",
                "quote",
                "--report-data",
                "00",
                "--platform",
                "simulated",
                "--sim-dir",
                "/nonexistent",
            ),
            "secfl sim init",
        ),
        (("measure", "/nonexistent/path"), "error:"),
    ],
)
def test_user_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, stdout, err = call(capsys, *args)
    assert code == 1
    assert stdout == ""
    assert len(err.strip().splitlines()) == 1
    assert message in err


def test_sgx_with_collateral(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    code, stdout, err = call(
        capsys,
        "attest",
        "verify",
        str(vectors / "intel/sgx_v3_quote.bin"),
        "--collateral",
        str(vectors / "intel/sgx_v3_quote.collateral.json"),
        "--at",
        "2025-07-01",
    )
    assert code == 0, err
    claims = json.loads(stdout)
    assert claims["kind"] == "sgx"
    assert claims["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert claims["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert claims["measurements"]["mrenclave"].startswith("33d8736d")
    assert bytes.fromhex(claims["report_data"]).startswith(b"Hello, world!")


def test_debug_needs_allow_debug(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    quote = str(vectors / "intel/sgx_v3_occlum_quote.bin")
    code, _, err = call(capsys, "attest", "verify", quote, "--at", "2024-06-01")
    assert code == 1 and err.startswith("error: debug:")
    code, stdout, err = call(
        capsys, "attest", "verify", quote, "--at", "2024-06-01", "--allow-debug"
    )
    assert code == 0, err
    assert json.loads(stdout)["debug"] is True


def test_snp_with_vcek_and_chain_and_aux(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    from secfl._internal.x509util import load_pem_chain
    from secfl.tee._amd import build_cert_table

    report = str(vectors / "amd/snp_milan_report.bin")
    code, stdout, err = call(
        capsys,
        "attest",
        "verify",
        report,
        "--vcek",
        str(vectors / "amd/snp_milan_vcek.der"),
        "--chain",
        str(vectors / "amd/ask_ark_milan.pem"),
        "--at",
        "2024-06-01",
    )
    assert code == 0, err
    claims = json.loads(stdout)
    assert claims["kind"] == "snp" and claims["measurements"]["measurement"].startswith("7a1e5c26")

    ask, ark = load_pem_chain((vectors / "amd/ask_ark_milan.pem").read_bytes(), "chain")
    der = serialization.Encoding.DER
    aux = tmp_path / "aux.bin"
    aux.write_bytes(
        build_cert_table(
            {
                "vcek": (vectors / "amd/snp_milan_vcek.der").read_bytes(),
                "ask": ask.public_bytes(der),
                "ark": ark.public_bytes(der),
            }
        )
    )
    code, stdout, err = call(
        capsys, "attest", "verify", report, "--aux", str(aux), "--at", "2024-06-01"
    )
    assert code == 0, err
    assert json.loads(stdout) == claims


def test_measure_prints_a_stable_digest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    code, first, _ = call(capsys, "measure", str(tmp_path / "app"), "--cmd", "python main.py")
    assert code == 0
    code, again, _ = call(capsys, "measure", str(tmp_path / "app"), "--cmd", "python  main.py")
    assert first == again and len(first.strip()) == 96
    code, other, _ = call(capsys, "measure", str(tmp_path / "app"), "--cmd", "python main.py -v")
    assert other != first
    code, as_json, _ = call(capsys, "measure", str(tmp_path / "app"), "--json")
    assert json.loads(as_json)["sha384"] != first.strip()


def test_demo_runs_with_every_decision_correct(vectors: Path) -> None:
    result = run("attest", "demo", "--vectors", str(vectors))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "decisions correct" in result.stdout
    assert "Intel SGX quote v3" in result.stdout


def test_demo_without_vectors_still_runs(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "SECFL_TESTVECTORS": str(tmp_path / "absent")}
    result = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "attest", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vendor steps skipped" in result.stdout


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = call(capsys, "--version")
    assert code == 0 and stdout.strip() == "0.1.0"
    code, stdout, _ = call(capsys, "attest", "--help")
    assert code == 0 and "verify" in stdout


def test_collateral_fetch_then_offline_verify(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    from tests.localhttp import local_server
    from tests.tee.test_pccs import pcs_routes

    doc = json.loads((vectors / "intel/tdx_v4_quote.collateral.json").read_text())
    quote = str(vectors / "intel/tdx_v4_quote.bin")
    out = tmp_path / "collateral.json"
    with local_server() as server:
        server.routes = pcs_routes(doc, "tdx", "B0C06F000000", "platform", spaced=True)
        code, _, err = call(
            capsys, "attest", "collateral", quote, "--pccs", server.url,
            "-o", str(out), "--cache", str(tmp_path / "cache"),
        )  # fmt: skip
        assert code == 0, err
        assert len(server.requests) == 4
    code, stdout, err = call(
        capsys, "attest", "verify", quote, "--collateral", str(out), "--at", "2025-07-01"
    )
    assert code == 0, err
    assert json.loads(stdout)["tcb_status"] == "UpToDate"
    code, _, err = call(capsys, "attest", "collateral", quote, "--pccs", "http://127.0.0.1:9")
    assert code == 1 and err.startswith("error: fetch:"), err


def test_kds_fetch_then_offline_verify(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    from secfl.tee._amd import parse_report
    from tests.localhttp import local_server

    raw = (vectors / "amd/snp_milan_report.bin").read_bytes()
    chip = parse_report(raw).chip_id.hex()
    vcek, chain = tmp_path / "vcek.der", tmp_path / "chain.pem"
    with local_server() as server:
        server.serve_file(
            f"/vcek/v1/Milan/{chip}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115",
            (vectors / "amd/snp_milan_vcek.der").read_bytes(),
        )
        server.serve_file(
            "/vcek/v1/Milan/cert_chain", (vectors / "amd/ask_ark_milan.pem").read_bytes()
        )
        code, _, err = call(
            capsys, "attest", "certs", str(vectors / "amd/snp_milan_report.bin"),
            "--kds", server.url, "--product", "Milan", "--cache", "none",
            "--vcek-out", str(vcek), "--chain-out", str(chain),
        )  # fmt: skip
        assert code == 0, err
    code, stdout, err = call(
        capsys, "attest", "verify", str(vectors / "amd/snp_milan_report.bin"),
        "--vcek", str(vcek), "--chain", str(chain), "--at", "2024-06-01",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["platform"]["product"] == "Milan"


def test_mistakes_found_by_a_walk_through_the_docs_name_what_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each said too little: the wrong option's name, no next step, no file named."""
    code, _, err = call(capsys, "measure", "--for-run", "--code-volume", "code.vol", "--", "x")
    assert code != 0 and "--code-volume: 'code.vol' is not NAME=PATH" in err
    key = str(tmp_path / "v.key")
    assert call(capsys, "shield", "keygen", "-o", key)[0] == 0
    code, _, err = call(capsys, "policy", "keygen", "--out-dir", str(tmp_path), "--member", "a")
    assert code == 0, err
    code, _, err = call(capsys, "policy", "seal-secret", "--key-file", key, "--policy", "p",
                        "--secret", "s", "--spm", "https://127.0.0.1:9", "--spm-pin", "ab" * 32,
                        "--board-key", str(tmp_path / "a.key"), "--threshold", "1")  # fmt: skip
    assert code != 0 and f"--board-key: '{tmp_path / 'a.key'}' is not a PEM public key" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("mine")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("theirs")
    sealed = str(tmp_path / "v.secfl")
    code, _, err = call(capsys, "shield", "encrypt", str(tmp_path / "plain"), "-o", sealed,
                        "--key-file", key)  # fmt: skip
    assert code == 0, err
    code, _, err = call(capsys, "shield", "decrypt", sealed, "-o", str(tmp_path / "out"),
                        "--key-file", key)  # fmt: skip
    assert code != 0 and "decrypt into a new or empty folder (-o)" in err
    assert (tmp_path / "out" / "a.txt").read_text() == "mine"


def test_a_programs_option_given_to_secfl_run_says_where_it_goes() -> None:
    """Found by a walk through the docs: without `--`, `secfl run ... ./train.py
    --rounds 10` said only "No such option: --rounds"."""
    done = run("run", "--spm", "https://127.0.0.1:9", "--spm-pin", "ab" * 32, "--policy", "p",
               "--service", "s", "./train.py", "--rounds", "10")  # fmt: skip
    assert done.returncode == 2
    assert "No such option: --rounds; the program's own options go after `--`" in done.stderr
    other = run("policy", "validate", "--rounds")  # other commands: as before
    assert "No such option: --rounds" in other.stderr and "after `--`" not in other.stderr


def test_measure_refuses_an_option_its_form_would_ignore(tmp_path: Path) -> None:
    """A hostile review: ``--code-volume`` or ``--module`` without ``--for-run``, and
    ``--cmd`` or ``--json`` with it, were ignored: the digest printed, which a site
    compares with the policy, was of something else than the command asked."""
    from tests.clirun import one_error, secfl_all

    (tmp_path / "train.py").write_text("print('x')\n")
    program = str(tmp_path / "train.py")
    done = secfl_all(
        ["measure", "--code-volume", "task=task.secfl", program],
        ["measure", "--module", "m", program],
        ["measure", "--for-run", "--cmd", "python train.py", "--", program],
        ["measure", "--for-run", "--json", "--", program],
    )
    assert "add --for-run" in one_error(done[0]) and "add --for-run" in one_error(done[1])
    assert "after --" in one_error(done[2]) and "after --" in one_error(done[3])
