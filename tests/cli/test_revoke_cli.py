"""The board's revocation commands, every step a real process.

Board members sign a revocation with `secfl policy sign-revocation` from the same
flags; `secfl policy revoke` submits it to a real `secfl spm serve`; the revoked
service then cannot attest until the board readmits it the same way, and
`secfl policy revocations` lists what is revoked."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.clirun import one_error, secfl, secfl_all
from tests.spm.harness import AGGREGATOR_MR, Board, SpmProcess, policy_document

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def keys(tmp_path: Path, board: Board) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    for member, pem in board.keys.items():
        (folder / f"{member}.key").write_bytes(pem)
        (folder / f"{member}.key").chmod(0o600)
    return folder


_POLICY_NUMBERS = itertools.count(1)


@dataclass
class Served:
    """The module's SPM (its URL and pin) and the policy of this test on it."""

    url: str
    pin: str
    policy: str


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes]
) -> Iterator[SpmProcess]:
    proc = SpmProcess(tmp_path_factory.mktemp("spm") / "data", sim[0], None).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def spm(server: SpmProcess, sim: tuple[Path, bytes], board: Board) -> Served:
    """Version 1 of a policy of this test's own on the module's SPM: revocations are a
    policy's, so the tests sharing the SPM see none of each other's."""
    name = f"fed{next(_POLICY_NUMBERS)}"
    with SpmClient(server.url, pin=server.pin) as client:
        document = policy_document(name, board, sim[1])
        client.submit_policy(document, board.sign(document, "alice", "bob"))
    return Served(server.url, server.pin, name)


def attest(spm: Served, sim: tuple[Path, bytes]) -> str:
    with SpmClient(spm.url, pin=spm.pin) as client:
        platform = simulated.SimulatedPlatform(sim[0])
        enrolled = enroll(client, platform, spm.policy, "aggregator", measurement=AGGREGATOR_MR)
        return enrolled.certificate


def sign(keys: Path, tmp_path: Path, member: str, *flags: str) -> str:
    (out,) = sign_all(keys, tmp_path, (member, flags))
    return out


def sign_all(
    keys: Path, tmp_path: Path, *signers: tuple[str, tuple[str, ...]], policy: str = "fed"
) -> list[str]:
    """``secfl policy sign-revocation`` of ``policy`` by each (member, flags), two processes
    at a time; the signature files, in order."""
    first = len(list(tmp_path.glob("*.sig")))
    outs = [tmp_path / f"{member}.{first + i}.sig" for i, (member, _) in enumerate(signers)]
    runs = secfl_all(*(
        ("policy", "sign-revocation", "--policy", policy, *flags,
         "--key", str(keys / f"{member}.key"), "--member", member, "-o", str(out))
        for (member, flags), out in zip(signers, outs, strict=True)
    ))  # fmt: skip
    for (member, _), out, done in zip(signers, outs, runs, strict=True):
        assert done.returncode == 0, done.stderr
        assert str(out) in done.stdout and member in done.stdout
    return [str(out) for out in outs]


def submit(spm: Served, flags: tuple[str, ...], *sigs: str) -> subprocess.CompletedProcess[str]:
    given = [arg for sig in sigs for arg in ("--sig", sig)]
    return secfl("policy", "revoke", "--policy", spm.policy, *flags, *given,
                 "--spm", spm.url, "--spm-pin", spm.pin)  # fmt: skip


def listing(spm: Served) -> str:
    done = secfl("policy", "revocations", "--policy", spm.policy, "--spm", spm.url,
                 "--spm-pin", spm.pin)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


REVOKE = ("--kind", "service", "--subject", "aggregator", "--reason", "poisoning")
READMIT = ("--kind", "service", "--subject", "aggregator", "--readmit", "--reason", "cleared")


def revoked_digest(policy: str) -> str:
    """The digest of :data:`REVOKE`'s statement: what a readmission of it names."""
    from secfl.spm._revocation import revocation_digest, revocation_doc

    statement = {"kind": "service", "subject": "aggregator", "service": "", "reason": "poisoning"}
    return revocation_digest(revocation_doc(policy, statement))


def test_the_board_revokes_a_service_and_readmits_it(
    spm: Served, sim: tuple[Path, bytes], keys: Path, tmp_path: Path
) -> None:
    attest(spm, sim)
    alice, bob = sign_all(keys, tmp_path, ("alice", REVOKE), ("bob", REVOKE), policy=spm.policy)

    # One member alone is not the board.
    assert one_error(submit(spm, REVOKE, alice)).startswith("error: approval: 1 valid signature")
    attest(spm, sim)

    done = submit(spm, REVOKE, alice, bob)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked: service aggregator of policy {spm.policy}"
    with pytest.raises(SpmRefused, match="^revoked: service 'aggregator' is revoked"):
        attest(spm, sim)
    listed = listing(spm)
    (row,) = [line for line in listed.splitlines() if line.startswith("service")]
    assert row.split()[:2] == ["service", "aggregator"] and "poisoning" in row
    lifts = revoked_digest(spm.policy)
    assert lifts in listed.replace("\n", "").replace(" ", "")  # what a readmission names

    # Readmission needs the board too, and names the revocation it lifts.
    readmit_flags = (*READMIT, "--lifts", lifts)
    readmit = (("carol", readmit_flags), ("alice", readmit_flags))
    carol, alice = sign_all(keys, tmp_path, *readmit, policy=spm.policy)
    assert one_error(submit(spm, readmit_flags, carol)).startswith("error: approval:")
    with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
        attest(spm, sim)
    assert one_error(submit(spm, READMIT, alice, carol)).startswith("error: --lifts: ")
    done = submit(spm, readmit_flags, alice, carol)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"readmitted: service aggregator of policy {spm.policy}"
    attest(spm, sim)
    rows = listing(spm).splitlines()
    assert not [line for line in rows if line.startswith("service")]
    # the two certificates the revocation ended stay listed: a readmission lets the
    # service attest again, it does not bring them back (tests/spm/test_readmission.py)
    ended = [line for line in rows if line.startswith("certificate")]
    assert len(ended) == 2 and all("ended by a revocation" in line for line in ended)


def test_a_certificate_serial_is_signed_in_one_form(
    spm: Served, sim: tuple[Path, bytes], keys: Path, tmp_path: Path
) -> None:
    """`0x0A:1B` and `a1b` name the same certificate: signers agree whatever they type."""
    first = ("--kind", "certificate", "--subject", "0x0A:1B", "--service", "aggregator")
    second = ("--kind", "certificate", "--subject", "a1b", "--service", "aggregator")
    alice, bob = sign_all(keys, tmp_path, ("alice", first), ("bob", second), policy=spm.policy)
    done = submit(spm, second, alice, bob)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked: certificate a1b of policy {spm.policy}"
    assert "a1b" in listing(spm)


def test_revoking_a_service_the_policy_lacks_is_refused(
    spm: Served, keys: Path, tmp_path: Path
) -> None:
    """A typo in a service name would keep no one out: the submission is refused,
    nothing is recorded, and --unknown-service submits it for a later version."""
    flags = ("--kind", "service", "--subject", "agregator")
    signatures = sign_all(keys, tmp_path, ("alice", flags), ("bob", flags), policy=spm.policy)
    line = one_error(submit(spm, flags, *signatures))
    assert line.startswith(
        f"error: revoke: version 1 of policy {spm.policy} has no service 'agregator' (its "
        "services: "
    ), line
    assert "--unknown-service" in line
    assert "agregator" not in listing(spm)

    done = submit(spm, (*flags, "--unknown-service"), *signatures)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(
        f"warning: version 1 of policy {spm.policy} has no service 'agregator'"
    )
    assert done.stdout.strip() == f"revoked: service agregator of policy {spm.policy}"
    assert "agregator" in listing(spm)


def test_a_statement_carries_its_expiry(spm: Served, keys: Path, tmp_path: Path) -> None:
    """--expires is signed: every member gives the same, and so does the submitter."""
    until = ("--expires", f"{datetime.now(UTC).year + 1}-01-31")
    flags = ("--kind", "service", "--subject", "collaborator", "--reason", "held", *until)
    alice, bob = sign_all(keys, tmp_path, ("alice", flags), ("bob", flags), policy=spm.policy)
    line = one_error(submit(spm, flags[:-2], alice, bob))
    assert line.startswith("error: signature: ") and "same flags" in line
    done = submit(spm, flags, alice, bob)
    assert done.returncode == 0, done.stderr
    assert "collaborator" in listing(spm)
    done = secfl("policy", "sign-revocation", "--policy", spm.policy, *flags[:-2],
                 "--key", str(keys / "alice.key"), "--member", "alice", "-o",
                 str(tmp_path / "forever.sig"))  # fmt: skip
    assert done.returncode == 0 and done.stderr.startswith("note: without --expires the ")
    signature = json.loads((tmp_path / "forever.sig").read_text())
    until = datetime.strptime(signature["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
    assert "expires" not in json.loads(Path(alice).read_text())  # the statement's instead


def test_signatures_over_other_flags_are_refused_before_sending(
    spm: Served, keys: Path, tmp_path: Path
) -> None:
    other = ("--kind", "service", "--subject", "aggregator")
    alice, bob = sign_all(keys, tmp_path, ("alice", REVOKE), ("bob", other), policy=spm.policy)
    line = one_error(submit(spm, REVOKE, alice, bob))
    assert line.startswith("error: signature: ") and bob in line and "same flags" in line
    assert "aggregator" not in listing(spm)


BAD_FLAGS = [
    (("--kind", "chip", "--subject", "x"), "--kind: "),
    (("--kind", "service", "--subject", "../x"), "--subject: "),
    (("--kind", "measurement", "--subject", "not-hex"), "--subject: "),
    (("--kind", "measurement", "--subject", "ab" * 47 + "a"), "--subject: a measurement is 64"),
    (("--kind", "platform", "--subject", "abcdef"), "--subject: a platform is 32, 64 or 128"),
    (("--kind", "certificate", "--subject", "f" * 65), "--subject: "),
    (("--kind", "service", "--subject", "a", "--reason", "two\nlines"), "--reason: "),
    (("--kind", "service", "--subject", "a", "--service", "x/y"), "--service: "),
    (("--service", "a", "--expires", "tomorrow"), "--expires: 'tomorrow' is not a date"),
    (("--service", "a", "--expires", "2020-01-01"), "--expires: 2020-01-01T23:59:59Z is past"),
    (("--service", "a", "--expires", "\u0662\u0660\u0663\u0660-01-01T00:00:00Z"), "--expires: "),
]


def refused_signings(keys: Path, tmp_path: Path, cases: list[tuple[tuple[str, ...], str]]) -> None:
    """Each case's flags make `sign-revocation` one ``error: CHECK`` line and no file
    (the cases run two processes at a time)."""
    outs = [tmp_path / f"x{i}.sig" for i in range(len(cases))]
    runs = secfl_all(*(
        ("policy", "sign-revocation", "--policy", "fed", *flags,
         "--key", str(keys / "alice.key"), "--member", "alice", "-o", str(out))
        for (flags, _), out in zip(cases, outs, strict=True)
    ))  # fmt: skip
    for (flags, check), out, done in zip(cases, outs, runs, strict=True):
        assert one_error(done).startswith(f"error: {check}"), flags
        assert not out.exists(), flags


def test_bad_flags_are_one_line(keys: Path, tmp_path: Path) -> None:
    refused_signings(keys, tmp_path, BAD_FLAGS)


def test_the_key_file_is_never_the_output(keys: Path) -> None:
    key = keys / "alice.key"
    before = key.read_bytes()
    done = secfl("policy", "sign-revocation", "--policy", "fed", *REVOKE,
                 "--key", str(key), "--member", "alice", "-o", str(key))  # fmt: skip
    assert one_error(done).startswith("error: --output: ")
    assert key.read_bytes() == before


def test_the_short_forms_name_the_same_statements(
    spm: Served, sim: tuple[Path, bytes], keys: Path, tmp_path: Path
) -> None:
    """`--service NAME` is `--kind service --subject NAME`, `--serial HEX [--service NAME]`
    is `--kind certificate --subject HEX [--service NAME]`: members may sign either,
    and `secfl revoke` / `secfl revocations` are the top-level forms of the commands."""
    long_form = ("--kind", "service", "--subject", "aggregator", "--reason", "audit")
    short_form = ("--service", "aggregator", "--reason", "audit")
    signers = (("alice", long_form), ("bob", short_form))
    alice, bob = sign_all(keys, tmp_path, *signers, policy=spm.policy)
    done = secfl("revoke", "--policy", spm.policy, "--service", "aggregator", "--reason", "audit",
                 "--sig", alice, "--sig", bob, "--spm", spm.url, "--spm-pin", spm.pin)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked: service aggregator of policy {spm.policy}"
    with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
        attest(spm, sim)

    serial = ("--serial", "0x0A:1B", "--service", "aggregator")
    long_serial = ("--kind", "certificate", "--subject", "a1b", "--service", "aggregator")
    signers = (("alice", serial), ("bob", long_serial))
    alice, bob = sign_all(keys, tmp_path, *signers, policy=spm.policy)
    done = secfl("revoke", "--policy", spm.policy, *serial, "--sig", alice, "--sig", bob,
                 "--spm", spm.url, "--spm-pin", spm.pin)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked: certificate a1b of policy {spm.policy}"

    done = secfl("revocations", "--policy", spm.policy, "--spm", spm.url, "--spm-pin", spm.pin)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["service", "aggregator"] in [r[:2] for r in rows]
    assert ["certificate", "a1b", "aggregator"] in [r[:3] for r in rows]
    assert "no revocation requests from the clone audit" in done.stdout


NOT_ONE_WAY = [
    (("--serial", "a1b", "--kind", "certificate"), "--serial"),
    ((), "name what to revoke"),
    (("--kind", "service"), "--kind and --subject go together"),
    (("--subject", "aggregator"), "--kind and --subject go together"),
    (("--service", "x/y"), "--service"),
    (("--serial", "xyz"), "--serial: a certificate serial"),
]


def test_what_is_revoked_is_named_one_way(keys: Path, tmp_path: Path) -> None:
    refused_signings(keys, tmp_path, NOT_ONE_WAY)


def test_a_key_that_is_not_the_members_on_the_board_is_refused_before_signing(
    keys: Path, tmp_path: Path, board: Board, sim: tuple[Path, bytes]
) -> None:
    """`policy sign` and `sign-reset` refuse a key that is not the member's on the board;
    `sign-revocation` signed with any key, and the SPM refused the whole statement only
    when it was submitted, in the middle of keeping a clone out. With --board (the
    policy's current version) it is refused before anything is signed."""
    policy = tmp_path / "fed.yaml"
    policy.write_text(policy_document("fed", board, sim[1]))
    base = ("policy", "sign-revocation", "--policy", "fed", *REVOKE, "--board", str(policy))
    out = tmp_path / "carol.sig"
    done = secfl(*base, "--key", str(keys / "alice.key"), "--member", "carol", "-o", str(out))
    assert one_error(done).startswith(
        "error: sign: this key is not carol's key on this policy's board: it is alice's"
    )
    assert not out.exists()
    other = tmp_path / "other.yaml"
    other.write_text(policy_document("other", board, sim[1]))
    done = secfl("policy", "sign-revocation", "--policy", "fed", *REVOKE, "--board", str(other),
                 "--key", str(keys / "carol.key"), "--member", "carol", "-o", str(out))  # fmt: skip
    assert one_error(done).startswith("error: --board: ")
    assert not out.exists()
    done = secfl(*base, "--key", str(keys / "carol.key"), "--member", "carol", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.exists()
