"""Evidence producers against fake kernels and a fake Gramine, on real files.

How the fake configfs-tsm works, and why it is honest:

- Plain files stand in for every attribute the platform reads or writes
  (``generation``, ``provider``, ``inblob``, ``auxblob``, ``privlevel``), so the
  platform's own open/read/write code runs unchanged.
- ``outblob`` is a FIFO served by a thread. The kernel generates the report
  synchronously, inside the reader's ``read``; a FIFO gives the same contract:
  the platform's read blocks until the fake has looked at ``inblob``, bumped
  ``generation`` and written ``auxblob``, then returns the report and EOF. No
  sleeps and no polling in the platform code.
- Only mkdir and rmdir cannot be imitated by a plain directory (configfs
  populates an entry on mkdir and drops its attributes on rmdir), so the fake
  takes over the platform's two hooks ``_make_entry`` / ``_remove_entry``, by
  monkeypatching the class: :func:`platform_by_name` and :func:`detect_platform`
  are then exercised exactly as shipped.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfl.errors import PlatformError
from secfl.tee import _platforms as platforms
from secfl.tee._evidence import Evidence
from secfl.tee._platforms import (
    REPORT_DATA_SIZE,
    ConfigfsTsmPlatform,
    GramineSgxPlatform,
    Platform,
    check_report_data,
    detect_platform,
    platform_by_name,
)
from tests.conftest import utc

REPORT_DATA = bytes(range(64))
RACER_INBLOB = b"\xee" * 64

# SEV-SNP certificate-table GUIDs (GHCB spec), written in RFC 4122 byte order as
# the kernel passes them through from the host (AMD's sev-guest tools use uuid_parse).
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


def cert_table(certs: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """A configfs-tsm SNP auxblob: (GUID, u32 offset, u32 length) entries, an all-zero
    terminator, then the DER certificates; offsets count from the table's start."""
    header_size = 24 * (len(certs) + 1)
    header, body = b"", b""
    for guid, der in certs:
        offset = header_size + len(body)
        header += guid.bytes + offset.to_bytes(4, "little") + len(der).to_bytes(4, "little")
        body += der
    return header + bytes(24) + body


class FakeTsmKernel:
    """Plays the kernel side of ``<root>/<entry>/...`` for one provider."""

    def __init__(
        self,
        root: Path,
        provider: str,
        outblob: bytes,
        auxblob: bytes | None = None,
        *,
        racer: bool = False,
    ) -> None:
        self.root = root
        self.provider = provider
        self.outblob = outblob
        self.auxblob = auxblob
        self.racer = racer  # another process writes the same entry's inblob meanwhile
        self.inblobs: list[bytes] = []
        self.privlevels: list[str] = []
        self.created: list[Path] = []
        self.removed: list[Path] = []
        self._servers: dict[Path, tuple[threading.Thread, threading.Event]] = {}

    # -- configfs mkdir / rmdir ------------------------------------------------
    def mkdir(self, entry: Path) -> None:
        os.mkdir(entry)  # a missing root fails here exactly like the real one
        self.created.append(entry)
        (entry / "generation").write_text("0\n")
        (entry / "provider").write_text(f"{self.provider}\n")
        (entry / "inblob").write_bytes(b"")
        if self.provider == "sev_guest":  # auxblob and privlevel are SNP-only attributes
            (entry / "auxblob").write_bytes(b"")
            (entry / "privlevel").write_bytes(b"")
            (entry / "privlevel_floor").write_text("0\n")
        os.mkfifo(entry / "outblob")
        stop = threading.Event()
        server = threading.Thread(target=self._serve, args=(entry, stop), daemon=True)
        self._servers[entry] = (server, stop)
        server.start()

    def rmdir(self, entry: Path) -> None:
        server, stop = self._servers.pop(entry)
        stop.set()
        server.join(timeout=10)
        for child in entry.iterdir():
            child.unlink()
        os.rmdir(entry)
        self.removed.append(entry)

    def close(self) -> None:
        for entry in list(self._servers):
            self.rmdir(entry)

    # -- report generation, inside the platform's read of outblob ----------------
    def _serve(self, entry: Path, stop: threading.Event) -> None:
        fifo = entry / "outblob"
        while True:
            try:  # succeeds once a reader has the FIFO open
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or stop.wait(0.001):
                    return
        try:
            writes = 1
            self.inblobs.append((entry / "inblob").read_bytes())
            privlevel = (entry / "privlevel").read_text() if self.provider == "sev_guest" else ""
            if privlevel:
                self.privlevels.append(privlevel)
                writes += 1
            if self.racer:
                (entry / "inblob").write_bytes(RACER_INBLOB)
                writes += 1
            (entry / "generation").write_text(f"{writes}\n")
            if self.auxblob is not None:
                (entry / "auxblob").write_bytes(self.auxblob)
            os.set_blocking(fd, True)
            view = memoryview(self.outblob)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


Install = Callable[[FakeTsmKernel], FakeTsmKernel]


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys/kernel/config/tsm/report"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """Route ConfigfsTsmPlatform's mkdir/rmdir of a fake root to its fake kernel."""
    kernels: dict[Path, FakeTsmKernel] = {}
    real_make, real_remove = ConfigfsTsmPlatform._make_entry, ConfigfsTsmPlatform._remove_entry

    def make(self: ConfigfsTsmPlatform, entry: Path) -> None:
        if entry.parent in kernels:
            kernels[entry.parent].mkdir(entry)
        else:
            real_make(self, entry)

    def remove(self: ConfigfsTsmPlatform, entry: Path) -> None:
        if entry.parent in kernels:
            kernels[entry.parent].rmdir(entry)
        else:
            real_remove(self, entry)

    monkeypatch.setattr(ConfigfsTsmPlatform, "_make_entry", make)
    monkeypatch.setattr(ConfigfsTsmPlatform, "_remove_entry", remove)

    def add(kernel: FakeTsmKernel) -> FakeTsmKernel:
        kernels[kernel.root] = kernel
        return kernel

    yield add
    for kernel in kernels.values():
        kernel.close()


@pytest.fixture
def snp_report(vectors: Path) -> bytes:
    return (vectors / "amd/snp_milan_report.bin").read_bytes()


@pytest.fixture
def snp_auxblob(vectors: Path) -> bytes:
    vcek = (vectors / "amd/snp_milan_vcek.der").read_bytes()
    ask, ark = x509.load_pem_x509_certificates((vectors / "amd/ask_ark_milan.pem").read_bytes())
    der = serialization.Encoding.DER
    return cert_table(
        [
            (GUID_VCEK, vcek),
            (GUID_ASK, ask.public_bytes(der)),
            (GUID_ARK, ark.public_bytes(der)),
        ]
    )


@pytest.fixture
def tdx_quote(vectors: Path) -> bytes:
    return (vectors / "intel/tdx_v4_quote.bin").read_bytes()


# --- report data ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_report_data_must_be_64_bytes(size: int, tsm_root: Path, tmp_path: Path) -> None:
    for platform in (ConfigfsTsmPlatform(tsm_root), GramineSgxPlatform(tmp_path)):
        with pytest.raises(PlatformError, match=f"exactly 64 bytes.*got {size}"):
            platform.get_evidence(bytes(size))
    assert list(tsm_root.iterdir()) == []  # refused before any entry was made


def test_check_report_data_accepts_bytes_like() -> None:
    assert check_report_data(bytearray(64)) == bytes(64)
    assert REPORT_DATA_SIZE == 64
    with pytest.raises(PlatformError, match="must be bytes"):
        check_report_data("x" * 64)  # type: ignore[arg-type]


def test_platform_is_easy_to_subclass() -> None:
    class Fixed(Platform):
        name = "simulated"

        def get_evidence(self, report_data: bytes, measurement: bytes | None = None) -> Evidence:
            return Evidence(kind="simulated", quote=b"SECFLSIM" + check_report_data(report_data))

    assert Fixed().get_evidence(REPORT_DATA).quote.endswith(REPORT_DATA)
    assert repr(Fixed()) == "<Fixed simulated>"
    with pytest.raises(TypeError):
        Platform()  # type: ignore[abstract]


# --- configfs-tsm ----------------------------------------------------------------


def test_snp_report_with_certificate_table(
    install: Install, tsm_root: Path, snp_report: bytes, snp_auxblob: bytes
) -> None:
    kernel = install(FakeTsmKernel(tsm_root, "sev_guest", snp_report, snp_auxblob))
    evidence = ConfigfsTsmPlatform(tsm_root).get_evidence(REPORT_DATA)

    assert kernel.inblobs == [REPORT_DATA]
    assert evidence == Evidence(kind="snp", quote=snp_report, aux=snp_auxblob, provider="sev_guest")
    assert kernel.created == kernel.removed and len(kernel.created) == 1
    assert kernel.created[0].name.startswith("secfl-")
    assert list(tsm_root.iterdir()) == []
    assert Evidence.parse(evidence.to_json().encode()) == evidence


def test_snp_evidence_verifies_with_its_own_certificates(
    install: Install, tsm_root: Path, snp_report: bytes, snp_auxblob: bytes
) -> None:
    """End to end: what the platform returns, through JSON, verifies with the auxblob alone."""
    from secfl.tee._verify import verify

    amd = pytest.importorskip("secfl.tee._amd")
    if hasattr(amd, "build_cert_table"):  # the hand-built table is the format amd.py writes
        assert snp_auxblob == amd.build_cert_table(amd.parse_cert_table(snp_auxblob))
    install(FakeTsmKernel(tsm_root, "sev_guest", snp_report, snp_auxblob))
    evidence = ConfigfsTsmPlatform(tsm_root).get_evidence(REPORT_DATA)
    claims = verify(Evidence.parse(evidence.to_json().encode()), at=utc("2024-06-01"))
    assert claims.kind == "snp"


def test_tdx_quote_has_no_auxblob(install: Install, tsm_root: Path, tdx_quote: bytes) -> None:
    kernel = install(FakeTsmKernel(tsm_root, "tdx_guest", tdx_quote))
    platform = platform_by_name("tdx", configfs_root=tsm_root)
    assert platform.name == "tdx"
    evidence = platform.get_evidence(REPORT_DATA)

    assert kernel.inblobs == [REPORT_DATA]
    assert evidence == Evidence(kind="tdx", quote=tdx_quote, aux=None, provider="tdx_guest")
    assert evidence.to_bytes() == tdx_quote
    assert list(tsm_root.iterdir()) == []
    assert Evidence.parse(evidence.to_json().encode()) == evidence
    pytest.importorskip("secfl.tee._intel")
    from secfl.tee._verify import verify

    assert verify(evidence, at=utc("2025-07-01")).kind == "tdx"  # signature chain only


def test_empty_auxblob_is_none(install: Install, tsm_root: Path, snp_report: bytes) -> None:
    install(FakeTsmKernel(tsm_root, "sev_guest", snp_report, auxblob=b""))
    evidence = platform_by_name("snp", configfs_root=tsm_root).get_evidence(REPORT_DATA)
    assert evidence.kind == "snp" and evidence.aux is None


def test_name_follows_the_provider_seen(install: Install, tsm_root: Path, tdx_quote: bytes) -> None:
    install(FakeTsmKernel(tsm_root, "tdx_guest", tdx_quote))
    platform = detect_platform(configfs_root=tsm_root, gramine_root=tsm_root / "none")
    assert isinstance(platform, ConfigfsTsmPlatform) and platform.name == "configfs-tsm"
    platform.get_evidence(REPORT_DATA)
    assert platform.name == "tdx"


def test_privlevel_is_written_and_counted(
    install: Install, tsm_root: Path, snp_report: bytes
) -> None:
    kernel = install(FakeTsmKernel(tsm_root, "sev_guest", snp_report))
    evidence = ConfigfsTsmPlatform(tsm_root, privlevel=2).get_evidence(REPORT_DATA)
    assert evidence.kind == "snp"
    assert kernel.privlevels == ["2\n"]


def test_privlevel_refused_where_the_provider_has_none(
    install: Install, tsm_root: Path, tdx_quote: bytes
) -> None:
    kernel = install(FakeTsmKernel(tsm_root, "tdx_guest", tdx_quote))
    with pytest.raises(PlatformError, match="tdx_guest does not take a privlevel"):
        ConfigfsTsmPlatform(tsm_root, privlevel=0).get_evidence(REPORT_DATA)
    assert kernel.removed == kernel.created and list(tsm_root.iterdir()) == []
    with pytest.raises(PlatformError, match=r"privlevel must be 0\.\.3"):
        ConfigfsTsmPlatform(tsm_root, privlevel=4)


def test_concurrent_writer_is_detected(install: Install, tsm_root: Path, snp_report: bytes) -> None:
    kernel = install(FakeTsmKernel(tsm_root, "sev_guest", snp_report, racer=True))
    with pytest.raises(
        PlatformError, match=r"another process wrote to report entry .*generation 2, expected 1"
    ):
        ConfigfsTsmPlatform(tsm_root).get_evidence(REPORT_DATA)
    assert kernel.inblobs == [REPORT_DATA]
    assert kernel.removed == kernel.created and list(tsm_root.iterdir()) == []


@pytest.mark.parametrize(("asked", "provider"), [("tdx", "sev_guest"), ("snp", "tdx_guest")])
def test_wrong_provider_for_the_platform_asked(
    install: Install, tsm_root: Path, asked: str, provider: str
) -> None:
    kernel = install(FakeTsmKernel(tsm_root, provider, b"unused"))
    with pytest.raises(PlatformError, match=f"this machine's TEE is {provider}.*not .*{asked}"):
        platform_by_name(asked, configfs_root=tsm_root).get_evidence(REPORT_DATA)
    assert kernel.inblobs == []  # refused before asking for a report
    assert kernel.removed == kernel.created and list(tsm_root.iterdir()) == []


def test_unknown_provider(install: Install, tsm_root: Path) -> None:
    install(FakeTsmKernel(tsm_root, "arm_cca_guest", b"unused"))
    with pytest.raises(PlatformError, match="unknown provider 'arm_cca_guest'"):
        ConfigfsTsmPlatform(tsm_root).get_evidence(REPORT_DATA)
    with pytest.raises(PlatformError, match="unknown provider 'cca'"):
        ConfigfsTsmPlatform(tsm_root, expected_provider="cca")


def test_empty_report_is_refused(install: Install, tsm_root: Path) -> None:
    install(FakeTsmKernel(tsm_root, "tdx_guest", b""))
    with pytest.raises(PlatformError, match="empty report"):
        ConfigfsTsmPlatform(tsm_root).get_evidence(REPORT_DATA)
    assert list(tsm_root.iterdir()) == []


def test_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "no/configfs"
    with pytest.raises(PlatformError) as info:
        ConfigfsTsmPlatform(root).get_evidence(REPORT_DATA)
    message = str(info.value)
    assert message.startswith(f"configfs-tsm: cannot create report entry in {root}: ")
    assert "No such file or directory" in message and "Linux >= 6.7" in message
    assert "\n" not in message


def test_os_errors_are_one_line_and_the_entry_is_removed(tsm_root: Path) -> None:
    """A root that is a plain directory: no kernel fills the entry."""
    with pytest.raises(PlatformError) as info:
        ConfigfsTsmPlatform(tsm_root).get_evidence(REPORT_DATA)
    message = str(info.value)
    assert message.startswith("configfs-tsm: cannot read ")
    assert message.endswith("/generation: No such file or directory")
    assert list(tsm_root.iterdir()) == []


def test_garbled_generation(
    install: Install, tsm_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = install(FakeTsmKernel(tsm_root, "tdx_guest", b"unused"))
    real_mkdir = kernel.mkdir

    def mkdir(entry: Path) -> None:
        real_mkdir(entry)
        (entry / "generation").write_text("lots\n")

    monkeypatch.setattr(kernel, "mkdir", mkdir)
    with pytest.raises(PlatformError, match="generation is not a number: 'lots'"):
        ConfigfsTsmPlatform(tsm_root).get_evidence(REPORT_DATA)


def test_entries_are_unique_under_concurrency(
    install: Install, tsm_root: Path, snp_report: bytes, snp_auxblob: bytes
) -> None:
    kernel = install(FakeTsmKernel(tsm_root, "sev_guest", snp_report, snp_auxblob))
    platform = ConfigfsTsmPlatform(tsm_root)
    results: list[Evidence] = []
    inputs = [bytes([i]) * 64 for i in range(8)]
    threads = [
        threading.Thread(target=lambda d=d: results.append(platform.get_evidence(d)))
        for d in inputs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 8
    assert sorted(kernel.inblobs) == sorted(inputs)
    assert len(set(kernel.created)) == 8 and list(tsm_root.iterdir()) == []


# --- Gramine SGX -----------------------------------------------------------------


def gramine_dir(root: Path, quote: bytes, attestation_type: str | None = "dcap") -> Path:
    root.mkdir(parents=True)
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(quote)
    if attestation_type is not None:
        (root / "attestation_type").write_text(attestation_type)
    return root


def test_gramine_quote(tmp_path: Path, vectors: Path) -> None:
    quote = (vectors / "intel/sgx_v3_quote.bin").read_bytes() + bytes(64)  # zero padding kept
    root = gramine_dir(tmp_path / "dev/attestation", quote)
    evidence = GramineSgxPlatform(root).get_evidence(REPORT_DATA)
    assert (root / "user_report_data").read_bytes() == REPORT_DATA
    assert evidence == Evidence(kind="sgx", quote=quote)
    assert Evidence.parse(evidence.to_bytes()).quote == quote
    pytest.importorskip("secfl.tee._intel")
    from secfl.tee._verify import verify

    assert verify(evidence, at=utc("2025-07-01")).kind == "sgx"  # padding tolerated


def test_gramine_without_attestation_type_file(tmp_path: Path) -> None:
    root = gramine_dir(tmp_path / "att", b"\x03\x00\x02\x00quote", attestation_type=None)
    assert GramineSgxPlatform(root).get_evidence(REPORT_DATA).quote == b"\x03\x00\x02\x00quote"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("epid", "EPID attestation, which is not supported"),
        ("none", "remote attestation is disabled"),
        ("ias", "unknown attestation type 'ias'"),
    ],
)
def test_gramine_refuses_non_dcap(tmp_path: Path, kind: str, message: str) -> None:
    root = gramine_dir(tmp_path / "att", b"quote", attestation_type=kind)
    with pytest.raises(PlatformError, match=message):
        GramineSgxPlatform(root).get_evidence(REPORT_DATA)
    assert (root / "user_report_data").read_bytes() == b""  # nothing was requested


def test_gramine_errors(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="not running inside a Gramine SGX enclave"):
        GramineSgxPlatform(tmp_path / "missing").get_evidence(REPORT_DATA)
    root = gramine_dir(tmp_path / "att", b"")
    with pytest.raises(PlatformError, match="quote is empty"):
        GramineSgxPlatform(root).get_evidence(REPORT_DATA)
    (root / "user_report_data").unlink()
    with pytest.raises(PlatformError, match=r"cannot write .*user_report_data: No such file"):
        GramineSgxPlatform(root).get_evidence(REPORT_DATA)


# --- detection and names --------------------------------------------------------------


@pytest.fixture
def no_sim_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(platforms.SIM_DIR_ENV, raising=False)


@pytest.fixture
def sim_dir(tmp_path: Path) -> Path:
    from secfl.tee import _simulated as simulated

    simulated.init(tmp_path / "sim")
    return tmp_path / "sim"


def test_detect_prefers_gramine_then_configfs_then_simulated(
    tmp_path: Path, tsm_root: Path, sim_dir: Path, no_sim_env: None
) -> None:
    gramine = gramine_dir(tmp_path / "dev/attestation", b"quote")
    found = detect_platform(configfs_root=tsm_root, gramine_root=gramine, sim_dir=sim_dir)
    assert isinstance(found, GramineSgxPlatform) and found.root == gramine

    (gramine / "quote").unlink()
    found = detect_platform(configfs_root=tsm_root, gramine_root=gramine, sim_dir=sim_dir)
    assert isinstance(found, ConfigfsTsmPlatform) and found.root == tsm_root
    assert found.expected_provider is None

    missing = tmp_path / "missing"
    found = detect_platform(configfs_root=missing, gramine_root=missing, sim_dir=sim_dir)
    assert found.name == "simulated"
    assert found.get_evidence(REPORT_DATA).kind == "simulated"


def test_detect_simulated_from_environment(
    tmp_path: Path, sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(platforms.SIM_DIR_ENV, str(sim_dir))
    missing = tmp_path / "missing"
    assert detect_platform(configfs_root=missing, gramine_root=missing).name == "simulated"
    assert platform_by_name("simulated").name == "simulated"


def test_detect_nothing(tmp_path: Path, no_sim_env: None) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(PlatformError) as info:
        detect_platform(configfs_root=missing, gramine_root=missing)
    message = str(info.value)
    assert message.startswith("no TEE found: ")
    assert f"configfs-tsm at {missing}" in message and "`secfl sim init DIR`" in message


def test_platform_by_name(tmp_path: Path, tsm_root: Path, sim_dir: Path, no_sim_env: None) -> None:
    kw = {"configfs_root": tsm_root, "gramine_root": tmp_path / "att", "sim_dir": sim_dir}
    tdx = platform_by_name("tdx", **kw)
    snp = platform_by_name("snp", **kw)
    sgx = platform_by_name("sgx", **kw)
    assert isinstance(tdx, ConfigfsTsmPlatform) and tdx.expected_provider == "tdx_guest"
    assert isinstance(snp, ConfigfsTsmPlatform) and snp.expected_provider == "sev_guest"
    assert (tdx.name, snp.name, tdx.root) == ("tdx", "snp", tsm_root)
    assert isinstance(sgx, GramineSgxPlatform) and sgx.root == tmp_path / "att"
    assert platform_by_name("simulated", **kw).name == "simulated"
    assert isinstance(platform_by_name("auto", **kw), ConfigfsTsmPlatform)
    with pytest.raises(PlatformError, match="unknown platform 'nitro'"):
        platform_by_name("nitro", **kw)
    with pytest.raises(PlatformError, match="no simulation folder given"):
        platform_by_name("simulated", configfs_root=tsm_root)


def test_fake_kernel_threads_do_not_leak(install: Install, tsm_root: Path) -> None:
    """An entry whose outblob is never read still shuts its server down on rmdir."""
    kernel = install(FakeTsmKernel(tsm_root, "tdx_guest", b"x"))
    before = threading.active_count()
    start = time.monotonic()
    with pytest.raises(PlatformError):
        ConfigfsTsmPlatform(tsm_root, expected_provider="sev_guest").get_evidence(REPORT_DATA)
    assert threading.active_count() <= before and time.monotonic() - start < 5
    assert kernel.removed == kernel.created
