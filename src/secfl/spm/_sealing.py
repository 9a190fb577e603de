"""Secret values: generated from their policy definition, rendered for injection,
sealed to an attested workload.

A secret value is a small JSON-able dict; what it holds depends on its kind:

- ``aes-256``, ``random``, ``imported``: ``raw`` (base64);
- ``ed25519``, ``ecdsa-p256``: ``key`` (PKCS#8 PEM), ``pub`` (PEM);
- ``x509-ca``: ``key``, ``crt`` (self-signed);
- ``x509``: ``key``, ``crt``, ``chain`` (the issuing CA's certificate).

:func:`render` turns a value and a placeholder selector into the text that is
substituted for ``$$SECFL::name[:selector]$$``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secfl._internal.canonical import canonical_sha256
from secfl._internal.x509util import general_names, private_pem, self_signed_ca, session_name
from secfl.errors import SpmError
from secfl.policy._model import Board
from secfl.policy._secrets import CaSecret, CertSecret, Secret

__all__ = [
    "CLOCK_SKEW",
    "IMPORT_SUITE",
    "RELEASE_SUITE",
    "Value",
    "board_binding",
    "board_binding_of",
    "definition_digest",
    "generate",
    "import_info",
    "issue_service_certificate",
    "member_key_digest",
    "needs_renewal",
    "open_imported",
    "open_release",
    "release_info",
    "release_key",
    "render",
    "restrict",
    "seal_imported",
    "seal_release",
    "service_uri",
]

Value = dict[str, str]

RELEASE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
IMPORT_SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


#: Certificates are valid from this long before they are issued (clocks differ).
CLOCK_SKEW = timedelta(minutes=5)


def definition_digest(secret: Secret) -> str:
    """Digest of a secret's definition: a changed definition means a new value."""
    return canonical_sha256(secret.model_dump(mode="json"))


def _pem_key(key: Any) -> str:
    return private_pem(key).decode()


def _pem_pub(key: Any) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _raw(data: bytes, kind: str) -> Value:
    return {"kind": kind, "raw": base64.b64encode(data).decode()}


def generate(secret: Secret, values: dict[str, Value], now: datetime) -> Value:
    """A fresh value for ``secret``; x509 certificates need their CA in ``values``."""
    if secret.kind == "aes-256":
        return _raw(os.urandom(32), secret.kind)
    if secret.kind == "random":
        return _raw(os.urandom(secret.size), secret.kind)
    if secret.kind in ("ed25519", "ecdsa-p256"):
        key = (
            ed25519.Ed25519PrivateKey.generate()
            if secret.kind == "ed25519"
            else ec.generate_private_key(ec.SECP256R1())
        )
        return {"kind": secret.kind, "key": _pem_key(key), "pub": _pem_pub(key.public_key())}
    if secret.kind == "x509-ca":
        return _make_ca(secret, now)
    if secret.kind == "x509":
        return _make_cert(secret, values[secret.issuer], now)
    raise SpmError(f"secrets: '{secret.name}' of kind {secret.kind} cannot be generated")


def _make_ca(secret: CaSecret, now: datetime) -> Value:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secret.common_name)])
    cert = self_signed_ca(key, name, now - CLOCK_SKEW, secret.validity_days)
    return {"kind": "x509-ca", "key": _pem_key(key), "crt": _pem_cert(cert)}


def _ca_parts(ca: Value) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key(ca["key"].encode(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SpmError("secrets: CA key is not an EC key")
    return key, x509.load_pem_x509_certificate(ca["crt"].encode())


def _leaf(
    ca: Value,
    public_key: Any,
    subject: x509.Name,
    sans: list[x509.GeneralName],
    usage: list[str],
    not_after: datetime,
    now: datetime,
    *,
    serial: int | None = None,
) -> x509.Certificate:
    ca_key, ca_cert = _ca_parts(ca)
    ekus = [
        *([ExtendedKeyUsageOID.SERVER_AUTH] if "server" in usage else []),
        *([ExtendedKeyUsageOID.CLIENT_AUTH] if "client" in usage else []),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, True, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _make_cert(secret: CertSecret, ca: Value, now: datetime) -> Value:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(
        ca,
        key.public_key(),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secret.common_name)]),
        general_names(secret.sans),
        list(secret.usage),
        now + timedelta(days=secret.validity_days),
        now,
    )
    return {"kind": "x509", "key": _pem_key(key), "crt": _pem_cert(cert), "chain": ca["crt"]}


def needs_renewal(secret: Secret, value: Value, now: datetime) -> bool:
    """An x509 secret within ``renew_before_days`` of expiry is renewed at release."""
    if not isinstance(secret, CertSecret):
        return False
    cert = x509.load_pem_x509_certificate(value["crt"].encode())
    return cert.not_valid_after_utc - timedelta(days=secret.renew_before_days) <= now


def service_uri(policy: str, service: str) -> str:
    """The URI SAN that names an attested service in its certificate."""
    return f"secfl://{policy}/{service}"


def issue_service_certificate(
    ca: Value,
    csr: x509.CertificateSigningRequest,
    *,
    policy: str,
    service: str,
    ttl_seconds: int,
    now: datetime,
) -> x509.Certificate:
    """Sign an attested workload's CSR key for ``service``, whatever the CSR asked for.

    Subject CN and DNS SAN are the service name; a second DNS SAN names this very
    certificate (:func:`~secfl._internal.x509util.session_name`: peers pin it); a URI
    SAN ``secfl://policy/service`` identifies it to peers; usable for TLS server and
    client authentication.
    """
    serial = x509.random_serial_number()
    return _leaf(
        ca,
        csr.public_key(),
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, policy),
                x509.NameAttribute(NameOID.COMMON_NAME, service),
            ]
        ),
        [
            x509.DNSName(service),
            x509.DNSName(session_name(serial, service)),
            x509.UniformResourceIdentifier(service_uri(policy, service)),
        ],
        ["server", "client"],
        now + timedelta(seconds=ttl_seconds),
        now,
        serial=serial,
    )


# --- rendering ----------------------------------------------------------------------------


def render(name: str, value: Value, selector: str | None) -> str:
    """The text for ``$$SECFL::name[:selector]$$``; an inapplicable selector is an error."""
    kind = value["kind"]
    if "raw" in value:
        raw = base64.b64decode(value["raw"])
        if selector == "hex" or (selector is None and kind != "imported"):
            return raw.hex()
        if selector == "base64":
            return value["raw"]
        if selector is None:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SpmError(
                    f"secrets: '{name}' is not UTF-8 text; use :hex or :base64"
                ) from None
    else:
        part = selector if selector is not None else ("crt" if "crt" in value else "key")
        if part == "pub" and "pub" not in value and "crt" in value:
            cert = x509.load_pem_x509_certificate(value["crt"].encode())
            return _pem_pub(cert.public_key())
        if part == "chain" and kind == "x509-ca":
            part = "crt"
        if part in value and part != "kind":
            return value[part]
    raise SpmError(f"secrets: selector ':{selector}' does not apply to '{name}' ({kind})")


def restrict(value: Value, selectors: set[str | None]) -> Value:
    """Only the parts of ``value`` that ``selectors`` render (``"*"``: all of it)."""
    if "*" in selectors:
        return value
    keep = {"kind"}
    for selector in selectors:
        if "raw" in value:
            keep.add("raw")
        elif selector is None:
            keep.add("crt" if "crt" in value else "key")
        elif (selector == "pub" and "pub" not in value) or (
            selector == "chain" and value["kind"] == "x509-ca"
        ):
            keep.add("crt")
        else:
            keep.add(selector)
    return {k: v for k, v in value.items() if k in keep}


# --- sealing ------------------------------------------------------------------------------


def release_info(policy: str, service: str, nonce: bytes) -> bytes:
    """HPKE info binding a release to its policy, service and attestation nonce."""
    return f"secfl/secret-release/v1\n{policy}/{service}/{nonce.hex()}".encode()


def seal_release(values: dict[str, Value], hpke_public_key: bytes, info: bytes) -> bytes:
    """Seal released values to the workload's X25519 key (raw 32 bytes)."""
    key = release_key(hpke_public_key)
    payload = json.dumps(values, sort_keys=True).encode()
    try:
        return RELEASE_SUITE.encrypt(payload, key, info=info)
    except Exception:  # an all-zero or low-order point: no shared secret
        raise SpmError("hpke_public_key: not a usable X25519 public key") from None


def release_key(hpke_public_key: bytes) -> x25519.X25519PublicKey:
    """The workload's X25519 key, refused if it cannot receive a sealed release (wrong
    size, or a low-order point such as all zeros, for which X25519 has no shared secret)."""
    try:
        key = x25519.X25519PublicKey.from_public_bytes(hpke_public_key)
        RELEASE_SUITE.encrypt(b"", key, info=b"secfl/probe")
    except Exception:
        raise SpmError("hpke_public_key: not a usable raw X25519 public key") from None
    return key


def open_release(
    sealed: bytes, private_key: x25519.X25519PrivateKey, info: bytes
) -> dict[str, Value]:
    """The workload side of :func:`seal_release`."""
    try:
        return json.loads(RELEASE_SUITE.decrypt(sealed, private_key, info=info))
    except Exception as exc:  # InvalidTag and friends
        raise SpmError(f"secrets: cannot open the sealed secrets ({type(exc).__name__})") from None


def board_binding(public_keys: list[str], threshold: int, required: list[str] | None = None) -> str:
    """The board an imported secret is sealed for: SHA-256 (hex) over its threshold, the
    SHA-256 of each member's signing key (SPKI DER), sorted, and, when some members are
    required (every approval needs their signature), theirs too. Names do not count.
    Without required members the binding is as it always was; with them, a board that
    drops one (the others signing a version without the owner's veto) is another board
    (found by a review)."""
    doc: dict[str, object] = {
        "threshold": int(threshold),
        "members": sorted({member_key_digest(pem) for pem in public_keys}),
    }
    if required:
        doc["required"] = sorted({member_key_digest(pem) for pem in required})
    return canonical_sha256(doc)


def member_key_digest(pem: str) -> str:
    """SHA-256 (hex) of a member's signing key (SPKI DER): the same key in any PEM form."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnicodeError):
        raise SpmError("seal: a board member's key is not a PEM public key") from None
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def board_binding_of(board: Board) -> str:
    """:func:`board_binding` of a policy's board."""
    keys = {m.name: m.public_key for m in board.members}
    required = [keys[name] for name in board.required if name in keys]
    return board_binding(list(keys.values()), board.threshold, required)


def import_info(policy: str, secret: str, board: str) -> bytes:
    """HPKE info of an imported secret: the policy, the secret, and the board the owner
    approved (:func:`board_binding`). The SPM opens it only under a policy version that
    board approved, so registering the policy name first gains an attacker nothing."""
    return f"secfl/imported-secret/v2\n{policy}/{secret}\n{board}".encode()


def seal_imported(
    value: bytes,
    spm_public_key: ec.EllipticCurvePublicKey,
    policy: str,
    secret: str,
    board: str,
) -> str:
    """What a data owner writes as ``sealed:`` for an imported secret (base64)."""
    sealed = IMPORT_SUITE.encrypt(value, spm_public_key, info=import_info(policy, secret, board))
    return base64.b64encode(sealed).decode()


def open_imported(
    sealed_b64: str,
    spm_key: ec.EllipticCurvePrivateKey,
    policy: str,
    secret: str,
    board: str,
) -> Value:
    """The value :func:`seal_imported` sealed to this SPM's key for (policy, secret,
    board), or :class:`SpmError` saying what it was not sealed for."""
    try:
        raw = IMPORT_SUITE.decrypt(
            base64.b64decode(sealed_b64, validate=True),
            spm_key,
            info=import_info(policy, secret, board),
        )
    except Exception:
        raise SpmError(
            f"secrets: imported secret '{secret}' is not sealed to this SPM for policy "
            f"'{policy}' under this board (its owner sealed it for another board, another "
            "policy or another SPM; ask the owner to seal it again with `secfl policy "
            "seal-secret --board ...`)"
        ) from None
    return _raw(raw, "imported")
