"""The simulated TEE: accepted only against its own, explicitly given root."""

from __future__ import annotations

import contextlib
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfl.errors import PlatformError, VerificationError
from secfl.tee import _simulated as simulated
from secfl.tee._evidence import Evidence
from secfl.tee._verify import verify

MEASUREMENT = bytes(range(48))
REPORT_DATA = bytes(range(64, 128))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim")
    simulated.init(path)
    return path


@pytest.fixture(scope="module")
def platform(sim: Path) -> simulated.SimulatedPlatform:
    return simulated.SimulatedPlatform(sim, measurement=MEASUREMENT)


@pytest.fixture(scope="module")
def root(sim: Path) -> bytes:
    return (sim / simulated.ROOT_CERT).read_bytes()


@pytest.fixture(scope="module")
def quote(platform: simulated.SimulatedPlatform) -> bytes:
    return platform.get_evidence(REPORT_DATA).quote


def test_init_writes_private_keys_owner_only_and_refuses_to_overwrite(tmp_path: Path) -> None:
    simulated.init(tmp_path)
    for name in (simulated.ROOT_KEY, simulated.PLATFORM_KEY):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    before = (tmp_path / simulated.ROOT_CERT).read_bytes()
    with pytest.raises(PlatformError, match="already holds"):
        simulated.init(tmp_path)
    assert (tmp_path / simulated.ROOT_CERT).read_bytes() == before
    simulated.init(tmp_path, force=True)
    assert (tmp_path / simulated.ROOT_CERT).read_bytes() != before


def test_genuine_quote_gives_simulated_claims(quote: bytes, root: bytes) -> None:
    claims = verify(quote, sim_root=root)
    assert claims.kind == "simulated"
    assert claims.simulated is True
    assert claims.measurements == {"measurement": MEASUREMENT.hex()}
    assert claims.report_data_bytes == REPORT_DATA
    assert claims.debug is False
    assert claims.tcb_status == "unknown"
    assert len(claims.platform["sim_root_sha256"]) == 64


def test_per_call_measurement_overrides_the_default(
    platform: simulated.SimulatedPlatform, root: bytes
) -> None:
    other = bytes(47) + b"\x01"
    claims = verify(platform.get_evidence(REPORT_DATA, measurement=other.hex()), sim_root=root)
    assert claims.measurements["measurement"] == other.hex()


def test_refused_without_the_simulation_root(quote: bytes) -> None:
    with pytest.raises(VerificationError, match=r"^simulation: .*explicit simulation root"):
        verify(quote)


def test_refused_under_another_simulation_root(quote: bytes, tmp_path: Path) -> None:
    other = simulated.init(tmp_path).read_bytes()
    with pytest.raises(VerificationError, match="^chain:"):
        verify(quote, sim_root=other)


def test_never_accepted_as_vendor_evidence(quote: bytes, root: bytes) -> None:
    for kind in ("sgx", "tdx", "snp"):
        with pytest.raises(VerificationError, match="^kind:"):
            verify(quote, kind=kind, sim_root=root)  # type: ignore[arg-type]


def test_every_single_byte_change_is_refused(quote: bytes, root: bytes) -> None:
    root_cert = x509.load_pem_x509_certificate(root)
    assert root_cert  # parsed once; each verify re-parses the quote
    for offset in range(len(quote)):
        tampered = bytearray(quote)
        tampered[offset] ^= 0x01
        with pytest.raises(VerificationError):
            verify(bytes(tampered), sim_root=root)


def test_trailing_zero_padding_is_tolerated_but_not_other_bytes(quote: bytes, root: bytes) -> None:
    assert verify(quote + bytes(100), sim_root=root).report_data_bytes == REPORT_DATA
    with pytest.raises(VerificationError, match="non-zero bytes after the end"):
        verify(quote + b"\x00\x01", sim_root=root)


def test_debug_is_refused_unless_allowed(sim: Path, root: bytes) -> None:
    debug = simulated.SimulatedPlatform(sim, debug=True).get_evidence(REPORT_DATA)
    with pytest.raises(VerificationError, match="^debug:"):
        verify(debug, sim_root=root)
    assert verify(debug, sim_root=root, allow_debug=True).debug is True


def test_outside_the_certificates_validity_is_refused(quote: bytes, root: bytes) -> None:
    with pytest.raises(VerificationError, match="^expired:"):
        verify(quote, sim_root=root, at=datetime.now(UTC) + timedelta(days=3700))
    with pytest.raises(VerificationError, match="^expired:"):
        verify(quote, sim_root=root, at=datetime.now(UTC) - timedelta(days=1))


def test_root_key_posing_as_platform_is_refused(sim: Path, root: bytes) -> None:
    """A quote signed by the root key with the root as 'platform' certificate."""
    key = serialization.load_pem_private_key((sim / simulated.ROOT_KEY).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(root).public_bytes(serialization.Encoding.DER)
    body = (
        b"SECFLSIM"
        + (1).to_bytes(2, "little")
        + bytes(6)
        + MEASUREMENT
        + REPORT_DATA
        + len(cert).to_bytes(2, "little")
        + cert
    )
    sig = key.sign(body, ec.ECDSA(hashes.SHA256()))
    forged = body + len(sig).to_bytes(2, "little") + sig
    with pytest.raises(VerificationError, match="^chain:"):
        verify(forged, sim_root=root)


def test_platform_input_checks(sim: Path, platform: simulated.SimulatedPlatform) -> None:
    with pytest.raises(PlatformError, match="64 bytes"):
        platform.get_evidence(b"short")
    with pytest.raises(PlatformError, match="48 bytes"):
        simulated.SimulatedPlatform(sim, measurement=b"x")
    with pytest.raises(PlatformError, match="secfl sim init"):
        simulated.SimulatedPlatform(sim / "missing")


def test_evidence_round_trips_through_every_encoding(quote: bytes, root: bytes) -> None:
    ev = Evidence.parse(quote)
    assert ev.kind == "simulated"
    for encoded in (quote.hex().encode(), ev.to_json().encode(), quote):
        assert verify(encoded, sim_root=root).report_data_bytes == REPORT_DATA


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_parser_fuzz_random(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        simulated.parse_quote(b"SECFLSIM" + data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=2000), flips=st.lists(st.integers(0, 2000), max_size=4)
)
def test_verify_fuzz_truncations_and_mutations(
    quote: bytes, root: bytes, cut: int, flips: list[int]
) -> None:
    data = bytearray(quote[: cut % (len(quote) + 1)])
    for f in flips:
        if data:
            data[f % len(data)] ^= 0xFF
    with contextlib.suppress(VerificationError):
        verify(bytes(data), sim_root=root)


# --- a damaged simulation folder, and how its private keys are written -------------------


def _copy_sim(sim: Path, to: Path) -> Path:
    to.mkdir()
    for child in sim.iterdir():
        (to / child.name).write_bytes(child.read_bytes())
    return to


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (simulated.PLATFORM_KEY, b"garbage"),
        (simulated.PLATFORM_KEY, b""),
        (simulated.PLATFORM_KEY, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        (simulated.PLATFORM_KEY, None),  # an Ed25519 key: not what the platform signs with
        (simulated.PLATFORM_CERT, b"garbage"),
        (simulated.PLATFORM_CERT, b"\xff" * 40),
    ],
    ids=["key garbage", "key empty", "key bad PEM", "key Ed25519", "cert garbage", "cert bytes"],
)
def test_a_corrupt_platform_file_is_one_line(
    sim: Path, tmp_path: Path, name: str, content: bytes | None
) -> None:
    damaged = _copy_sim(sim, tmp_path / "sim")
    if content is None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from secfl._internal.x509util import private_pem

        content = private_pem(ed25519.Ed25519PrivateKey.generate())
    (damaged / name).write_bytes(content)
    with pytest.raises(PlatformError) as info:
        simulated.SimulatedPlatform(damaged)
    message = str(info.value)
    assert "\n" not in message and message.startswith("simulation: "), message
    assert str(damaged / name) in message and "secfl sim init" in message, message


def test_a_corrupt_platform_key_is_one_line_from_the_cli(sim: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    damaged = _copy_sim(sim, tmp_path / "sim")
    (damaged / simulated.PLATFORM_KEY).write_bytes(b"not a key")
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "attest", "quote", "--report-data", "01" * 32,
         "--platform", "simulated", "--sim-dir", str(damaged), "-o", str(tmp_path / "q")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: simulation: ") and done.stderr.count("\n") == 1, (
        done.stderr
    )


def test_init_never_writes_a_key_through_a_planted_link(tmp_path: Path) -> None:
    """A symbolic or hard link planted at a key's name must not receive the key."""
    sim = tmp_path / "sim"
    sim.mkdir()
    victim, shared = tmp_path / "victim", tmp_path / "shared"
    victim.write_bytes(b"victim\n")
    shared.write_bytes(b"shared\n")
    shared.chmod(0o644)
    (sim / simulated.PLATFORM_KEY).symlink_to(victim)
    os.link(shared, sim / simulated.ROOT_KEY)
    simulated.init(sim, force=True)
    assert victim.read_bytes() == b"victim\n"
    assert shared.read_bytes() == b"shared\n" and stat.S_IMODE(shared.stat().st_mode) == 0o644
    for name in (simulated.PLATFORM_KEY, simulated.ROOT_KEY):
        st = (sim / name).lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
    simulated.SimulatedPlatform(sim).get_evidence(REPORT_DATA)  # the new keys work
    assert [p.name for p in sim.iterdir() if p.name.startswith(".")] == []  # no temp left
