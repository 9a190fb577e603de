"""The simulated TEE: a software "vendor" for development and CI.

``secfl sim init DIR`` creates a simulation root CA and a platform key that the
root certifies. :class:`SimulatedPlatform` signs quotes with that platform key;
:func:`verify_quote` accepts them only against the root it is explicitly given,
so simulated evidence can never pass a verifier that was not told to trust that
particular simulation. Claims from it always say ``simulated: true``.

It runs the whole protocol on any laptop. It protects nothing against root: the
platform key is a file.

Quote format, version 1 (all integers little-endian)::

    offset  size  field
    0       8     magic "SECFLSIM"
    8       2     format version = 1
    10      2     flags: bit 0 = debug
    12      4     reserved, zero
    16      48    measurement (SHA-384, see ``secfl measure``)
    64      64    report_data
    128     2     L = length of the platform certificate
    130     L     platform certificate (DER, issued by the simulation root)
    130+L   2     S = length of the signature
    132+L   S     ECDSA P-256 / SHA-256 signature (DER) over bytes [0, 130+L)

P-256 like the attestation key of Intel DCAP quotes.

Trailing zero padding is tolerated, like for hardware quotes.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secfl._internal import files, x509util
from secfl._internal.binary import Reader
from secfl.errors import PlatformError, VerificationError
from secfl.tee._claims import Claims
from secfl.tee._evidence import SIMULATED_MAGIC, Evidence
from secfl.tee._platforms import REPORT_DATA_SIZE, Platform, check_report_data

__all__ = [
    "FLAG_DEBUG",
    "FORMAT_VERSION",
    "MEASUREMENT_SIZE",
    "PLATFORM_CERT",
    "PLATFORM_KEY",
    "ROOT_CERT",
    "ROOT_KEY",
    "SIM_PLATFORM_OID",
    "SimulatedPlatform",
    "SimulatedQuote",
    "init",
    "parse_quote",
    "verify_quote",
]

FORMAT_VERSION = 1
FLAG_DEBUG = 0x1
MEASUREMENT_SIZE = 48

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key"
PLATFORM_CERT = "platform.pem"
PLATFORM_KEY = "platform.key"

#: Marks a certificate as a simulated-TEE platform key (private OID arc, not a vendor's).
SIM_PLATFORM_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.9999.1")


@dataclass(frozen=True)
class SimulatedQuote:
    """A parsed simulated quote (before any signature check)."""

    version: int
    flags: int
    measurement: bytes
    report_data: bytes
    platform_cert: bytes
    signed: bytes
    signature: bytes

    @property
    def debug(self) -> bool:
        return bool(self.flags & FLAG_DEBUG)


def init(directory: Path | str, *, force: bool = False, days: int = 3650) -> Path:
    """Create a simulation root CA and a certified platform key in ``directory``.

    Refuses to overwrite an existing simulation unless ``force``. Private keys are
    written with mode 0600. Returns the root certificate's path.
    """
    path = Path(directory)
    if (path / ROOT_CERT).exists() and not force:
        raise PlatformError(f"simulation: {path} already holds a simulation root (use --force)")
    path.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC) - timedelta(minutes=5)
    tag = os.urandom(4).hex()

    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secfl simulated TEE (NOT SECURE)"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"secfl simulation root {tag}"),
        ]
    )
    root = x509util.self_signed_ca(root_key, root_name, now, days)

    platform_key = ec.generate_private_key(ec.SECP256R1())
    platform = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(
                        NameOID.ORGANIZATION_NAME, "secfl simulated TEE (NOT SECURE)"
                    ),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"secfl simulated platform {tag}"),
                ]
            )
        )
        .issuer_name(root_name)
        .public_key(platform_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.UnrecognizedExtension(SIM_PLATFORM_OID, b"\x05\x00"), False)
        .sign(root_key, hashes.SHA256())
    )

    _write_file(path / ROOT_KEY, x509util.private_pem(root_key), 0o600)
    _write_file(path / PLATFORM_KEY, x509util.private_pem(platform_key), 0o600)
    _write_file(path / PLATFORM_CERT, platform.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_file(path / ROOT_CERT, root.public_bytes(serialization.Encoding.PEM), 0o644)
    return path / ROOT_CERT


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, ``mode`` from its first byte (a fresh
    ``O_EXCL | O_NOFOLLOW`` name, then a rename: nothing planted at ``path`` ever
    receives a key); a failure is one line."""
    try:
        files.atomic_write(path, data, mode=mode)
    except OSError as exc:
        raise PlatformError(f"simulation: cannot write '{path}': {exc.strerror or exc}") from None


def _measurement_bytes(measurement: bytes | str | None) -> bytes:
    if measurement is None:
        return bytes(MEASUREMENT_SIZE)
    if isinstance(measurement, str):
        try:
            measurement = bytes.fromhex(measurement)
        except ValueError:
            raise PlatformError("simulation: measurement is not hex") from None
    if len(measurement) != MEASUREMENT_SIZE:
        raise PlatformError(
            f"simulation: measurement must be {MEASUREMENT_SIZE} bytes (SHA-384), "
            f"got {len(measurement)}"
        )
    return measurement


class SimulatedPlatform(Platform):
    """Produces simulated quotes with the platform key of a ``secfl sim init`` folder.

    ``measurement`` (48 bytes or hex) stands in for what hardware would measure:
    the ``secfl measure`` digest of the workload. Default: all zeros.
    """

    name = "simulated"

    def __init__(
        self,
        sim_dir: Path | str,
        *,
        measurement: bytes | str | None = None,
        debug: bool = False,
    ) -> None:
        self.sim_dir = Path(sim_dir)
        try:
            key_pem = (self.sim_dir / PLATFORM_KEY).read_bytes()
            cert_pem = (self.sim_dir / PLATFORM_CERT).read_bytes()
        except OSError as exc:
            raise PlatformError(
                f"simulation: cannot read the platform key in {self.sim_dir} ({exc.strerror}); "
                "create one with `secfl sim init DIR`"
            ) from None
        redo = "re-create the simulation with `secfl sim init --force DIR`"
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PlatformError(
                f"simulation: '{self.sim_dir / PLATFORM_KEY}' is not an EC private key "
                f"(damaged?); {redo}"
            )
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise PlatformError(
                f"simulation: '{self.sim_dir / PLATFORM_CERT}' is not a PEM certificate "
                f"(damaged?); {redo}"
            ) from None
        self._key = key
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.measurement = _measurement_bytes(measurement)
        self.debug = debug

    @property
    def root_pem(self) -> bytes:
        """The simulation root a verifier must be given to accept these quotes."""
        try:
            return (self.sim_dir / ROOT_CERT).read_bytes()
        except OSError as exc:
            raise PlatformError(
                f"simulation: cannot read '{self.sim_dir / ROOT_CERT}' ({exc.strerror}); "
                "re-create the simulation with `secfl sim init --force DIR`"
            ) from None

    def get_evidence(self, report_data: bytes, measurement: bytes | str | None = None) -> Evidence:
        report_data = check_report_data(report_data)
        mr = self.measurement if measurement is None else _measurement_bytes(measurement)
        flags = FLAG_DEBUG if self.debug else 0
        body = b"".join(
            [
                SIMULATED_MAGIC,
                FORMAT_VERSION.to_bytes(2, "little"),
                flags.to_bytes(2, "little"),
                bytes(4),
                mr,
                report_data,
                len(self._cert_der).to_bytes(2, "little"),
                self._cert_der,
            ]
        )
        signature = self._key.sign(body, ec.ECDSA(hashes.SHA256()))
        quote = body + len(signature).to_bytes(2, "little") + signature
        return Evidence(kind="simulated", quote=quote)


def parse_quote(raw: bytes) -> SimulatedQuote:
    """Split a simulated quote into its fields; any malformation is a VerificationError."""
    r = Reader(raw, what="simulated quote")
    if r.bytes(8, "magic") != SIMULATED_MAGIC:
        raise r.malformed("bad magic", 0)
    version = r.u16("version")
    if version != FORMAT_VERSION:
        raise r.malformed(f"unsupported format version {version}", 8)
    flags = r.u16("flags")
    if flags & ~FLAG_DEBUG:
        raise r.malformed(f"unknown flags {flags:#x}", 10)
    if r.u32("reserved"):
        raise r.malformed("reserved bytes are not zero", 12)
    measurement = r.bytes(MEASUREMENT_SIZE, "measurement")
    report_data = r.bytes(REPORT_DATA_SIZE, "report_data")
    cert = r.bytes(r.u16("certificate length"), "platform certificate")
    signed = raw[: r.offset]
    signature = r.bytes(r.u16("signature length"), "signature")
    r.expect_zero_tail()
    return SimulatedQuote(version, flags, measurement, report_data, cert, signed, signature)


def verify_quote(quote: bytes, *, at: datetime, root_pem: bytes) -> Claims:
    """Verify a simulated quote against the simulation root ``root_pem``."""
    q = parse_quote(quote)
    root = _load_root(bytes(root_pem))
    platform = _load_platform(q.platform_cert)
    x509util.check_chain(
        [platform, root],
        pinned_roots=[x509util.fingerprint(root)],
        at=at,
        what="simulated platform chain",
    )
    try:
        platform.extensions.get_extension_for_oid(SIM_PLATFORM_OID)
        is_ca = platform.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        key = platform.public_key()
    except (x509.ExtensionNotFound, ValueError):
        raise VerificationError(
            "chain: the platform certificate is not a simulated-TEE platform certificate"
        ) from None
    if is_ca:
        raise VerificationError("chain: the simulated platform certificate must not be a CA")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("chain: the simulated platform key is not an EC key")
    try:
        key.verify(q.signature, q.signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise VerificationError(
            "signature: the simulated quote is not signed by its platform key"
        ) from None
    return Claims(
        kind="simulated",
        quote_version=q.version,
        measurements={"measurement": q.measurement.hex()},
        report_data=q.report_data.hex(),
        debug=q.debug,
        tcb_status="unknown",
        advisory_ids=[],
        platform={
            "sim_root_sha256": x509util.fingerprint(root),
            "platform_cert_sha256": x509util.fingerprint(platform),
        },
        simulated=True,
    )


@functools.lru_cache(maxsize=64)
def _load_root(root_pem: bytes) -> x509.Certificate:
    """The simulation root (parsed once per distinct PEM: verifiers see the same one)."""
    roots = x509util.load_pem_chain(root_pem, "simulation root")
    if len(roots) != 1:
        raise VerificationError("simulation: the simulation root must be one certificate")
    return roots[0]


@functools.lru_cache(maxsize=256)
def _load_platform(der: bytes) -> x509.Certificate:
    return x509util.load_der(der, "simulated platform certificate")
