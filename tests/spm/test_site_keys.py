"""Sites that share a measurement told apart by their site keys. Every site of a
federation runs the same collaborator, and the service name a workload enrols under is
its host's choice: site A's host attested its genuine TEE as site B and received B's
certificate and keys (a second seat in the federation, or B flagged by the clone
audit). A service whose policy entry names a ``site_key`` is now attested only with that
key's signature over this enrolment (secfl.spm._site_key). Real processes: `secfl spm
serve` on SQLite, workloads in the simulated TEE, all of one measurement."""

from __future__ import annotations

import base64
import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID

from secfl.errors import SpmError
from secfl.policy import _keys as keys
from secfl.spm._report_data import spki_sha256, workload_report_data
from secfl.spm._site_key import load_site_key, sign_enrolment, workload_site_key
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll, make_csr
from secfl.tee import _simulated as simulated
from tests.spm.harness import COLLABORATOR_MR, Board, SpmProcess, policy_document

pytestmark = pytest.mark.timeout(120)

POLICY = "sites"
NEEDS = "enrolment: service 'site-b' requires its site key's signature"


def _key(kind: keys.KeyKind) -> keys.PrivateKey:
    private, _ = keys.generate(kind)
    return keys.load_private(private)


def _public(key: keys.PrivateKey) -> str:
    return keys.public_pem(key.public_key()).decode()


@pytest.fixture(scope="module")
def site_keys() -> dict[str, keys.PrivateKey]:
    """Site A's key is Ed25519, site B's ECDSA P-256: both kinds are checked."""
    return {"site-a": _key("ed25519"), "site-b": _key("ecdsa-p256")}


def sites_document(board: Board, root: bytes, site_keys: dict[str, keys.PrivateKey]) -> str:
    """The harness's policy with three more collaborators, all of one measurement: two
    with a site key each, one without."""
    doc = yaml.safe_load(policy_document(POLICY, board, root))
    collaborator = doc["services"][1]
    for name in ("site-a", "site-b", "site-open"):
        service = {**copy.deepcopy(collaborator), "name": name}  # (no YAML aliases)
        if name in site_keys:
            service["site_key"] = _public(site_keys[name])
        doc["services"].append(service)
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def spm(
    tmp_path_factory: pytest.TempPathFactory,
    sim: tuple[Path, bytes],
    board: Board,
    site_keys: dict[str, keys.PrivateKey],
) -> Iterator[SpmProcess]:
    proc = SpmProcess(tmp_path_factory.mktemp("sites") / "data", sim[0], None).start()
    try:
        with SpmClient(proc.url, pin=proc.pin) as client:
            document = sites_document(board, sim[1], site_keys)
            client.submit_policy(document, board.sign(document, "alice", "bob"))
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(spm: SpmProcess) -> Iterator[SpmClient]:
    with SpmClient(spm.url, pin=spm.pin) as c:
        yield c


@pytest.fixture(scope="module")
def tee(sim: tuple[Path, bytes]) -> simulated.SimulatedPlatform:
    """Every host's genuine TEE: the collaborator's measurement."""
    return simulated.SimulatedPlatform(sim[0])


def attest(
    client: SpmClient,
    tee: simulated.SimulatedPlatform,
    service: str,
    signature: Callable[[bytes], str | None],
) -> dict[str, Any]:
    """What :func:`enroll` does, with the site signature ``signature(report_data)``
    gives (a host's choice: none, another key's, one it kept from another enrolment)."""
    hpke = x25519.X25519PrivateKey.generate().public_key()
    hpke_public = hpke.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    nonce = client.nonce()
    report_data = workload_report_data(nonce, hpke_public, spki_sha256(tls_key.public_key()))
    return client.attest(
        POLICY,
        service,
        nonce=nonce,
        evidence=tee.get_evidence(report_data, measurement=COLLABORATOR_MR),
        hpke_public_key=hpke_public,
        csr_pem=make_csr(tls_key, service),
        site_signature=signature(report_data),
    )


def refusals(client: SpmClient, service: str) -> list[str]:
    entries = client.audit(0, 10_000)["entries"]
    return [
        e["detail"]["reason"]
        for e in entries
        if e["event"] == "attestation.refused" and e["detail"].get("service") == service
    ]


def subject(certificate: str) -> str:
    cert = x509.load_pem_x509_certificate(certificate.encode())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_a_host_cannot_enrol_its_genuine_tee_as_another_site(
    client: SpmClient,
    tee: simulated.SimulatedPlatform,
    site_keys: dict[str, keys.PrivateKey],
) -> None:
    """Site A's host holds A's key, not B's: its TEE (the collaborator's measurement,
    which site-b accepts) enrolled as site-b without a signature, or with A's, is refused,
    each refusal audited; as site-a, with A's key, it enrols."""
    own = site_keys["site-a"]
    with pytest.raises(SpmRefused, match=f"^{NEEDS} over this enrolment, and none was sent") as e:
        enroll(client, tee, POLICY, "site-b", measurement=COLLABORATOR_MR)
    assert e.value.status == 403
    with pytest.raises(SpmRefused, match=f"^{NEEDS}: the signature sent does not verify") as e:
        enroll(client, tee, POLICY, "site-b", measurement=COLLABORATOR_MR, site_key=own)
    assert e.value.status == 403
    assert "\n" not in str(e.value)
    reasons = refusals(client, "site-b")
    assert len([r for r in reasons if r.startswith(NEEDS)]) >= 2

    mine = enroll(client, tee, POLICY, "site-a", measurement=COLLABORATOR_MR, site_key=own)
    assert mine.service == "site-a"


def test_the_site_key_enrols_its_site_and_renews_it(
    client: SpmClient,
    tee: simulated.SimulatedPlatform,
    site_keys: dict[str, keys.PrivateKey],
) -> None:
    key = site_keys["site-b"]
    first = enroll(client, tee, POLICY, "site-b", measurement=COLLABORATOR_MR, site_key=key)
    assert subject(first.certificate) == "site-b"
    renewed = enroll(
        client, tee, POLICY, "site-b", measurement=COLLABORATOR_MR, site_key=key,
        replaces=first.session_token,
    )  # fmt: skip
    assert renewed.session_token != first.session_token
    with pytest.raises(SpmRefused, match=f"^{NEEDS} over this enrolment, and none"):
        enroll(client, tee, POLICY, "site-b", measurement=COLLABORATOR_MR,
               replaces=renewed.session_token)  # fmt: skip


def test_a_signature_of_another_enrolment_is_refused(
    client: SpmClient,
    tee: simulated.SimulatedPlatform,
    site_keys: dict[str, keys.PrivateKey],
) -> None:
    """A's host kept a signature B's key made for one of B's enrolments (it saw it pass,
    or B's host enrolled through it): sent with a new nonce it is refused, and so is a
    signature by B's key over this enrolment of another service or policy, or bytes of
    no one's."""
    key = site_keys["site-b"]
    seen: list[str] = []

    def genuine(report_data: bytes) -> str:
        seen.append(sign_enrolment(key, POLICY, "site-b", report_data))
        return seen[-1]

    assert subject(attest(client, tee, "site-b", genuine)["certificate"]) == "site-b"
    forged = {
        "replayed": lambda _: seen[0],
        "another service": lambda rd: sign_enrolment(key, POLICY, "site-a", rd),
        "another policy": lambda rd: sign_enrolment(key, "other", "site-b", rd),
        "no one's": lambda _: base64.b64encode(os.urandom(64)).decode(),
    }
    for what, signature in forged.items():
        with pytest.raises(SpmRefused, match=f"^{NEEDS}: the signature sent does not") as e:
            attest(client, tee, "site-b", signature)
        assert e.value.status == 403, what
    with pytest.raises(SpmRefused, match=f"^{NEEDS}: the signature is not 80 bytes"):
        attest(client, tee, "site-b", lambda _: base64.b64encode(os.urandom(120)).decode())


def test_a_service_without_a_site_key_enrols_as_before(
    client: SpmClient, tee: simulated.SimulatedPlatform, site_keys: dict[str, keys.PrivateKey]
) -> None:
    assert enroll(client, tee, POLICY, "site-open", measurement=COLLABORATOR_MR).certificate
    # a signature it does not need changes nothing
    signed = enroll(
        client, tee, POLICY, "site-open", measurement=COLLABORATOR_MR,
        site_key=site_keys["site-a"],
    )  # fmt: skip
    assert subject(signed.certificate) == "site-open"


def test_the_workload_reads_its_site_key_from_a_private_file(
    tmp_path: Path, site_keys: dict[str, keys.PrivateKey]
) -> None:
    """What `secfl run` does with the host's SECFL_SITE_KEY, each refusal one line
    naming the check, before anything is sent to the SPM."""
    key = site_keys["site-b"]
    path = tmp_path / "site-b.key"
    keys.write_private(path, keys._private_pem(key))
    public = _public(key)
    assert workload_site_key("site-b", None, None) is None
    with pytest.raises(SpmError, match=f"^{NEEDS}: set SECFL_SITE_KEY to the file"):
        workload_site_key("site-b", public, None)
    loaded = workload_site_key("site-b", public, path)
    assert loaded is not None and _public(loaded) == public
    with pytest.raises(SpmError, match=f"^{NEEDS}: the key in .* is not the one the policy"):
        workload_site_key("site-b", _public(site_keys["site-a"]), path)
    path.chmod(0o640)
    with pytest.raises(SpmError, match=r"^site key: .*: others may read it \(mode 640\)"):
        load_site_key(path)
    with pytest.raises(SpmError, match="^site key: .*: cannot read it"):
        load_site_key(tmp_path / "missing.key")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SpmError, match="^site key: .*: cannot read it"):
        load_site_key(tmp_path / "fifo")
    (tmp_path / "junk.key").write_bytes(b"not a key")
    (tmp_path / "junk.key").chmod(0o600)
    with pytest.raises(SpmError, match="^site key: .*: not a PEM private key"):
        load_site_key(tmp_path / "junk.key")
