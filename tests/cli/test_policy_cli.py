"""``secfl policy``: keygen, validate, digest, sign and verify, through ``main()``."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import secfl.cli.main as cli_main
from secfl._internal.yamlload import WITH_LIBYAML
from secfl.policy import digest, load_policy_file
from tests.policy import policy_dict, to_yaml

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Call ``secfl.cli.main.main`` with ``policy`` and the given arguments."""

    def call(*args: str) -> tuple[int, str, str]:
        code = cli_main.main(["policy", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


#: The members who make a recovery key pair: as many as the board's threshold (2).
RECOVERY = ("alice", "bob")


def _keygen(run: Run, folder: Path) -> None:
    for member, kind in [("alice", "ed25519"), ("bob", "ecdsa-p256"), ("carol", "ed25519")]:
        args = ["keygen", "--out-dir", str(folder), "--member", member, "--kind", kind]
        code, out, err = run(*args, *(["--recovery"] if member in RECOVERY else []))
        assert code == 0, err
        assert f"{member}.pub  sha256:" in out


def _write_policy(folder: Path, keys: Path, **changes: object) -> Path:
    data = policy_dict()
    for member in data["board"]["members"]:
        member["public_key"] = (keys / f"{member['name']}.pub").read_text()
    for member in data["board"]["members"]:
        if member["name"] in RECOVERY:
            member["recovery_key"] = (keys / f"{member['name']}.recovery.pub").read_text()
    # a federation the aggregator can run (one collaborator, the policy's counter)
    data["federation"] = {"rounds": 3, "counter": "round", "min_clients": 1}
    data.update(changes)
    path = folder / "policy.yaml"
    path.write_text(to_yaml(data))
    return path


def test_keygen_sign_by_two_members_verify(run: Run, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _keygen(run, keys)
    for name in ("alice.key", "alice.recovery.key", "bob.key", "bob.recovery.key", "carol.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    assert (keys / "bob.recovery.pub").exists() and not (keys / "carol.recovery.pub").exists()
    path = _write_policy(tmp_path, keys)

    code, out, err = run("validate", str(path))
    assert code == 0, err
    assert "policy test-policy version 1: valid" in out
    assert "board:    2 of 3 (alice, bob, carol)" in out

    code, out, err = run("digest", str(path))
    assert (code, err) == (0, "")
    assert out == digest(load_policy_file(path)) + "\n"

    for member in ("alice", "bob"):
        mine = ["--recovery-pub", str(keys / f"{member}.recovery.pub")] if member == "alice" else []
        code, out, err = run(
            "sign", str(path), "--key", str(keys / f"{member}.key"), "--member", member, *mine
        )
        if member == "alice":  # checked against her own recovery key
            assert (code, err) == (0, ""), err
        else:  # shown, to check by hand
            assert code == 0 and err.startswith("note: this policy gives bob the recovery key ")
        sig = json.loads((tmp_path / f"policy.yaml.{member}.sig").read_text())
        assert sig["member"] == member and sig["digest"] == digest(load_policy_file(path))

    sigs = [str(tmp_path / f"policy.yaml.{m}.sig") for m in ("alice", "bob")]
    code, out, err = run("verify", str(path), "--sig", sigs[0], "--sig", sigs[1])
    assert code == 0, err
    assert out == "approved by alice, bob (2 of 3, 2 required)\n"

    code, out, err = run("verify", str(path), "--sig", sigs[0])
    assert (code, out) == (1, "")
    assert err == "error: approval: 1 valid signature(s) of the 2 required\n"


def test_signing_as_another_member_or_an_outsider_is_refused(run: Run, tmp_path: Path) -> None:
    """`policy sign --member carol` with alice's key would write a signature that never
    counts: it fails at once, naming whose key it is, and writes nothing."""
    keys = tmp_path / "keys"
    _keygen(run, keys)
    path = _write_policy(tmp_path, keys)
    out_file = tmp_path / "carol.sig"
    sign = ["sign", str(path), "-o", str(out_file)]
    code, out, err = run(*sign, "--key", str(keys / "alice.key"), "--member", "carol")
    assert (code, out) == (1, "")
    assert err.startswith(
        "error: sign: this key is not carol's key on this policy's board: it is alice's: "
        "sign as --member alice, or with carol's own key; if this version gives carol a new "
        "key, sign with the key of the board it replaces and name that version with --board"
    ), err
    assert err.count("\n") == 1 and not out_file.exists()

    run("keygen", "--out-dir", str(tmp_path / "other"), "--member", "dave")
    code, _, err = run(*sign, "--key", str(tmp_path / "other" / "dave.key"), "--member", "carol")
    assert err == (
        "error: sign: this key is not carol's key on this policy's board: it is no member's "
        "key: sign with carol's own key; if this version gives carol a new key, sign with the "
        "key of the board it replaces and name that version with --board FILE\n"
    )
    code, _, err = run(*sign, "--key", str(keys / "alice.key"), "--member", "dave")
    assert err == (
        "error: sign: 'dave' is not a member of this policy's board (members: alice, bob, "
        "carol); this key is alice's: sign as --member alice\n"
    )
    assert not out_file.exists()

    code, _, err = run("sign", "-", "--key", str(keys / "alice.key"), "--member", "alice")
    assert (code, err) == (1, "error: give --output when the policy comes from standard input\n")


def test_verify_a_new_version_against_the_previous_board(run: Run, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _keygen(run, keys)
    v1 = _write_policy(tmp_path, keys)
    v1_copy = tmp_path / "v1.yaml"
    v1_copy.write_bytes(v1.read_bytes())
    v2 = _write_policy(tmp_path, keys, version=2, predecessor=digest(load_policy_file(v1_copy)))
    for member in ("bob", "carol"):
        assert (
            run("sign", str(v2), "--key", str(keys / f"{member}.key"), "--member", member)[0] == 0
        )
    sigs = [str(tmp_path / f"policy.yaml.{m}.sig") for m in ("bob", "carol")]
    code, out, err = run(
        "verify", str(v2), "--sig", sigs[0], "--sig", sigs[1], "--board", str(v1_copy)
    )
    assert code == 0, err
    assert out.startswith("approved by bob, carol")
    # without --board: the version's own board, and a note that the SPM uses another
    code, out, err = run("verify", str(v2), "--sig", sigs[0], "--sig", sigs[1])
    assert code == 0 and err.startswith("note: checked against ")
    # found by a hostile review: any file stood in as the previous board (one naming
    # look-alike members, with keys of the proposer's) and the tool said "approved"
    v2_copy = tmp_path / "v2-copy.yaml"
    v2_copy.write_bytes(v2.read_bytes())
    code, out, err = run("verify", str(v2), "--sig", sigs[0], "--sig", sigs[1], "--board",
                         str(v2_copy))  # fmt: skip
    assert code != 0 and out == ""
    assert err.startswith(f"error: policy: {v2_copy} (version 2, digest ")
    assert err.endswith("...): give that one\n")


#: How the parser words an unclosed flow sequence (libyaml's, or pure-Python PyYAML's).
UNCLOSED = "did not find expected ',' or ']'" if WITH_LIBYAML else "expected ',' or ']', but got"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "error: cannot read policy '{path}': No such file or directory\n"),
        ("name: [1\n", "error: policy: YAML line 2, column 1: " + UNCLOSED),
        ("name: a\nname: b\n", "error: policy: YAML line 2, column 1: duplicate key 'name'\n"),
        ("federation: {}\n", "error: policy: name: missing required field (and 5 more errors)\n"),
    ],
    ids=["missing", "syntax", "duplicate key", "incomplete"],
)
@pytest.mark.parametrize("command", ["validate", "digest"])
def test_a_bad_policy_is_one_error_line(
    run: Run, tmp_path: Path, command: str, content: str | None, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    code, out, err = run(command, str(path))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(expected.format(path=path).rstrip("\n")), err


def test_an_invalid_field_names_its_path(run: Run, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _keygen(run, keys)
    path = _write_policy(tmp_path, keys)
    path.write_text(path.read_text().replace("$$SECFL::model-key$$", "$$SECFL::x$$"))
    code, _, err = run("validate", str(path))
    assert code == 1
    assert (
        err == "error: policy: services[1].inject.env.KEY: placeholder names unknown secret 'x'\n"
    )


def test_bad_signature_files_name_the_file(run: Run, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _keygen(run, keys)
    path = _write_policy(tmp_path, keys)
    bad = tmp_path / "bad.sig"
    bad.write_text("{}")
    code, _, err = run("verify", str(path), "--sig", str(bad))
    assert code == 1
    assert err.startswith(f"error: {bad}: signature: member: missing required field")


def test_keygen_refuses_to_overwrite_and_bad_options(run: Run, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run("keygen", "--out-dir", str(keys), "--member", "alice")[0] == 0
    before = (keys / "alice.key").read_bytes()
    code, _, err = run("keygen", "--out-dir", str(keys), "--member", "alice")
    assert (code, err) == (1, f"error: '{keys / 'alice.key'}' exists; use --force to replace it\n")
    assert (keys / "alice.key").read_bytes() == before
    assert run("keygen", "--out-dir", str(keys), "--member", "alice", "--force")[0] == 0
    assert (keys / "alice.key").read_bytes() != before

    code, _, err = run("keygen", "--out-dir", str(keys), "--member", "dave", "--kind", "rsa")
    assert (code, err) == (1, "error: --kind: 'rsa' is not one of ed25519, ecdsa-p256\n")
    code, _, err = run("keygen", "--out-dir", str(keys), "--member", "a b")
    assert (code, err) == (1, "error: --member: 'a b' is not a valid member name\n")


def test_fewer_recovery_keys_than_the_threshold_is_one_error_line(run: Run, tmp_path: Path) -> None:
    """One member's recovery key must not recover a 2-of-3 board's secrets."""
    keys = tmp_path / "keys"
    _keygen(run, keys)
    path = _write_policy(tmp_path, keys)
    data = yaml.safe_load(path.read_text())
    data["board"]["members"][1].pop("recovery_key")
    path.write_text(to_yaml(data))
    for command in ("validate", "digest"):
        code, out, err = run(command, str(path))
        assert (code, out) == (1, "")
        assert err == (
            "error: policy: board.members: 1 member(s) have a recovery_key, fewer than the "
            "threshold (2): give at least 2 members a recovery_key, or none\n"
        )


def test_an_endless_input_is_refused_in_one_line() -> None:
    """`/dev/zero` as a policy must not be read until memory runs out."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "policy", "validate", "/dev/zero"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: policy '/dev/zero' is larger than 67108864 bytes"
    ]


def test_show_prints_what_the_spm_grants_and_what_a_version_changes(
    run: Run, tmp_path: Path
) -> None:
    """For the board's review (a hostile review found the raw YAML was all a reviewer
    had, and recovery keys showed only as opaque PEM: a proposer could put their own
    in other members' entries)."""
    from secfl.policy import _keys as keys_

    keys = tmp_path / "keys"
    _keygen(run, keys)
    v1 = _write_policy(tmp_path, keys)
    code, out, err = run("show", str(v1))
    assert code == 0, err
    for member in RECOVERY:  # the fingerprints `secfl policy keygen` printed
        signing = keys_.key_id(keys_.load_public((keys / f"{member}.pub").read_bytes()))
        recovery = keys_.key_id(
            keys_.load_recovery_public((keys / f"{member}.recovery.pub").read_bytes())
        )
        assert f"  {member}: signing key {signing}, recovery key {recovery}\n" in out
    assert "  carol: signing key " in out and out.count("recovery key none") == 1
    assert "service col (role collaborator)\n" in out
    v1_copy = tmp_path / "v1.yaml"
    v1_copy.write_bytes(v1.read_bytes())
    data = yaml.safe_load(v1.read_text())
    data["secrets"].append({"name": "extra", "kind": "aes-256"})
    data["services"][1]["secrets"] = ["extra"]
    data.update(version=2, predecessor=digest(load_policy_file(v1_copy)))
    v2 = tmp_path / "v2.yaml"
    v2.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, err = run("show", str(v2), "--against", str(v1_copy))
    assert code == 0, err
    changed = [line for line in out.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert "+  receives extra: whole" in changed and "+  extra: aes-256" in changed
    assert not [line for line in changed if "signing key" in line]  # the board is the same
    code, _, err = run("show", str(v2), "--against", str(v2))
    assert code == 1 and "is not the version" in err


def test_a_recovery_key_that_is_not_the_signers_stops_the_signature(
    run: Run, tmp_path: Path
) -> None:
    """Found by a hostile review: a proposer put recovery keys of their own in the other
    members' entries (opaque PEM), the others signed, and the proposer alone could then
    rebuild the policy's data key from the SPM's database."""
    keys = tmp_path / "keys"
    _keygen(run, keys)
    path = _write_policy(tmp_path, keys)
    data = yaml.safe_load(path.read_text())
    from secfl.policy import _keys as keys_

    proposers = keys_.generate_recovery()[1].decode()
    for member in data["board"]["members"]:
        if member["name"] == "alice":  # the proposer's recovery key in alice's entry
            member["recovery_key"] = proposers
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out_file = tmp_path / "alice.sig"
    mine = str(keys / "alice.recovery.pub")
    code, _, err = run("sign", str(path), "--key", str(keys / "alice.key"), "--member", "alice",
                       "--recovery-pub", mine, "-o", str(out_file))  # fmt: skip
    assert code == 1 and err.startswith("error: sign: this policy gives alice the recovery key ")
    assert err.endswith("a share of every secret goes to whoever holds it; do not sign\n")
    assert not out_file.exists()


def test_show_against_names_the_service_a_changed_line_belongs_to(run: Run, tmp_path: Path) -> None:
    """Found by a hostile review: a service's lines do not name it, and the diff shows
    one line of context, so a version that gave a site another's data volume showed the
    board `+  opens volumes: data` without saying which site; each hunk now names the
    section its first lines belong to."""
    keys = tmp_path / "keys"
    _keygen(run, keys)
    v1 = _write_policy(tmp_path, keys)
    data = yaml.safe_load(v1.read_text())
    site = {"name": "col-2", "role": "collaborator", "measurements": {"simulated": ["ef" * 48]}}
    data["services"].append(site)
    v1.write_text(yaml.safe_dump(data, sort_keys=False))
    v1_copy = tmp_path / "v1.yaml"
    v1_copy.write_bytes(v1.read_bytes())
    data["services"][1]["volumes"] = ["data"]  # col (not col-2) opens the data volume
    data.update(version=2, predecessor=digest(load_policy_file(v1_copy)))
    v2 = tmp_path / "v2.yaml"
    v2.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, err = run("show", str(v2), "--against", str(v1_copy))
    assert code == 0, err
    lines = out.splitlines()
    added = lines.index("+  opens volumes: data")
    hunk = next(line for line in reversed(lines[:added]) if line.startswith("@@"))
    assert hunk.endswith(" @@ service col (role collaborator)"), hunk


def test_sign_with_digest_signs_only_what_was_reviewed(run: Run, tmp_path: Path) -> None:
    """A review's lead: `policy show` and `policy sign` read the file each on its own, so
    a host that changed it in between got a member's signature on a version no one had
    reviewed. With --digest (the one `show` printed) the signature is refused then."""
    keys = tmp_path / "keys"
    _keygen(run, keys)
    path = _write_policy(tmp_path, keys)
    code, shown_, _ = run("show", str(path))
    assert code == 0
    reviewed = shown_.split("digest ", 1)[1].split()[0]
    assert reviewed == digest(load_policy_file(path))
    sign = ["sign", str(path), "--key", str(keys / "alice.key"), "--member", "alice"]
    data = yaml.safe_load(path.read_text())
    data["federation"]["strategy"] = "fedavg"  # the host turns the clone audit off
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out_file = tmp_path / "alice.sig"
    code, _, err = run(*sign, "--digest", reviewed, "-o", str(out_file))
    assert code == 1 and err.startswith("error: --digest: the policy's digest is ")
    assert "the file changed since you reviewed it" in err and err.count("\n") == 1
    assert not out_file.exists()
    code, _, err = run(*sign, "--digest", "12ab", "-o", str(out_file))
    assert code == 1 and "64 hex digits" in err and not out_file.exists()
    now = digest(load_policy_file(path))
    code, _, err = run(*sign, "--digest", now.upper(), "-o", str(out_file))
    assert code == 0, err
    assert json.loads(out_file.read_text())["digest"] == now


def test_a_fifo_at_an_output_name_is_no_hang(tmp_path: Path) -> None:
    """A hostile review: an output that is a pipe (``/dev/stdout``, ``>(...)``) is written
    in place, and so was a FIFO another user put at the name in a folder both may write
    in: `policy keygen --force` (a real process here) blocked for ever on the FIFO
    nobody reads. It is a one-line refusal now, at once."""
    import os
    import subprocess

    from tests.clirun import one_error, secfl

    os.mkfifo(tmp_path / "alice.pub")
    argv = ["policy", "keygen", "--out-dir", str(tmp_path), "--member", "alice", "--force"]
    try:
        done = secfl(*argv, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("secfl policy keygen blocked on the FIFO")
    assert "a FIFO nobody reads" in one_error(done)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "alice.pub").st_mode)


def test_a_signature_counts_for_thirty_days_unless_told(run: Run, tmp_path: Path) -> None:
    """`policy sign` signs an expiry (30 days by default): a version the board abandons
    cannot be submitted with its signatures months later; `verify` says so too."""
    from datetime import UTC, datetime, timedelta

    from secfl.policy import _keys
    from secfl.policy._signatures import sign_policy

    keys = tmp_path / "keys"
    _keygen(run, keys)
    path = _write_policy(tmp_path, keys)
    base = ["sign", str(path), "--key", str(keys / "alice.key"), "--member", "alice"]
    code, out, err = run(*base, "-o", str(tmp_path / "a.sig"))
    assert code == 0, err
    expires = json.loads((tmp_path / "a.sig").read_text())["expires"]
    left = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(days=29) < left <= timedelta(days=30) and f"until {expires}" in out
    code, _, err = run(*base, "-o", str(tmp_path / "n.sig"), "--expires", "never")
    assert code == 0, err
    assert "expires" not in json.loads((tmp_path / "n.sig").read_text())
    for when, refused in (("2020-01-01", "is past"), ("soon", "is not a duration")):
        code, _, err = run(*base, "-o", str(tmp_path / "x.sig"), "--expires", when)
        assert code != 0 and err.startswith("error: --expires: ") and refused in err, err
    assert not (tmp_path / "x.sig").exists()

    policy = load_policy_file(path)
    old = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = _keys.load_private((keys / "bob.key").read_bytes())
    (tmp_path / "b.sig").write_text(sign_policy(policy, key, "bob", old).to_json())
    code, out, err = run("verify", str(path), "--sig", str(tmp_path / "a.sig"),
                         "--sig", str(tmp_path / "b.sig"))  # fmt: skip
    assert (code, out) == (1, "")
    assert err.startswith(f"error: approval: the signature by 'bob' expired at {old}")
