"""Evidence producers: the TEE this process runs in, asked for a quote over 64 bytes.

- :class:`ConfigfsTsmPlatform`: Intel TDX and AMD SEV-SNP guests through Linux
  configfs-tsm (kernel >= 6.7, ``Documentation/ABI/testing/configfs-tsm``).
- :class:`GramineSgxPlatform`: Intel SGX enclaves run by Gramine, through its
  ``/dev/attestation`` pseudo-files (DCAP only).
- ``secfl.tee._simulated.SimulatedPlatform``: the software TEE for development.

:func:`detect_platform` picks the one present; :func:`platform_by_name` builds
the one asked for. Every failure is a :class:`PlatformError` with one line that
says which file or step failed and why.

Report data is always exactly 64 bytes: callers hash what they bind (a nonce, a
key) first, so nothing is silently padded or truncated here.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import threading
import uuid
from pathlib import Path
from typing import Final

from secfl.errors import PlatformError
from secfl.tee._evidence import PROVIDERS, Evidence

__all__ = [
    "DEFAULT_CONFIGFS_ROOT",
    "DEFAULT_GRAMINE_ROOT",
    "PLATFORM_NAMES",
    "PRIVLEVEL_MAX",
    "REPORT_DATA_SIZE",
    "SIM_DIR_ENV",
    "ConfigfsTsmPlatform",
    "GramineSgxPlatform",
    "Platform",
    "check_report_data",
    "detect_platform",
    "platform_by_name",
]

REPORT_DATA_SIZE: Final = 64
DEFAULT_CONFIGFS_ROOT: Final = Path("/sys/kernel/config/tsm/report")
DEFAULT_GRAMINE_ROOT: Final = Path("/dev/attestation")
#: Environment variable naming a ``secfl sim init`` folder, the fallback of detection.
SIM_DIR_ENV: Final = "SECFL_SIM_DIR"
PLATFORM_NAMES: Final = ("auto", "simulated", "tdx", "snp", "sgx")
#: Highest privilege level configfs-tsm accepts (SEV-SNP VMPL 0..3).
PRIVLEVEL_MAX: Final = 3

#: The provider of each platform name (looked up by the name a user gave).
_PROVIDER_OF_KIND: Final[dict[str, str]] = {kind: provider for provider, kind in PROVIDERS.items()}


def check_report_data(report_data: bytes) -> bytes:
    """Return ``report_data`` as bytes if it is exactly 64 bytes, else refuse it."""
    if not isinstance(report_data, bytes | bytearray | memoryview):
        raise PlatformError(f"report_data must be bytes, not {type(report_data).__name__}")
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise PlatformError(
            f"report_data must be exactly {REPORT_DATA_SIZE} bytes (hash longer data first), "
            f"got {len(data)}"
        )
    return data


class Platform(abc.ABC):
    """A TEE that signs 64 bytes of report data into attestation evidence.

    Subclasses set ``name`` ("simulated", "tdx", "snp", "sgx") and implement
    :meth:`get_evidence`, starting with :func:`check_report_data`. They may add
    keyword-only arguments to ``get_evidence`` (the simulated TEE takes a
    ``measurement``).
    """

    name: str

    @abc.abstractmethod
    def get_evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose signed report data is ``report_data`` (exactly 64 bytes)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PlatformError(f"{what}: cannot read {path}: {_reason(exc)}") from None


def _write(path: Path, data: bytes, what: str) -> None:
    """Write ``data`` to an existing pseudo-file, in as few ``write`` calls as it takes.

    No ``O_CREAT``: the kernel or Gramine provides the file; a missing one is an error.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise PlatformError(f"{what}: cannot write {path}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ConfigfsTsmPlatform(Platform):
    """TDX or SEV-SNP evidence through Linux configfs-tsm.

    Each call creates its own report entry under ``root`` (a unique name), so
    concurrent callers do not share state; the kernel's ``generation`` counter
    still catches another writer that opened the same entry. The entry is removed
    afterwards, whatever happened.

    ``expected_provider`` ("tdx_guest" or "sev_guest") makes a TDX request on an
    SNP machine (or the reverse) fail clearly. ``privlevel`` (SNP only: the VMPL
    the report is requested for) is left to the kernel's default unless given.

    ``name`` is the kind expected, else the kind seen on the last call, else
    "configfs-tsm" (the provider is only known once an entry exists).
    """

    def __init__(
        self,
        root: Path | str = DEFAULT_CONFIGFS_ROOT,
        *,
        expected_provider: str | None = None,
        privlevel: int | None = None,
    ) -> None:
        if expected_provider is not None and expected_provider not in PROVIDERS:
            raise PlatformError(
                f"configfs-tsm: unknown provider '{expected_provider}' "
                f"(one of {', '.join(sorted(PROVIDERS))})"
            )
        if privlevel is not None and not 0 <= privlevel <= PRIVLEVEL_MAX:
            raise PlatformError(
                f"configfs-tsm: privlevel must be 0..{PRIVLEVEL_MAX}, not {privlevel}"
            )
        self.root = Path(root)
        self.expected_provider = expected_provider
        self.privlevel = privlevel
        self.name = PROVIDERS[expected_provider] if expected_provider else "configfs-tsm"

    # The two steps where configfs differs from a plain directory: mkdir makes the
    # kernel populate the entry with its attribute files, and rmdir removes an
    # entry that still shows them. Tests that play the kernel hook in here.
    def _make_entry(self, entry: Path) -> None:
        os.mkdir(entry)

    def _remove_entry(self, entry: Path) -> None:
        os.rmdir(entry)

    def get_evidence(self, report_data: bytes) -> Evidence:
        """mkdir an entry; read generation and provider; write inblob (and privlevel);
        read outblob and auxblob; require generation to have moved by our writes only;
        rmdir the entry."""
        data = check_report_data(report_data)
        entry = self.root / f"secfl-{uuid.uuid4().hex}"
        try:
            self._make_entry(entry)
        except OSError as exc:
            raise PlatformError(self._mkdir_failure(exc)) from None
        try:
            evidence = self._request(entry, data)
        except BaseException:
            with contextlib.suppress(OSError):
                self._remove_entry(entry)
            raise
        try:
            self._remove_entry(entry)
        except OSError as exc:
            raise PlatformError(
                f"configfs-tsm: cannot remove report entry {entry}: {_reason(exc)}"
            ) from None
        return evidence

    def _mkdir_failure(self, exc: OSError) -> str:
        where = f"configfs-tsm: cannot create report entry in {self.root}: {_reason(exc)}"
        if exc.errno == errno.ENOENT:
            return (
                f"{where} (no configfs-tsm here: needs Linux >= 6.7 with configfs mounted, "
                "inside a TDX or SEV-SNP guest)"
            )
        if exc.errno == errno.ENXIO:
            return f"{where} (no TSM provider registered: not a TDX or SEV-SNP guest?)"
        return where

    def _request(self, entry: Path, data: bytes) -> Evidence:
        generation = self._generation(entry)
        provider = _read(entry / "provider", "configfs-tsm").decode(errors="replace").strip()
        kind = PROVIDERS.get(provider)
        if kind is None:
            raise PlatformError(
                f"configfs-tsm: unknown provider '{provider}' in {entry} "
                f"(secfl knows {', '.join(sorted(PROVIDERS))})"
            )
        if self.expected_provider is not None and provider != self.expected_provider:
            raise PlatformError(
                f"configfs-tsm: this machine's TEE is {provider} ({kind}), not "
                f"{self.expected_provider} ({PROVIDERS[self.expected_provider]}) as requested"
            )

        _write(entry / "inblob", data, "configfs-tsm")
        generation += 1
        if self.privlevel is not None:
            if not (entry / "privlevel").exists():
                raise PlatformError(f"configfs-tsm: provider {provider} does not take a privlevel")
            _write(entry / "privlevel", f"{self.privlevel}\n".encode(), "configfs-tsm")
            generation += 1

        outblob = _read(entry / "outblob", "configfs-tsm")
        auxblob = self._auxblob(entry)
        seen = self._generation(entry)
        if seen != generation:
            raise PlatformError(
                f"configfs-tsm: another process wrote to report entry {entry} while it was in "
                f"use (generation {seen}, expected {generation}); the report may not carry our "
                "report_data, retry"
            )
        if not outblob:
            raise PlatformError(f"configfs-tsm: the kernel returned an empty report in {entry}")
        self.name = kind
        return Evidence(kind=kind, quote=outblob, aux=auxblob or None, provider=provider)

    @staticmethod
    def _auxblob(entry: Path) -> bytes | None:
        """The auxblob, or None where the provider does not show one (TDX)."""
        try:
            return (entry / "auxblob").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PlatformError(
                f"configfs-tsm: cannot read {entry / 'auxblob'}: {_reason(exc)}"
            ) from None

    @staticmethod
    def _generation(entry: Path) -> int:
        text = _read(entry / "generation", "configfs-tsm").decode(errors="replace").strip()
        try:
            return int(text)
        except ValueError:
            raise PlatformError(
                f"configfs-tsm: {entry / 'generation'} is not a number: '{text[:40]}'"
            ) from None


#: Gramine's /dev/attestation is one shared pair of files per enclave: serialise
#: writers within this process so one thread's report data cannot land in another's quote.
_GRAMINE_LOCK = threading.Lock()


class GramineSgxPlatform(Platform):
    """SGX DCAP quotes from inside a Gramine enclave.

    Writes the report data to ``<root>/user_report_data`` and reads
    ``<root>/quote``. Only DCAP: EPID attestation (retired by Intel) is refused.
    The quote is returned as read; verifiers tolerate its trailing zero padding.
    """

    name = "sgx"

    def __init__(self, root: Path | str = DEFAULT_GRAMINE_ROOT) -> None:
        self.root = Path(root)

    def get_evidence(self, report_data: bytes) -> Evidence:
        data = check_report_data(report_data)
        if not self.root.is_dir():
            raise PlatformError(
                f"gramine: {self.root} not found: not running inside a Gramine SGX enclave"
            )
        self._check_attestation_type()
        with _GRAMINE_LOCK:
            _write(self.root / "user_report_data", data, "gramine")
            quote = _read(self.root / "quote", "gramine")
        if not quote:
            raise PlatformError(f"gramine: {self.root / 'quote'} is empty")
        return Evidence(kind="sgx", quote=quote)

    def _check_attestation_type(self) -> None:
        path = self.root / "attestation_type"
        if not path.exists():
            return
        kind = _read(path, "gramine").decode(errors="replace").strip().strip("\0")
        if kind == "dcap":
            return
        if kind == "epid":
            raise PlatformError(
                "gramine: the enclave uses EPID attestation, which is not supported; "
                'set sgx.remote_attestation = "dcap" in the manifest'
            )
        if kind == "none":
            raise PlatformError(
                "gramine: remote attestation is disabled in this enclave; "
                'set sgx.remote_attestation = "dcap" in the manifest'
            )
        raise PlatformError(f"gramine: unknown attestation type '{kind}' in {path}")


def _sim_dir(sim_dir: Path | str | None) -> Path | None:
    if sim_dir is not None:
        return Path(sim_dir)
    env = os.environ.get(SIM_DIR_ENV)
    return Path(env) if env else None


def _simulated(sim_dir: Path) -> Platform:
    from secfl.tee._simulated import SimulatedPlatform

    return SimulatedPlatform(sim_dir)


def detect_platform(
    *,
    configfs_root: Path | str = DEFAULT_CONFIGFS_ROOT,
    gramine_root: Path | str = DEFAULT_GRAMINE_ROOT,
    sim_dir: Path | str | None = None,
) -> Platform:
    """The TEE present, in this order: Gramine SGX, configfs-tsm (TDX or SNP), simulated.

    The simulated TEE is chosen only when no hardware is found and a simulation
    folder is given (``sim_dir``, else ``$SECFL_SIM_DIR``). configfs-tsm's provider
    is only known once asked, so a TDX/SNP mismatch shows on first use.
    """
    gramine = Path(gramine_root)
    if (gramine / "quote").exists():
        return GramineSgxPlatform(gramine)
    configfs = Path(configfs_root)
    if configfs.is_dir():
        return ConfigfsTsmPlatform(configfs)
    sim = _sim_dir(sim_dir)
    if sim is not None:
        return _simulated(sim)
    raise PlatformError(
        f"no TEE found: no {gramine} (Gramine SGX) and no configfs-tsm at {configfs}; "
        "for development, create a simulated TEE with `secfl sim init DIR` and pass it "
        f"(--sim-dir or ${SIM_DIR_ENV})"
    )


def platform_by_name(
    name: str,
    *,
    configfs_root: Path | str = DEFAULT_CONFIGFS_ROOT,
    gramine_root: Path | str = DEFAULT_GRAMINE_ROOT,
    sim_dir: Path | str | None = None,
) -> Platform:
    """The platform called ``name``: auto, simulated, tdx, snp or sgx.

    ``tdx`` and ``snp`` expect that provider, so asking for one on a machine of
    the other fails on first use with a message that says both.
    """
    if name == "auto":
        return detect_platform(
            configfs_root=configfs_root, gramine_root=gramine_root, sim_dir=sim_dir
        )
    if name == "simulated":
        sim = _sim_dir(sim_dir)
        if sim is None:
            raise PlatformError(
                f"simulated platform: no simulation folder given (--sim-dir or ${SIM_DIR_ENV}); "
                "create one with `secfl sim init DIR`"
            )
        return _simulated(sim)
    if name in ("tdx", "snp"):
        return ConfigfsTsmPlatform(configfs_root, expected_provider=_PROVIDER_OF_KIND[name])
    if name == "sgx":
        return GramineSgxPlatform(gramine_root)
    raise PlatformError(f"unknown platform '{name}' (one of {', '.join(PLATFORM_NAMES)})")
