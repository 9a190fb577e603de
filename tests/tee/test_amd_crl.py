"""AMD's CRLs: a revoked ASK/ASVK or VCEK/VLEK is refused, and so is a CRL that is
not the pinned ARK's, out of date, or malformed.

A real AMD CRL cannot list a test's certificates, so a fake AMD (tests/tee/test_amd.py:
its own ARK, ASK, ASVK, RSA-PSS SHA-384, and ECDSA P-384 VCEKs), pinned only through
monkeypatch, signs the CRLs here. Before this check a revoked ASK chained to the
pinned ARK and was accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from secfl._internal.x509util import fingerprint
from secfl.errors import VerificationError
from secfl.tee import _amd as amd
from secfl.tee import _roots as roots
from tests.tee.test_amd import (
    FAKE_AT,
    TURIN_SPL,
    TURIN_TCB,
    FakeAmd,
    _pss,
    make_report,
)

HWID = bytes(range(1, 9))


@pytest.fixture(scope="module")
def fake() -> FakeAmd:
    return FakeAmd.create("Turin")


@pytest.fixture(autouse=True)
def pinned(monkeypatch: pytest.MonkeyPatch, fake: FakeAmd) -> Iterator[None]:
    """The fake Turin ARK pinned in place of AMD's, for one test only."""
    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Turin", fingerprint(fake.ark))
    yield


def make_crl(
    fake: FakeAmd,
    revoked: tuple[x509.Certificate, ...] = (),
    *,
    this_update: datetime = FAKE_AT - timedelta(days=1),
    next_update: datetime = FAKE_AT + timedelta(days=7),
    key: rsa.RSAPrivateKey | None = None,
    pem: bool = False,
) -> bytes:
    """A CRL signed by the fake ARK (or ``key``) revoking ``revoked``: certificates the
    ARK issued are listed directly; others with a certificateIssuer naming their issuer."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(fake.ark.subject)
        .last_update(this_update)
        .next_update(next_update)
    )
    for cert in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(FAKE_AT - timedelta(days=30))
        )
        if cert.issuer != fake.ark.subject:
            entry = entry.add_extension(
                x509.CertificateIssuer([x509.DirectoryName(cert.issuer)]), critical=True
            )
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(key or fake.ark_key, hashes.SHA384(), rsa_padding=_pss())
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


def _report(fake: FakeAmd, *, vlek: bool = False) -> tuple[bytes, bytes, x509.Certificate]:
    key, cert = fake.vek(TURIN_SPL, hwid=None if vlek else HWID, vlek=vlek)
    chip = bytes(64) if vlek else HWID + bytes(56)
    report = make_report(key, tcb=TURIN_TCB, key_info=(1 << 2) if vlek else 0, chip_id=chip)
    return report, cert, x509.load_der_x509_certificate(cert)


def _verify(fake: FakeAmd, report: bytes, cert: bytes, crls: dict[str, bytes], **kw: object):
    vlek = kw.pop("vlek", False)
    return amd.verify_report(
        report,
        at=kw.pop("at", FAKE_AT),  # type: ignore[arg-type]
        vcek=cert,
        chain=fake.chain(vlek=bool(vlek)),
        crl=lambda kind, product: crls.get(f"{kind}-{product}"),
    )


def _refused(match: str, fake: FakeAmd, crls: dict[str, bytes], **kw: object) -> str:
    report, cert, _ = _report(fake, vlek=bool(kw.get("vlek")))
    with pytest.raises(VerificationError, match=match) as info:
        _verify(fake, report, cert, crls, **kw)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_a_chain_the_crl_does_not_revoke_is_accepted(fake: FakeAmd) -> None:
    report, cert, _ = _report(fake)
    other = fake.vek(TURIN_SPL, hwid=HWID)[1]  # another VCEK of the ASK: it alone revoked
    crl = make_crl(fake, (x509.load_der_x509_certificate(other),))
    claims = _verify(fake, report, cert, {"vcek-Turin": crl})
    assert claims.platform["amd_crl"] == "Turin VCEK CRL of 2024-12-31T00:00:00+00:00"
    pem = make_crl(fake, pem=True)
    assert _verify(fake, report, cert, {"vcek-Turin": pem}).platform["amd_crl"].startswith("Tur")
    # without a lookup nothing is checked, and the claims say so
    plain = amd.verify_report(report, at=FAKE_AT, vcek=cert, chain=fake.chain())
    assert plain.platform["amd_crl"] == "unchecked"


def test_a_revoked_ask_is_refused(fake: FakeAmd) -> None:
    text = _refused(
        r"^revoked: the ASK 'SEV-Turin' \(serial 0x[0-9a-f]+\) is revoked by the Turin "
        r"VCEK CRL of 2024-12-31T00:00:00\+00:00, since 2024-12-02",
        fake,
        {"vcek-Turin": make_crl(fake, (fake.ask,))},
    )
    assert f"{fake.ask.serial_number:#x}" in text


def test_a_revoked_asvk_is_refused_by_the_vlek_crl(fake: FakeAmd) -> None:
    revoked = make_crl(fake, (fake.asvk,))
    _refused(
        r"^revoked: the ASVK 'SEV-VLEK-Turin' .* by the Turin VLEK CRL of ",
        fake,
        {"vlek-Turin": revoked},
        vlek=True,
    )
    # the VCEK CRL is not the VLEK chain's: a VLEK report needs the VLEK CRL
    _refused(
        r"^crl: no Turin VLEK CRL was given; fetch it from "
        r"https://kdsintf.amd.com/vlek/v1/Turin/crl$",
        fake,
        {"vcek-Turin": make_crl(fake)},
        vlek=True,
    )


def test_a_revoked_vcek_is_refused(fake: FakeAmd) -> None:
    report, cert, parsed = _report(fake)
    with pytest.raises(
        VerificationError,
        match=r"^revoked: the VCEK 'SEV-VCEK' \(serial 0x[0-9a-f]+\) is revoked by the Turin",
    ):
        _verify(fake, report, cert, {"vcek-Turin": make_crl(fake, (parsed,))})


def test_a_vcek_serial_listed_for_the_ark_itself_does_not_revoke_it(fake: FakeAmd) -> None:
    """An entry without certificateIssuer names a certificate the ARK issued: the
    VCEK (issued by the ASK) of the same serial is another certificate."""
    report, cert, parsed = _report(fake)
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(parsed.serial_number)
        .revocation_date(FAKE_AT - timedelta(days=3))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(fake.ark.subject)
        .last_update(FAKE_AT - timedelta(days=1))
        .next_update(FAKE_AT + timedelta(days=1))
        .add_revoked_certificate(entry)
        .sign(fake.ark_key, hashes.SHA384(), rsa_padding=_pss())
        .public_bytes(serialization.Encoding.DER)
    )
    assert _verify(fake, report, cert, {"vcek-Turin": crl}).kind == "snp"


def test_a_crl_signed_by_another_key_is_refused(fake: FakeAmd) -> None:
    other = rsa.generate_private_key(65537, 2048)
    _refused(
        r"^crl: the Turin VCEK CRL is not signed by the ARK 'ARK-Turin' the chain is pinned "
        r"to \(another key signed it, or it was changed\)$",
        fake,
        {"vcek-Turin": make_crl(fake, key=other)},
    )
    pkcs1 = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(fake.ark.subject)
        .last_update(FAKE_AT - timedelta(days=1))
        .next_update(FAKE_AT + timedelta(days=1))
        .sign(fake.ark_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    _refused(
        r"^crl: the Turin VCEK CRL is not signed with RSA-PSS SHA-384$",
        fake,
        {"vcek-Turin": pkcs1},
    )


def test_an_out_of_date_crl_is_refused(fake: FakeAmd) -> None:
    stale = make_crl(
        fake, this_update=FAKE_AT - timedelta(days=40), next_update=FAKE_AT - timedelta(days=10)
    )
    _refused(
        r"^expired: the Turin VCEK CRL of 2024-11-22T00:00:00\+00:00 was due for update on "
        r"2024-12-22T00:00:00\+00:00 \(verification time 2025-01-01T00:00:00\+00:00\); "
        r"fetch a fresh one from https://kdsintf.amd.com/vcek/v1/Turin/crl$",
        fake,
        {"vcek-Turin": stale},
    )
    early = make_crl(fake, this_update=FAKE_AT + timedelta(days=1))
    _refused(r"^expired: the Turin VCEK CRL .* is not valid before 2025-01-02", fake,
             {"vcek-Turin": early})  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a crl",
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        b"\x30\x82\x01\x00" + bytes(256),
    ],
)
def test_a_malformed_crl_is_refused_in_one_line(fake: FakeAmd, data: bytes) -> None:
    _refused(r"^crl: the Turin VCEK CRL is not a DER or PEM CRL \(", fake, {"vcek-Turin": data})


def test_every_byte_of_the_crl_matters(fake: FakeAmd) -> None:
    """A CRL changed anywhere is refused with a ``crl:`` line (the signature or the
    encoding), never accepted and never a traceback."""
    crl = make_crl(fake, (fake.ask,))
    report, cert, _ = _report(fake)
    for offset in range(len(crl)):
        changed = bytearray(crl)
        changed[offset] ^= 0x01
        with pytest.raises(VerificationError, match=r"^(crl|expired|revoked): "):
            _verify(fake, report, cert, {"vcek-Turin": bytes(changed)})


def test_a_huge_crl_is_refused_before_it_is_parsed(fake: FakeAmd) -> None:
    _refused(r"^crl: the Turin VCEK CRL is larger than 1048576 bytes$", fake,
             {"vcek-Turin": b"0" * ((1 << 20) + 1)})  # fmt: skip


@pytest.mark.parametrize("scope", ["only_contains_user_certs", "only_contains_attribute_certs"])
def test_a_crl_that_does_not_cover_ca_certificates_is_refused(fake: FakeAmd, scope: str) -> None:
    """An ARK-signed CRL whose issuingDistributionPoint limits it to end-entity (or
    attribute) certificates says nothing of the ASK/ASVK (RFC 5280: not used for what
    it does not cover); before, its silence on the ASK passed as "not revoked"."""
    flags = {
        "only_contains_user_certs": False,
        "only_contains_ca_certs": False,
        "only_contains_attribute_certs": False,
        scope: True,
    }
    idp = x509.IssuingDistributionPoint(
        full_name=None, relative_name=None, indirect_crl=False, only_some_reasons=None, **flags
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(fake.ark.subject)
        .last_update(FAKE_AT - timedelta(days=1))
        .next_update(FAKE_AT + timedelta(days=1))
        .add_extension(idp, critical=True)
        .sign(fake.ark_key, hashes.SHA384(), rsa_padding=_pss())
        .public_bytes(serialization.Encoding.DER)
    )
    _refused(
        r"^crl: the Turin VCEK CRL covers only end-entity or attribute certificates, not "
        r"the ASK/ASVK it is checked for$",
        fake,
        {"vcek-Turin": crl},
    )
