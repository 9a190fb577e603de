"""The workload side of attestation: prove what runs here and receive its identity.

:func:`enroll` makes a fresh HPKE key pair and a TLS key with its CSR inside this
process, gets a nonce from the (already verified) SPM, produces evidence binding
the three, and opens what the SPM releases: a certificate for the service, the
policy's CA certificate, the service's secrets and a session token. Keys never
leave the process; secrets are only ever held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID

from secfl._internal.x509util import private_pem
from secfl.errors import SpmError
from secfl.policy._keys import PrivateKey
from secfl.spm import _sealing as sv
from secfl.spm._report_data import spki_sha256, workload_report_data
from secfl.spm._site_key import sign_enrolment
from secfl.spm.client import SpmClient
from secfl.tee._platforms import Platform
from secfl.tee._simulated import SimulatedPlatform

__all__ = ["Enrollment", "enroll", "make_csr"]


@dataclass(frozen=True)
class Enrollment:
    """What an attested workload holds after :func:`enroll` (in memory only)."""

    policy: str
    service: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: str
    ca_certificate: str
    secrets: dict[str, sv.Value] = field(repr=False)
    session_token: str = field(repr=False)
    session_expires: datetime
    policy_digest: str
    policy_version: int

    @property
    def key_pem(self) -> bytes:
        return private_pem(self.key)

    def render(self, name: str, selector: str | None = None) -> str:
        """The text of ``$$SECFL::name[:selector]$$`` for this workload."""
        return sv.render(name, self.secrets[name], selector)


def make_csr(key: ec.EllipticCurvePrivateKey, service: str) -> bytes:
    """A PEM certificate signing request for ``key``, named after ``service``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def enroll(
    client: SpmClient,
    platform: Platform,
    policy: str,
    service: str,
    *,
    measurement: str | None = None,
    replaces: str | None = None,
    site_key: PrivateKey | None = None,
) -> Enrollment:
    """Attest this workload as ``service`` of ``policy`` and receive its identity.

    ``measurement`` is for the simulated platform only (hardware measures itself);
    ``replaces``, the session token of this workload's last attestation, ends that
    session (a renewal); ``site_key``, the site's private key (from the file
    ``SECFL_SITE_KEY`` names: :func:`~secfl.spm._site_key.load_site_key`), signs this
    enrolment, as a service whose policy entry names a ``site_key`` requires.
    """
    hpke_key = x25519.X25519PrivateKey.generate()
    hpke_public = hpke_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr_pem = make_csr(tls_key, service)
    nonce = client.nonce()
    report_data = workload_report_data(nonce, hpke_public, spki_sha256(tls_key.public_key()))
    if measurement is not None:
        if not isinstance(platform, SimulatedPlatform):
            raise SpmError("enroll: a measurement is given only to the simulated platform")
        evidence = platform.get_evidence(report_data, measurement=measurement)
    else:
        evidence = platform.get_evidence(report_data)
    reply = client.attest(
        policy,
        service,
        nonce=nonce,
        evidence=evidence,
        hpke_public_key=hpke_public,
        csr_pem=csr_pem,
        replaces=replaces,
        site_signature=None
        if site_key is None
        else sign_enrolment(site_key, policy, service, report_data),
    )
    values = sv.open_release(
        reply["sealed_secrets"], hpke_key, sv.release_info(policy, service, nonce)
    )
    return Enrollment(
        policy=policy,
        service=service,
        key=tls_key,
        certificate=reply["certificate"],
        ca_certificate=reply["ca_certificate"],
        secrets=values,
        session_token=reply["session_token"],
        session_expires=datetime.fromisoformat(reply["session_expires"]),
        policy_digest=reply["policy_digest"],
        policy_version=int(reply["policy_version"]),
    )
