"""AMD's certificate revocation lists: is an SEV-SNP chain's ASK/ASVK (or VCEK/VLEK) revoked?

AMD's Key Distribution Service publishes one CRL per product line and key kind,
``GET /vcek/v1/{product}/crl`` (it revokes ASKs) and ``GET /vlek/v1/{product}/crl``
(ASVKs): an X.509 CRL, DER, signed by that product's ARK with RSA-PSS SHA-384 like
AMD's certificates. Without it a revoked ASK (a compromised AMD signing key) still
chains to the pinned ARK and is accepted.

Nothing is fetched here: the caller passes a :data:`CrlLookup` that gives the CRL of
a (kind, product) (the SPM reads it from the folder its operator fills,
``secfl spm serve --amd-crl DIR``; ``secfl attest verify --amd-crl FILE``). What it
gives is not trusted: it must be signed by the chain's ARK (pinned), be current at the
verification time, and be a full CRL. Its entries revoke certificates the ARK issued
(ASK, ASVK); an entry that names another issuer (``certificateIssuer``, an indirect
CRL) revokes that issuer's certificates, so a VCEK/VLEK listed for its ASK/ASVK is
refused too (AMD revokes VCEKs by TCB, not by CRL, but a listed one is not accepted).
"""

from __future__ import annotations

import base64
import errno
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from secfl._internal.files import TooLarge, read_bounded
from secfl._internal.x509util import common_name
from secfl.errors import VerificationError

__all__ = [
    "MAX_CRL_BYTES",
    "MAX_REVOKED",
    "CrlFloor",
    "CrlLookup",
    "check_revocation",
    "crl_file_name",
    "crl_url",
    "file_lookup",
    "folder_lookup",
    "served_lookup",
]

#: Gives the CRL (DER or PEM) of a key kind (``vcek`` or ``vlek``) and product line
#: (``Milan``, ``Genoa``, ``Turin``), or ``None`` when it has none; it may refuse
#: (:class:`VerificationError`) with a message of its own (where the CRL should be).
CrlLookup = Callable[[str, str], bytes | None]

#: Told the kind, product, thisUpdate and label ("Milan VCEK CRL of ...") of a CRL once
#: it verified as the pinned ARK's and current, before its entries are read: it may
#: refuse it (:class:`VerificationError`), as the SPM does one older than a CRL of the
#: same kind and product it verified before (``rollback: ...``, :mod:`secfl.spm._amd_crl`).
CrlFloor = Callable[[str, str, datetime, str], None]

#: The largest CRL read (AMD's are a few KiB: they list the few revoked ASKs).
MAX_CRL_BYTES: Final = 1 << 20
#: Entries read at most: a forged CRL of megabytes costs a signature check, no more.
MAX_REVOKED: Final = 10_000

_KDS: Final = "https://kdsintf.amd.com"
_ISSUER_ROLE: Final = {"vcek": "ASK", "vlek": "ASVK"}


def crl_url(kind: str, product: str) -> str:
    """Where AMD's KDS serves the CRL of ``kind`` (``vcek``/``vlek``) for ``product``."""
    return f"{_KDS}/{kind}/v1/{product}/crl"


def crl_file_name(kind: str, product: str) -> str:
    """The file name a CRL folder holds it under: ``vcek-Milan.crl``, ``vlek-Genoa.crl``."""
    return f"{kind}-{product}.crl"


def folder_lookup(folder: Path) -> CrlLookup:
    """The CRLs of ``folder``, one file each as :func:`crl_file_name` names them, read
    when asked for (a fresh one dropped in is used at once); a missing one is a
    refusal that says where to fetch it."""

    def lookup(kind: str, product: str) -> bytes:
        name = crl_file_name(kind, product)
        missing = (
            f"crl: the AMD CRL folder {folder} has no {name}: fetch "
            f"{crl_url(kind, product)} into it"
        )
        return _read(folder / name, missing)

    return lookup


def file_lookup(path: Path) -> CrlLookup:
    """One CRL file, taken as the CRL of whatever kind and product the chain is of
    (its signature still must be the chain's ARK's)."""
    return lambda kind, product: _read(path, f"crl: {path} does not exist")


#: The CRLs an SPM serves beside its evidence: one per key kind and product line.
_SERVED_NAMES: Final = frozenset(
    f"{kind}-{product}" for kind in _ISSUER_ROLE for product in ("Milan", "Genoa", "Turin")
)


def served_lookup(served: object) -> CrlLookup:
    """The CRLs an SPM served beside its SEV-SNP evidence (``{"vcek-Milan": base64
    DER, ...}``), for a client checking that SPM: their source is the SPM's host, so
    they are checked like any other (signed by the pinned ARK, current). Anything
    else than that shape is refused when a CRL is looked up."""

    def lookup(kind: str, product: str) -> bytes:
        name = f"{kind}-{product}"
        if not isinstance(served, dict) or len(served) > len(_SERVED_NAMES):
            raise VerificationError("crl: the SPM's answer has a malformed amd_crls")
        text = served.get(name)
        if text is None:
            raise VerificationError(
                f"crl: the SPM served no {name} CRL beside its SEV-SNP evidence (it runs "
                f"without an --amd-crl folder holding {crl_file_name(kind, product)}): "
                f"give one ({crl_url(kind, product)}) with --amd-crl"
            )
        if not isinstance(text, str) or len(text) > (MAX_CRL_BYTES // 3 + 1) * 4:
            raise VerificationError(f"crl: the SPM served a malformed or oversized {name} CRL")
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            raise VerificationError(f"crl: the SPM served {name} CRL not in base64") from None

    return lookup


def _read(path: Path, missing: str) -> bytes:
    """The file's bytes, at most :data:`MAX_CRL_BYTES`, a regular file only (a FIFO
    planted there is refused, not waited on); ``missing``: the refusal when it is not."""
    try:
        return read_bounded(path, MAX_CRL_BYTES, regular=True)
    except TooLarge:
        raise VerificationError(f"crl: {path} is larger than {MAX_CRL_BYTES} bytes") from None
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise VerificationError(missing) from None
        raise VerificationError(f"crl: cannot read {path} ({exc.strerror or exc})") from None


def check_revocation(
    lookup: CrlLookup,
    *,
    kind: str,
    product: str,
    ark: x509.Certificate,
    issuer: x509.Certificate,
    vek: x509.Certificate,
    at: datetime,
    floor: CrlFloor | None = None,
) -> str:
    """Refuse a chain whose ``issuer`` (ASK/ASVK) or ``vek`` (VCEK/VLEK) the current
    CRL of ``kind`` and ``product`` revokes; return what was checked ("Milan VCEK CRL
    of ...") for the claims. ``ark`` is the chain's ARK, already checked as pinned;
    ``floor``, if given, may refuse a CRL older than one seen before."""
    name = f"{product} {kind.upper()} CRL"
    data = lookup(kind, product)
    if data is None:
        raise VerificationError(f"crl: no {name} was given; fetch it from {crl_url(kind, product)}")
    crl = _load(data, name)
    _check_signed(crl, ark, name)
    entries = _entries(crl, name)
    this_update, next_update = crl.last_update_utc, crl.next_update_utc
    label = f"{name} of {this_update.isoformat()}"
    if at < this_update:
        raise VerificationError(
            f"expired: the {label} is not valid before {this_update.isoformat()} "
            f"(verification time {at.isoformat()})"
        )
    if next_update is None or at > next_update:
        due = next_update.isoformat() if next_update else "(never: it has no nextUpdate)"
        raise VerificationError(
            f"expired: the {label} was due for update on {due} (verification time "
            f"{at.isoformat()}); fetch a fresh one from {crl_url(kind, product)}"
        )
    if floor is not None:
        floor(kind, product, this_update, label)
    roles = ((issuer, _ISSUER_ROLE[kind]), (vek, kind.upper()))
    for cert, role in roles:
        since = entries.get((cert.issuer, cert.serial_number))
        if since is not None:
            raise VerificationError(
                f"revoked: the {role} '{common_name(cert)}' (serial {cert.serial_number:#x}) "
                f"is revoked by the {label}, since {since}"
            )
    return label


def _load(data: bytes, name: str) -> x509.CertificateRevocationList:
    if len(data) > MAX_CRL_BYTES:
        raise VerificationError(f"crl: the {name} is larger than {MAX_CRL_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except (ValueError, TypeError, x509.InvalidVersion) as exc:
        raise VerificationError(f"crl: the {name} is not a DER or PEM CRL ({exc})") from None


def _check_signed(crl: x509.CertificateRevocationList, ark: x509.Certificate, name: str) -> None:
    """Signed by the pinned ``ark``, RSA-PSS SHA-384; checked before anything else is read."""
    try:
        algorithm, digest = crl.signature_algorithm_oid, crl.signature_hash_algorithm
        key = ark.public_key()
        pss = algorithm == x509.SignatureAlgorithmOID.RSASSA_PSS
        if (
            not pss
            or not isinstance(digest, hashes.SHA384)
            or not isinstance(key, rsa.RSAPublicKey)
        ):
            raise VerificationError(f"crl: the {name} is not signed with RSA-PSS SHA-384")
        valid = crl.is_signature_valid(key)
        same_issuer = crl.issuer == ark.subject
    except VerificationError:
        raise
    except Exception as exc:  # ValueError, UnsupportedAlgorithm: read from hostile bytes
        raise VerificationError(f"crl: the {name} is malformed ({exc})") from None
    if not valid or not same_issuer:
        raise VerificationError(
            f"crl: the {name} is not signed by the ARK '{common_name(ark)}' the chain is "
            "pinned to (another key signed it, or it was changed)"
        )


def _entries(crl: x509.CertificateRevocationList, name: str) -> dict[tuple[x509.Name, int], str]:
    """(issuer, serial) -> revocation date of every entry, reading an indirect CRL's
    ``certificateIssuer`` (it names the issuer of that entry and the ones after it)."""
    try:
        count = len(crl)
        if count > MAX_REVOKED:
            raise VerificationError(
                f"crl: the {name} revokes {count} certificates, more than {MAX_REVOKED}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check_extensions(crl, name)
            issuer = crl.issuer
            found: dict[tuple[x509.Name, int], str] = {}
            for entry in crl:
                named = _entry_issuer(entry)
                issuer = named if named is not None else issuer
                when = entry.revocation_date_utc.isoformat()
                found.setdefault((issuer, entry.serial_number), when)
            _ = (crl.last_update_utc, crl.next_update_utc)
    except VerificationError:
        raise
    except Exception as exc:  # a malformed field is parsed (and raises) only when read
        raise VerificationError(f"crl: the {name} is malformed ({exc})") from None
    return found


def _check_extensions(crl: x509.CertificateRevocationList, name: str) -> None:
    """A full CRL only: not a delta, not one that covers some reasons or leaves out the
    CA certificates (the ASK/ASVK it is checked for), no unknown critical extension
    (RFC 5280: such a CRL must not be used for what it does not cover)."""
    for ext in crl.extensions:
        value = ext.value
        if isinstance(value, x509.DeltaCRLIndicator):
            raise VerificationError(f"crl: the {name} is a delta CRL, not a full one")
        if isinstance(value, x509.IssuingDistributionPoint) and value.only_some_reasons:
            raise VerificationError(f"crl: the {name} covers only some revocation reasons")
        if isinstance(value, x509.IssuingDistributionPoint) and (
            value.only_contains_user_certs or value.only_contains_attribute_certs
        ):
            raise VerificationError(
                f"crl: the {name} covers only end-entity or attribute certificates, not "
                "the ASK/ASVK it is checked for"
            )
        if ext.critical and isinstance(value, x509.UnrecognizedExtension):
            raise VerificationError(
                f"crl: the {name} has an unknown critical extension {ext.oid.dotted_string}"
            )


def _entry_issuer(entry: x509.RevokedCertificate) -> x509.Name | None:
    for ext in entry.extensions:
        if isinstance(ext.value, x509.CertificateIssuer):
            names = ext.value.get_values_for_type(x509.DirectoryName)
            if len(names) != 1:
                raise ValueError("a certificateIssuer entry extension without one directory name")
            return names[0]
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise ValueError(f"an unknown critical entry extension {ext.oid.dotted_string}")
    return None
