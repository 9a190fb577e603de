"""A client attesting an SPM that runs on SEV-SNP checks the SPM's AMD chain against
AMD's CRL: the one given (`secfl spm verify --amd-crl`), else the ones the SPM serves
beside its evidence (from its `--amd-crl` folder; signed by AMD's ARK, so the SPM's
host, their source, needs no trust); with none, it refuses.

Before, `SpmClient.verify` (so `secfl spm verify` and `secfl run --spm-measurement`)
checked no CRL: an SPM whose ASK AMD had revoked was trusted and pinned.

The SPM here is a real `secfl spm serve` whose platform a ``sitecustomize`` (this
test's children only) replaces with a fake SEV-SNP: reports signed by a fake AMD's
VCEK, its ARK pinned in the child and, by monkeypatch, here.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from secfl._internal.x509util import fingerprint
from secfl.errors import VerificationError
from secfl.spm.client import SpmClient
from secfl.tee import _roots as roots
from tests.clirun import one_error, secfl
from tests.spm.harness import SpmProcess, make_sim
from tests.spm.test_amd_crl import crl_at
from tests.tee.test_amd import TURIN_SPL, FakeAmd

HWID = bytes(range(1, 9))
MEASUREMENT = (b"\xab" * 48).hex()  # make_report's
REPO = Path(__file__).resolve().parents[2]

SITE = """\
from pathlib import Path

from secfl.tee import _platforms, _roots

_roots.AMD_ARK_SHA256["Turin"] = {pin!r}
_HERE = Path({here!r})


class FakeSnp(_platforms.Platform):
    name = "snp"

    def get_evidence(self, report_data):
        from cryptography.hazmat.primitives import serialization

        from secfl.tee._evidence import Evidence
        from secfl.tee._snp_report import build_cert_table
        from tests.tee.test_amd import TURIN_TCB, make_report

        key = serialization.load_pem_private_key((_HERE / "vcek.key").read_bytes(), None)
        report = make_report(key, tcb=TURIN_TCB, report_data=report_data)
        table = {{n: (_HERE / f"{{n}}.der").read_bytes() for n in ("vcek", "ask", "ark")}}
        return Evidence(kind="snp", quote=report, aux=build_cert_table(table))


_platforms.platform_by_name = lambda name, **kw: FakeSnp()
"""


@pytest.fixture(scope="module")
def fake() -> FakeAmd:
    return FakeAmd.create("Turin")


def fake_snp_env(tmp_path: Path, fake: FakeAmd) -> dict[str, str]:
    site = tmp_path / "fake-snp"
    site.mkdir()
    key, vcek = fake.vek(TURIN_SPL, hwid=HWID)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (site / "vcek.key").write_bytes(pem)
    (site / "vcek.der").write_bytes(vcek)
    der = serialization.Encoding.DER
    (site / "ask.der").write_bytes(fake.ask.public_bytes(der))
    (site / "ark.der").write_bytes(fake.ark.public_bytes(der))
    (site / "sitecustomize.py").write_text(SITE.format(pin=fingerprint(fake.ark), here=str(site)))
    path = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def test_a_client_checks_an_snp_spm_against_amd_crls(
    fake: FakeAmd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Turin", fingerprint(fake.ark))
    crls = tmp_path / "crls"
    crls.mkdir()
    path = crls / "vcek-Turin.crl"
    now = datetime.now(UTC)
    path.write_bytes(crl_at(fake, now))
    sim = tmp_path / "sim"
    make_sim(sim)
    env = fake_snp_env(tmp_path, fake)
    spm = SpmProcess(tmp_path / "spm", sim, None, env=env, args=["--amd-crl", str(crls)])
    spm.start()
    try:
        client, claims = SpmClient.verify(spm.url, expect_measurement=MEASUREMENT)
        client.close()
        assert claims.kind == "snp"
        assert claims.platform["amd_crl"].startswith("Turin VCEK CRL of ")
        # AMD revokes the SPM's ASK: the SPM serves that CRL, and the client refuses
        path.write_bytes(crl_at(fake, now, fake.ask))
        with pytest.raises(VerificationError) as info:
            SpmClient.verify(spm.url, expect_measurement=MEASUREMENT)
        assert str(info.value).startswith("revoked: the ASK 'SEV-Turin' (serial 0x")
        # the CLI too, in a process of its own
        cli = secfl("spm", "verify", spm.url, "--expect-measurement", MEASUREMENT,
                    env={**os.environ, **env})  # fmt: skip
        assert one_error(cli).startswith("error: revoked: the ASK 'SEV-Turin' (serial 0x")
        # a CRL given to the client is checked instead of the SPM's
        mine = tmp_path / "mine.crl"
        mine.write_bytes(crl_at(fake, now))
        done = secfl("spm", "verify", spm.url, "--expect-measurement", MEASUREMENT,
                     "--amd-crl", str(mine), env={**os.environ, **env})  # fmt: skip
        assert done.returncode == 0, done.stderr
        # the SPM holds none: fail closed, naming what is missing
        path.unlink()
        with pytest.raises(VerificationError) as info:
            SpmClient.verify(spm.url, expect_measurement=MEASUREMENT)
        assert str(info.value).startswith("crl: the SPM served no vcek-Turin CRL beside its ")
    finally:
        spm.stop()
