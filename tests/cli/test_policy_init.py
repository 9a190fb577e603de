"""`secfl policy init`: a complete federation policy from a few flags, right the first time.

The written policy validates, is signed and verified; its measurements are exactly what
`secfl measure --for-run` (and so `secfl run`) computes for the commands it prints; what
only another party can give is a placeholder that `validate` and `sign` refuse, saying
what to run. (The whole path to a trained model opened by its owner, with a real SPM and
`secfl run`, is the walkthrough's test: tests/cli/test_federation_cli.py.)
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import pytest
import yaml

from secfl.policy import load_policy_file
from secfl.shield import encrypt_directory
from secfl.tee import _simulated as simulated
from tests.clirun import ERROR_LINE, call, failed

Capsys = pytest.CaptureFixture[str]
SEALED = (  # what `secfl policy seal-secret` writes (examples/policy.yaml's)
    "BBAOC9GPiZsMneH6l+InGsFDwsGY7ypo/gG/181IG2i0enkbv8iVe5mg722DZjemzj9Hs3IWU7cZR86KQXJam2NzpTox"
    "1pzenTuIdUAwomx3TepEP7YNsg/k8M6kmhAzJGyfMnPppT6cCMtLRl3lWIU="
)


@pytest.fixture
def world(tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Board keys, a simulation root and shielded task, validation and site volumes; the
    `secfl` of this install on PATH, as a user has it."""
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.chdir(tmp_path)
    simulated.init(tmp_path / "sim")
    for member in ("alice", "bob", "carol"):
        code, _, err = call(capsys, "policy", "keygen", "--out-dir", "board", "--member", member,
                            "--recovery")  # fmt: skip
        assert code == 0, err
    for name in ("task", "validation", "site-1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.txt").write_text(name)
        encrypt_directory(tmp_path / name, tmp_path / f"{name}.secfl", os.urandom(32))
    return tmp_path


def _init(capsys: Capsys, *extra: str) -> tuple[int, str, str]:
    return call(
        capsys, "policy", "init", "--name", "fed",
        "--member", "alice=board/alice.pub,board/alice.recovery.pub",
        "--member", "bob=board/bob.pub,board/bob.recovery.pub", "--member", "carol=board/carol.pub",
        "--site", "site-1", "--site", "site-2", "--task", "task.secfl",
        "--sim-root", "sim/root.pem", *extra,
    )  # fmt: skip


ALL_SEALED = [f"--sealed={s}={SEALED}" for s in ("task-key", "validation-key", "output-key",
                                                   "site-1-key", "site-2-key")]  # fmt: skip


def test_init_validate_sign_verify(world: Path, capsys: Capsys) -> None:
    code, out, err = _init(capsys, "--validation", "validation.secfl", "--data",
                           "site-1=site-1.secfl", *ALL_SEALED, "--rounds", "3",
                           "--train", "epochs=2", "--objective", "accuracy:max")  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out.startswith("wrote policy.yaml: policy fed version 1 (digest ")
    assert "to fill in" not in out
    policy = load_policy_file(world / "policy.yaml")
    assert policy.board.threshold == 2  # a majority of three
    assert [s.name for s in policy.services] == ["aggregator", "site-1", "site-2"]
    agg = policy.service("aggregator")
    assert agg is not None and sorted(agg.inject.files) == [
        "/fl/checkpoint.key", "/fl/output.key", "/fl/signing-key.pem",
    ]  # fmt: skip
    volumes = {v.name: v for v in policy.volumes}
    assert volumes["site-1"].tag is not None and volumes["site-1"].counter is None
    assert volumes["site-2"].counter == "site-2-data"  # its data may come later
    fed = policy.federation
    assert fed["rounds"] == 3 and fed["min_clients"] == 2 and fed["train"] == {"epochs": 2}
    assert fed["objective"] == {"metric": "accuracy", "mode": "max"}

    # the measurements are those of the commands it prints, as `secfl run` measures them
    for role, argv in (
        ("aggregator", ["secfl", "aggregator", "--task", "volume:task", "--validation",
                        "volume:validation"]),
        ("site-1", ["secfl", "collaborator", "--task", "volume:task"]),
    ):  # fmt: skip
        code, measured, _ = call(capsys, "measure", "--for-run", "--code-volume",
                                 "task=task.secfl", "--", *argv)  # fmt: skip
        service = policy.service(role)
        assert service is not None and service.measurements["simulated"] == [measured.strip()]
        assert f"-- {' '.join(argv)}" in out  # the line each host runs
    assert "SECFL_AGGREGATOR=AGGREGATOR_HOST:7443 secfl run" in out
    text = (world / "policy.yaml").read_text()
    assert "#   command:      secfl collaborator --task volume:task" in text

    code, out, err = call(capsys, "policy", "validate", "policy.yaml")
    assert (code, err) == (0, ""), err
    for member in ("alice", "carol"):
        # alice checks the recovery key the policy gives her; carol has none in it
        mine = ["--recovery-pub", "board/alice.recovery.pub"] if member == "alice" else []
        code, _, err = call(capsys, "policy", "sign", "policy.yaml", "--key",
                            f"board/{member}.key", "--member", member, *mine)  # fmt: skip
        assert (code, err) == (0, ""), err
    code, out, err = call(capsys, "policy", "verify", "policy.yaml", "--sig",
                          "policy.yaml.alice.sig", "--sig", "policy.yaml.carol.sig")  # fmt: skip
    assert (code, out) == (0, "approved by alice, carol (2 of 3, 2 required)\n"), err


def test_what_others_must_give_is_a_placeholder_validate_and_sign_refuse(
    world: Path, capsys: Capsys
) -> None:
    sealed = [s for s in ALL_SEALED if "site-2" not in s]
    code, out, err = _init(capsys, *sealed)
    assert (code, err) == (0, ""), err
    assert (
        "to fill in before it is signed (1; `secfl policy validate` refuses it until then):" in out
    )
    expected = (
        "secrets[6].sealed: site site-2 seals its key for this board: `secfl policy "
        "seal-secret --key-file site-2.key --policy fed --secret site-2-key --spm URL "
        "--spm-pin PIN --board-key alice.pub --board-key bob.pub --board-key carol.pub "
        "--threshold 2` and puts the printed value here (or runs `secfl policy init` again "
        "with --sealed site-2-key=VALUE)"
    )
    assert f"  {expected}\n" in out
    code, out, err = call(capsys, "policy", "validate", "policy.yaml")
    assert (code, out, err) == (1, "", f"error: todo: {expected}\n")
    code, out, err = call(capsys, "policy", "sign", "policy.yaml", "--key", "board/alice.key",
                          "--member", "alice")  # fmt: skip
    assert (code, out) == (1, "") and err.startswith("error: todo: secrets[6].sealed: site site-2")
    assert not (world / "policy.yaml.alice.sig").exists()

    # the site's value arrives: init again, and the policy is ready
    code, _, err = _init(capsys, *ALL_SEALED)
    assert (code, err) == (1, "error: 'policy.yaml' exists; use --force to replace it\n")
    code, _, err = _init(capsys, *ALL_SEALED, "--force")
    assert code == 0, err
    assert call(capsys, "policy", "validate", "policy.yaml")[0] == 0


def test_hardware_measurements_are_pinned_as_given(world: Path, capsys: Capsys) -> None:
    """A TD is pinned by its firmware, kernel and command line together (mrtd alone is
    the firmware: any guest booted on it passed, found by a review)."""
    agg = {"mrtd": "ab" * 48, "rtmr1": "a1" * 48, "rtmr2": "a2" * 48}
    col = {"mrtd": "cd" * 48, "rtmr1": "c1" * 48, "rtmr2": "c2" * 48, "rtmr3": "c3" * 48}

    def given(pin: dict[str, str]) -> str:
        return ",".join(f"{k}={v.upper()}" for k, v in pin.items())

    common = ["policy", "init", "--name", "hw", "--member", "alice=board/alice.pub", "--site",
              "s1", "--task", "task.secfl", "--platform", "tdx",
              *[f"--sealed={s}-key={SEALED}" for s in ("task", "output", "s1")]]  # fmt: skip
    pins = ["--measurement", f"tdx:aggregator={given(agg)}",
            "--measurement", f"tdx:collaborator={given(col)}"]  # fmt: skip
    code, _, err = call(capsys, *common, *pins, "-o", "hw.yaml")
    assert (code, err) == (0, ""), err
    doc = yaml.safe_load((world / "hw.yaml").read_text())
    assert doc["platforms"] == {"accept": ["tdx"], "allow_unknown_tcb": False}
    assert [s["measurements"] for s in doc["services"]] == [{"tdx": [agg]}, {"tdx": [col]}]
    assert doc["board"]["threshold"] == 1
    assert call(capsys, "policy", "validate", "hw.yaml")[0] == 0
    # the firmware alone is refused, saying what a TD needs
    firmware = ["--measurement", f"tdx:aggregator={'ab' * 48}", *pins[2:]]
    code, _, err = call(capsys, *common, *firmware, "-o", "hw2.yaml")
    assert code == 1 and "give mrtd (96 hex digits), rtmr1 (96 hex digits) and rtmr2" in err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--site", "task"], "init: --site 'task' would share a volume or secret name with"),
        (["--site", "a b"], "init: --site: 'a b' is not a name (letters, digits, . _ -)"),
        (["--site", "site-1"], "init: the service name 'site-1' is given twice"),
        (["--sealed", "nope-key=x"], "init: --sealed: 'nope-key' is not a key this policy imports"),
        (["--sealed", "oops"], "--sealed: 'oops' is not SECRET=VALUE (or SECRET=@FILE)"),
        (
            ["--sealed", "site-2-key=garbage"],
            "secrets: 'site-2-key': its sealed value is not what `secfl policy seal-secret` "
            "writes (it is not base64)",
        ),
        (
            ["--sealed", f"site-2-key={base64.b64encode(base64.b64decode(SEALED)[:69]).decode()}"],
            "secrets: 'site-2-key': its sealed value is not what `secfl policy seal-secret` "
            "writes (69 bytes, fewer than the 82 of the shortest sealed value)",
        ),
        (["--set", "round=8"], "federation: round: unknown setting (did you mean 'rounds'?)"),
        (["--strategy", "fedavgg"], "federation: strategy: unknown strategy 'fedavgg'"),
        (["--min-clients", "3"], "federation: min_clients is 3 but the policy has 2"),
        (["--data", "site-9=site-1.secfl"], "init: --data: 'site-9' is not a site of this policy"),
        (["--validation", "nothing"], "--validation: 'nothing' is neither a shielded volume"),
        (["--threshold", "4"], "policy: board.threshold: 4 exceeds the 3 members"),
    ],
)
def test_a_wrong_flag_is_one_line_and_writes_nothing(
    world: Path, capsys: Capsys, extra: list[str], expected: str
) -> None:
    code, out, err = _init(capsys, *extra)
    assert (code, out) == (1, ""), err
    assert ERROR_LINE.match(err) and err.startswith(f"error: {expected}"), err
    assert not (world / "policy.yaml").exists()


def test_a_policy_must_accept_some_tee(world: Path, capsys: Capsys) -> None:
    code, _, err = call(capsys, "policy", "init", "--name", "x", "--member",
                        "alice=board/alice.pub", "--site", "s", "--task", "task.secfl")  # fmt: skip
    assert code == 1 and err.startswith("error: init: give --sim-root")
    code, _, err = call(capsys, "policy", "init", "--name", "x", "--member",
                        "alice=board/alice.pub", "--site", "s", "--task", "task.secfl",
                        "--platform", "snp")  # fmt: skip
    assert code == 1 and err.startswith("error: --platform snp: give --measurement snp:aggregator")


def test_validate_refuses_a_sealed_value_that_is_not_one(tmp_path: Path, capsys: Capsys) -> None:
    """Not only at submit, when the board has signed it already."""
    example = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
    text = example.read_text()
    code, _, err = call(capsys, "policy", "validate", str(example))
    assert code == 0, err
    sealed = next(line for line in text.splitlines() if "sealed: " in line).split()[-1]
    bad = tmp_path / "policy.yaml"
    bad.write_text(text.replace(sealed, "garbage", 1))
    line = failed(capsys, "policy", "validate", str(bad))
    assert line.startswith("error: secrets: 'task-key': its sealed value is not what "), line


def test_site_keys_are_made_per_site_or_taken_from_the_site(world: Path, capsys: Capsys) -> None:
    """Every site runs the same collaborator: without a site key one site's host can enrol
    as another (tests/spm/test_site_keys.py). --site-keys makes one per site, a 0600 file
    for its operator, and puts its public half in the site's service; --site-key takes a
    site's own; the command each site's host runs names its key file."""
    from secfl.policy import _keys as keys

    code, out, err = _init(capsys, *ALL_SEALED)
    assert (code, err) == (0, ""), err
    assert "note: sites site-1, site-2 share one measurement and name no site key" in out

    code, _, err = call(capsys, "policy", "keygen", "--out-dir", "own", "--member", "site-1")
    assert code == 0, err
    code, out, err = _init(capsys, *ALL_SEALED, "--force", "--site-keys", "site-keys",
                           "--site-key", "site-1=own/site-1.pub")  # fmt: skip
    assert (code, err) == (0, ""), err
    assert "note: sites" not in out
    policy = load_policy_file(world / "policy.yaml")
    own = keys.public_pem(keys.load_public((world / "own" / "site-1.pub").read_bytes())).decode()
    assert policy.service("site-1").site_key == own  # type: ignore[union-attr]
    assert not (world / "site-keys" / "site-1.key").exists()  # nobody else holds its key
    made = world / "site-keys" / "site-2.key"
    assert made.stat().st_mode & 0o777 == 0o600
    public = keys.public_pem(keys.load_private(made.read_bytes()).public_key()).decode()
    assert policy.service("site-2").site_key == public  # type: ignore[union-attr]
    assert (world / "site-keys" / "site-2.pub").read_text() == public
    line = "SECFL_SITE_KEY=site-keys/site-2.key SECFL_AGGREGATOR=AGGREGATOR_HOST:7443 secfl run"
    assert line in out
    assert "site_key: " in (world / "policy.yaml").read_text()
    code, _, err = call(capsys, "policy", "validate", "policy.yaml")
    assert (code, err) == (0, ""), err

    # made again, an existing key is not replaced without --force: nothing written
    (world / "policy.yaml").unlink()
    line = failed(capsys, "policy", "init", "--name", "fed", "--member", "alice=board/alice.pub",
                  "--site", "site-2", "--task", "task.secfl", "--sim-root", "sim/root.pem",
                  "--site-keys", "site-keys")  # fmt: skip
    assert line.startswith("error: --site-keys: refusing to overwrite the existing key"), line
    assert not (world / "policy.yaml").exists()


def test_the_aggregator_gets_a_site_key_too(world: Path, capsys: Capsys) -> None:
    """The aggregator's command is public (init prints it), and its measurement names no
    host: any site's host could run it in its TEE and enrol as the aggregator, receiving
    the model's signing key (its models are what every site trusts) and the output key.
    --site-keys makes the aggregator's key as each site's; --site-key takes its
    operator's own; init notes an aggregator left without one."""
    from secfl.policy import _keys as keys

    code, out, err = _init(capsys, *ALL_SEALED, "--site-key", "site-1=board/alice.pub",
                           "--site-key", "site-2=board/bob.pub")  # fmt: skip
    assert (code, err) == (0, ""), err
    assert "note: the aggregator 'aggregator' names no site key: any site's host can" in out

    code, out, err = _init(capsys, *ALL_SEALED, "--force", "--site-keys", "site-keys")
    assert (code, err) == (0, ""), err
    assert "note: the aggregator" not in out
    made = world / "site-keys" / "aggregator.key"
    assert made.stat().st_mode & 0o777 == 0o600
    public = keys.public_pem(keys.load_private(made.read_bytes()).public_key()).decode()
    policy = load_policy_file(world / "policy.yaml")
    assert policy.service("aggregator").site_key == public  # type: ignore[union-attr]
    assert "SECFL_SITE_KEY=site-keys/aggregator.key SECFL_LISTEN=" in out

    code, out, err = _init(capsys, *ALL_SEALED, "--force",
                           "--site-key", "aggregator=board/carol.pub")  # fmt: skip
    assert (code, err) == (0, ""), err
    policy = load_policy_file(world / "policy.yaml")
    carol = keys.public_pem(keys.load_public((world / "board" / "carol.pub").read_bytes()))
    assert policy.service("aggregator").site_key == carol.decode()  # type: ignore[union-attr]
    code, _, err = call(capsys, "policy", "validate", "policy.yaml")
    assert (code, err) == (0, ""), err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--site-key", "site-3=board/alice.pub"], "init: --site-key: 'site-3' is not a site"),
        (["--site-key", "site-1=board/alice.recovery.pub"], "--site-key site-1: X25519 key"),
        (["--site-key", "site-1"], "--site-key: 'site-1' is not SITE=KEY.pub"),
    ],
)
def test_a_wrong_site_key_is_one_line_and_writes_nothing(
    world: Path, capsys: Capsys, extra: list[str], expected: str
) -> None:
    code, out, err = _init(capsys, *extra, "--site-keys", "sites")
    assert (code, out) == (1, ""), err
    assert ERROR_LINE.match(err) and err.startswith(f"error: {expected}"), err
    assert not (world / "policy.yaml").exists()
    assert not (world / "sites").exists()
