"""What a board member signs and writes, against the files a proposer hands over (found
by a hostile review): a signature written through a link that came with a proposal, a
write cut short by a full disk, versions `sign` approved though `validate` refused them,
flag values YAML 1.1 reads otherwise than people do, and a policy in UTF-16.

The writes run as real `secfl` processes (a real symbolic link, a real EFBIG from
RLIMIT_FSIZE as a full disk gives ENOSPC); the rest through ``main()``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from secfl.fl._config import FederationConfig
from secfl.policy import load_policy_file
from tests.cli.test_policy_cli import _keygen, _write_policy
from tests.cli.test_policy_init import ALL_SEALED, _init
from tests.cli.test_policy_init import world as world  # the fixture, shared
from tests.clirun import call, failed

Capsys = pytest.CaptureFixture[str]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def board(tmp_path: Path, capsys: Capsys) -> tuple[Path, Path]:
    """Board keys and a policy they may sign: (policy.yaml, keys folder)."""
    keys = tmp_path / "keys"

    def run(*args: str) -> tuple[int, str, str]:
        return call(capsys, "policy", *args)

    _keygen(run, keys)
    return _write_policy(tmp_path, keys), keys


def _secfl(*args: str, limit: str = "") -> subprocess.CompletedProcess[str]:
    """``secfl ARGS`` in a process of its own (under ``ulimit -f LIMIT``, SIGXFSZ
    ignored, so a write past it fails with EFBIG as a full disk fails with ENOSPC)."""
    argv = [sys.executable, "-m", "secfl.cli.main", *args]
    if limit:
        argv = ["sh", "-c", f'trap "" XFSZ; ulimit -f {limit} && exec "$@"', "sh", *argv]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # (no .pyc cut short by the limit)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_a_link_at_the_signatures_path_is_replaced_not_followed(board: tuple[Path, Path]) -> None:
    """The proposer shipped `policy.yaml.alice.sig` as a link to where Alice keeps her
    key: `secfl policy sign` wrote the signature through it, over her board key."""
    policy, keys = board
    key = keys / "alice.key"
    before = key.read_bytes()
    planted = policy.with_name("policy.yaml.alice.sig")
    planted.symlink_to(key)
    done = _secfl("policy", "sign", str(policy), "--key", str(key), "--member", "alice")
    assert done.returncode == 0, done.stderr
    assert key.read_bytes() == before  # her key is as it was
    assert not planted.is_symlink() and '"member": "alice"' in planted.read_text()
    verified = _secfl("policy", "verify", str(policy), "--sig", str(planted))
    assert "error: approval: 1 valid signature(s) of the 2 required" in verified.stderr


# (not /dev/stdout itself: code with the bug, run as root, replaced it for the machine)
@pytest.mark.parametrize("stream", ["/dev/fd/1", "/proc/self/fd/1"])
def test_a_signature_to_standard_output_goes_where_it_is_redirected(
    board: tuple[Path, Path], stream: str
) -> None:
    """The review of the fix: with stdout redirected to a file, `--output /dev/stdout`
    (a link to it) was replaced as a file would be: "No such file or directory", or,
    as root, /dev/stdout itself became a regular file holding the signature."""
    policy, keys = board
    redirected = policy.with_name("sig.json")
    argv = [sys.executable, "-m", "secfl.cli.main", "policy", "sign", str(policy), "--key",
            str(keys / "alice.key"), "--member", "alice", "--output", stream]  # fmt: skip
    with open(redirected, "wb") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, text=True, timeout=60,
                              check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # (the line that names the file follows on the same stream, from its own offset)
    assert '"signature": "' in redirected.read_text()


@pytest.mark.parametrize("via", ["/proc/self/root", "/dev/.."])
def test_a_planted_link_into_dev_or_proc_is_replaced_not_followed(
    board: tuple[Path, Path], via: str
) -> None:
    """The review of the fix: a link whose target merely began with /dev/ or /proc/
    counted as a stream and was written through, and /proc/self/root/... (or
    /dev/../...) leads anywhere: to the member's key again."""
    policy, keys = board
    key = keys / "alice.key"
    before = key.read_bytes()
    planted = policy.with_name("policy.yaml.alice.sig")
    planted.symlink_to(via + str(key))
    done = _secfl("policy", "sign", str(policy), "--key", str(key), "--member", "alice")
    assert done.returncode == 0, done.stderr
    assert key.read_bytes() == before
    assert not planted.is_symlink() and '"member": "alice"' in planted.read_text()


def test_a_signature_that_cannot_be_written_leaves_the_old_one(board: tuple[Path, Path]) -> None:
    """Written in place, a signature cut short by a full disk was left empty."""
    policy, keys = board
    args = ("policy", "sign", str(policy), "--key", str(keys / "bob.key"), "--member", "bob")
    assert _secfl(*args).returncode == 0
    sig = policy.with_name("policy.yaml.bob.sig")
    before = sig.read_bytes()
    done = _secfl(*args, limit="0")
    said = [line for line in done.stderr.splitlines() if not line.startswith("note: ")]
    assert done.returncode == 1 and len(said) == 1, done.stderr
    assert said[0].startswith(f"error: cannot write '{sig}': "), said
    assert sig.read_bytes() == before
    assert sorted(p.name for p in policy.parent.iterdir() if p.name.startswith(".")) == []


def test_the_signing_key_is_never_the_output(board: tuple[Path, Path], capsys: Capsys) -> None:
    policy, keys = board
    key = keys / "carol.key"
    before = key.read_bytes()
    err = failed(capsys, "policy", "sign", str(policy), "--key", str(key), "--member", "carol",
                 "-o", str(key))  # fmt: skip
    assert f"--output '{key}' is the signing key: give another file" in err
    assert key.read_bytes() == before


def _sign(capsys: Capsys, policy: Path, keys: Path) -> tuple[int, str, str]:
    recovery = str(keys / "alice.recovery.pub")
    return call(capsys, "policy", "sign", str(policy), "--key", str(keys / "alice.key"),
                "--member", "alice", "--recovery-pub", recovery)  # fmt: skip


@pytest.mark.parametrize("what", ["pins no code", "exponent as text"])
def test_sign_refuses_what_validate_refuses(
    board: tuple[Path, Path], capsys: Capsys, what: str
) -> None:
    """`sign` checked less than `validate` and the SPM: members signed a service that
    accepts any SEV-SNP guest, and a `lr: 1e-3` that YAML 1.1 reads as the text "1e-3"
    (every collaborator refused that version)."""
    policy, keys = board
    data = yaml.safe_load(policy.read_text())
    if what == "pins no code":
        data["services"][0]["measurements"]["snp"] = [{"vmpl": 0}]
        data["platforms"]["accept"].append("snp")
        policy.write_text(yaml.safe_dump(data, sort_keys=False))
        said = "policy: services.agg.measurements.snp[0] pins no code: it accepts any snp workload"
    else:
        data["federation"]["train"] = {"lr": 0.5}
        policy.write_text(yaml.safe_dump(data, sort_keys=False).replace("lr: 0.5", "lr: 1e-3"))
        said = "1e-3 reads as text in YAML 1.1, not as a number: write it with a dot"
    code, out, err = call(capsys, "policy", "validate", str(policy))
    assert code == 1 and said in err, err
    code, out, err = _sign(capsys, policy, keys)
    assert code == 1 and said in err and out == "", err
    assert not policy.with_name("policy.yaml.alice.sig").exists()


def test_flag_values_are_read_as_people_write_them(world: Path, capsys: Capsys) -> None:
    """`--train lr=1e-3` became the text "1e-3" (a version every collaborator refused);
    `--set rounds=012` became 10; a deeply nested value was a traceback; an alias was
    reported at a line of a document nobody sees."""
    code, _, err = _init(capsys, "--validation", "validation.secfl", *ALL_SEALED,
                         "--train", "lr=1e-3", "--train", "epochs=2")  # fmt: skip
    assert (code, err) == (0, ""), err
    policy = load_policy_file(world / "policy.yaml")
    assert policy.federation["train"] == {"lr": 0.001, "epochs": 2}
    FederationConfig.parse(policy.federation)  # as the aggregator reads it
    for value, said in [
        ("rounds=012", "--set rounds: 012 reads as 10 in YAML 1.1"),
        ("seed=" + "[" * 1000, "--set seed: "),
        ("seed=&a [*a]", "--set seed: YAML aliases are not allowed"),
        ("seed=1e400", "--set seed: 1e400 is not a finite number"),
        ("seed=.5e3", "--set seed: .5e3 reads as text in YAML 1.1"),  # (not JSON)
    ]:
        err = failed(capsys, "policy", "next", "policy.yaml", "-o", "next.yaml", "--set", value)
        assert err.startswith(f"error: {said}"), err
        assert not (world / "next.yaml").exists()


def test_a_sealed_value_file_that_is_not_text_is_one_line(world: Path, capsys: Capsys) -> None:
    (world / "bad.txt").write_bytes(b"\xff\xfe\xfd")
    sealed = [s for s in ALL_SEALED if "task-key" not in s] + ["--sealed=task-key=@bad.txt"]
    code, out, err = _init(capsys, "--validation", "validation.secfl", *sealed)
    assert code == 1 and out == "", err
    assert err == (
        "error: --sealed task-key: 'bad.txt' is not a sealed value (the output of "
        "`secfl policy seal-secret`)\n"
    )


def test_a_value_file_of_megabytes_is_refused_before_anything_is_built(
    world: Path, capsys: Capsys
) -> None:
    """A 50 MB one-line --sealed @FILE took 26 s of CPU before the policy's own size
    check refused it; a device named as a key was read for 64 MiB."""
    (world / "huge.txt").write_bytes(b"A" * (2 << 20))
    sealed = [s for s in ALL_SEALED if "task-key" not in s] + ["--sealed=task-key=@huge.txt"]
    err = _init(capsys, "--validation", "validation.secfl", *sealed)[2]
    assert err == "error: sealed value of task-key 'huge.txt' is larger than 65536 bytes\n"
    err = failed(capsys, "policy", "init", "--name", "fed", "--member", "alice=/dev/zero",
                 "--site", "s", "--task", "task.secfl", "--sim-root", "sim/root.pem")  # fmt: skip
    assert err == "error: cannot read alice's public key '/dev/zero': not a regular file\n"
    (world / "root.pem").write_bytes(b"-" * (64 << 10) + b"\n")
    err = failed(capsys, "policy", "init", "--name", "fed", "--member", "alice=board/alice.pub",
                 "--site", "s", "--task", "task.secfl", "--sim-root", "root.pem")  # fmt: skip
    assert err == "error: simulation root 'root.pem' is larger than 65536 bytes\n"
    assert not (world / "policy.yaml").exists()


def test_a_utf16_policy_is_read_alike_by_every_command(world: Path, capsys: Capsys) -> None:
    """`validate` and `sign` read a UTF-16 policy (as an editor on Windows saves it);
    `next` and `submit` read it as UTF-8 and refused it ("unacceptable character")."""
    code, _, err = _init(capsys, "--validation", "validation.secfl", *ALL_SEALED)
    assert code == 0, err
    for encoding in ("utf-16", "utf-16-le"):  # (the review of the fix: no byte order mark)
        wide = world / f"{encoding}.yaml"
        wide.write_bytes((world / "policy.yaml").read_text().encode(encoding))
        code, _, err = call(capsys, "policy", "validate", str(wide))
        assert code == 0, err
        code, _, err = call(capsys, "policy", "next", str(wide), "-o", "next.yaml", "--force")
        assert (code, err) == (0, ""), err
        after = load_policy_file(world / "next.yaml")
        assert after.version == 2 and after.predecessor is not None
    (world / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    err = failed(capsys, "policy", "next", "latin1.yaml")
    assert "not UTF-8 text (byte 9): save it as UTF-8" in err


def test_sign_reset_signs_only_what_the_aggregator_can_accept(
    board: tuple[Path, Path], capsys: Capsys
) -> None:
    """`sign-reset` signed a value past 2**63-1, a counter the policy does not have, and
    with a key that is not the member's: each a reset the aggregator refuses, found out
    only when it starts; its default counter was "rounds", whatever the policy's."""
    policy, keys = board
    reset = policy.with_name("reset.json")

    def sign(*extra: str, key: str = "alice") -> tuple[int, str, str]:
        signing = str(keys / f"{key}.key")
        return call(capsys, "policy", "sign-reset", "--policy", str(policy), "--key", signing,
                    "--member", "alice", "-o", str(reset), *extra)  # fmt: skip

    for extra, key, said in [
        (("--value", str(2**63)), "alice", "--value: the SPM counter's current value, from 0"),
        (("--value", "3", "--counter", "rounds"), "alice",
         "--counter: 'rounds' is not a counter of this policy (data-version, round)"),
        (("--value", "3"), "bob", "sign: this key is not alice's key on this policy's board: "
         "it is bob's: sign as --member bob, or with alice's own key\n"),
    ]:  # fmt: skip
        code, out, err = sign(*extra, key=key)
        assert code == 1 and out == "" and said in err, err  # (the line's end, for bob's)
        assert len(err.strip().splitlines()) == 1
        assert not reset.exists()
    code, out, err = sign("--value", "3")
    assert code == 0 and "signature(s) for resetting 'round' at 3" in out, err


def test_seal_secret_refuses_a_member_counted_twice(
    board: tuple[Path, Path], capsys: Capsys, tmp_path: Path
) -> None:
    """The same `--board-key` twice passed the threshold check, and the value was sealed
    for a board of one member with threshold 2, which no policy can have: it could never
    be released, and nothing said so until then."""
    from secfl.shield import generate_key, write_key_file

    _, keys = board
    key_file = tmp_path / "data.key"
    write_key_file(key_file, generate_key())
    again = tmp_path / "alice-again.pub"
    again.write_text((keys / "alice.pub").read_text().replace("\n", "\r\n"))  # another form
    alice = str(keys / "alice.pub")
    for second in (str(again), alice):  # (the review of the fix: the same path twice)
        err = failed(capsys, "policy", "seal-secret", "--key-file", str(key_file), "--policy",
                     "p", "--secret", "data-key", "--spm", "https://127.0.0.1:9", "--spm-pin",
                     "0" * 64, "--board-key", alice, "--board-key", second,
                     "--threshold", "2")  # fmt: skip
        assert err == (
            f"error: --board-key: '{second}' is the same key as '{alice}': give each "
            "member's once\n"
        )


@pytest.mark.parametrize(
    ("strategy", "settings", "said"),
    [
        ("clone-audit", {"seed": -1}, "clone-audit: seed must be an integer >= 0, not -1"),
        ("clone-audit", {"clones": 2**53}, "clone-audit: clones must be an integer from 2 to 1000"),
        ("clone-audit", {"base_settings": 1}, "clone-audit: base_settings must be a mapping"),
        ("clone-audit", {"seed": "x"}, "clone-audit: seed must be an integer >= 0, not 'x'"),
        ("centered-clipping", {"tau": 1, "iterations": 2**53},
         "centered-clipping: iterations must be an integer from 1 to 1000"),
        ("dnc", {"dims": 2**40}, "dnc: dims must be an integer from 1 to 4194304"),
    ],
)  # fmt: skip
def test_validate_refuses_strategy_settings_the_aggregator_cannot_run(
    board: tuple[Path, Path], capsys: Capsys, strategy: str, settings: dict[str, object], said: str
) -> None:
    """From a review: `validate` passed them, or printed a traceback; the aggregator then
    failed (a traceback, a 24 PiB allocation) or spun for ever at round 1, after every
    site had trained."""
    policy, _ = board
    data = yaml.safe_load(policy.read_text())
    data["federation"] |= {"strategy": strategy, "strategy_settings": settings}
    policy.write_text(yaml.safe_dump(data, sort_keys=False))
    err = failed(capsys, "policy", "validate", str(policy))
    assert err.startswith(f"error: federation: strategy: {said}"), err


def test_what_init_and_next_write_validates(world: Path, capsys: Capsys) -> None:
    """The review of the fix: `init --settings` with a task's `lr: 1e-3`, or text given
    quoted (`--train 'tag="1e-3"'`), was written unquoted, and `validate` then refused
    the policy `init` had just written."""
    (world / "fed.yaml").write_text("train: {lr: 1e-3, epochs: 2}\n")
    code, _, err = _init(capsys, "--validation", "validation.secfl", *ALL_SEALED,
                         "--settings", "fed.yaml", "--train", 'tag="1e-3"')  # fmt: skip
    assert (code, err) == (0, ""), err
    assert "tag: '1e-3'" in (world / "policy.yaml").read_text()
    code, _, err = call(capsys, "policy", "validate", "policy.yaml")
    assert code == 0, err
    train = load_policy_file(world / "policy.yaml").federation["train"]
    assert train == {"lr": 0.001, "epochs": 2, "tag": "1e-3"}
    code, _, err = call(capsys, "policy", "next", "policy.yaml", "--train", 'note="2e5"')
    assert code == 0, err
    code, _, err = call(capsys, "policy", "validate", "policy-v2.yaml")
    assert code == 0, err
    assert load_policy_file(world / "policy-v2.yaml").federation["train"]["note"] == "2e5"


def test_a_value_may_come_from_a_pipe_as_a_shell_gives_it(world: Path) -> None:
    """The bound on @FILE values first refused all but regular files: `--sim-root
    /dev/stdin` and a process substitution (`--member carol=<(cat carol.pub)`, a
    /dev/fd/N pipe) were refused (review of the fix)."""
    script = (
        f"{sys.executable} -m secfl.cli.main policy init --name fed "
        "--member alice=board/alice.pub,board/alice.recovery.pub "
        "--member bob=board/bob.pub,board/bob.recovery.pub "
        "--member carol=<(cat board/carol.pub) --site site-1 --site site-2 "
        "--task task.secfl --validation validation.secfl --sim-root /dev/stdin "
        + " ".join(ALL_SEALED)
        + " < sim/root.pem"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=world, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    policy = load_policy_file(world / "policy.yaml")
    assert [m.name for m in policy.board.members] == ["alice", "bob", "carol"]
    assert policy.platforms.simulation_root is not None


def test_seal_secret_refuses_what_no_policy_can_name(
    board: tuple[Path, Path], capsys: Capsys, tmp_path: Path
) -> None:
    """A secret or policy name outside the policy's name rule, or a board key of a kind
    no board can have (RSA), was sealed, and refused only once the board's policy named
    it (a review)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from secfl.shield import generate_key, write_key_file

    _, keys = board
    key_file = tmp_path / "data.key"
    write_key_file(key_file, generate_key())
    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    alice, bob = str(keys / "alice.pub"), str(keys / "bob.pub")

    def seal(policy: str, secret: str, second: str) -> str:
        return failed(capsys, "policy", "seal-secret", "--key-file", str(key_file), "--policy",
                      policy, "--secret", secret, "--spm", "https://127.0.0.1:9", "--spm-pin",
                      "0" * 64, "--board-key", alice, "--board-key", second,
                      "--threshold", "2")  # fmt: skip

    assert seal("p", "data key", bob).startswith(
        "error: --secret 'data key': not a name a policy can have"
    )
    assert seal("-p", "data-key", bob).startswith("error: --policy '-p': not a name a policy")
    err = seal("p", "data-key", str(rsa_pub))
    assert err.startswith(f"error: --board-key: '{rsa_pub}': ") and "RSA" in err, err
    assert err.count("\n") == 1
