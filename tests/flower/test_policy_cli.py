"""``secfl flower policy``: the policy of a Flower federation, its measurements equal to
``secfl measure --for-run`` of the exact commands it writes, keys where they belong."""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secfl.cli.main import main
from secfl.flower._federation import LocalFlowerFederation
from secfl.policy import _keys as keys
from secfl.policy._document import load_policy
from secfl.shield import Volume, encrypt_directory, key_from_file, write_key_file
from tests.clirun import call, failed

APP = Path(__file__).resolve().parents[2] / "examples" / "flower"


@pytest.fixture(scope="module")
def spm(flower_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    fed = LocalFlowerFederation(tmp_path_factory.mktemp("spm"), sites=2)
    fed.start_spm()
    try:
        yield fed
    finally:
        fed.stop()


@pytest.fixture(scope="module")
def written(spm: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("policy")
    board = []
    for member in ("alice", "bob", "carol"):
        _, public = keys.generate("ed25519")
        (root / f"{member}.pub").write_bytes(public)
        board += ["--board", str(root / f"{member}.pub")]
    args = []
    for site in ("site-1", "site-2"):
        (root / site).mkdir()
        (root / site / "train.npz").write_bytes(b"stand-in data")
        write_key_file(root / f"{site}.key")
        encrypt_directory(root / site, root / f"{site}.secfl", key_from_file(root / f"{site}.key"))
        args += ["--data", f"{site}={root / site}.secfl", "--data-key", f"{site}={root / site}.key"]
    write_key_file(root / "model.key")
    out = root / "out"
    code = main([
        "flower", "policy", "--app", str(APP), *board, "--threshold", "2",
        "--superlink", "link.example:9092", "--spm", spm.spm_url, "--spm-pin", spm.spm_pin,
        "--sim-root", str(spm.sim_dir / "root.pem"), "--out", str(out),
        "--output-key", str(root / "model.key"), "--run-config", "num-server-rounds=5", *args,
    ])  # fmt: skip
    return {"code": code, "root": root, "out": out, "board": board, "args": args, "spm": spm}


def _commands(out: Path) -> dict[str, list[str]]:
    found = {}
    for line in (out / "commands.sh").read_text().splitlines():
        if line.startswith("secfl run "):
            words = shlex.split(line)
            found[words[words.index("--service") + 1]] = words
    return found


@pytest.mark.timeout(300)
def test_the_policy_pins_the_exact_commands(
    capsys: pytest.CaptureFixture[str], written: dict[str, Any]
) -> None:
    assert written["code"] == 0
    out = written["out"]
    text = (out / "policy.yaml").read_text()
    policy = load_policy(text)
    assert [s.name for s in policy.services] == ["superlink", "site-1", "site-2"]
    commands = _commands(out)
    assert sorted(commands) == ["site-1", "site-2", "superlink"]
    for service in policy.services:
        words = commands[service.name]
        argv = words[words.index("--") + 1 :]
        code_volume = ["--code-volume", f"app={out / 'app.secfl'}"]
        volumes = code_volume if service.name == "superlink" else []
        code, measured, err = call(capsys, "measure", "--for-run", *volumes, "--", *argv)
        assert code == 0, err
        assert service.measurements["simulated"] == [measured.strip()]
    # The app volume holds the FAB the SuperLink submits and every SuperNode pins.
    with Volume.open(out / "app.secfl", key_from_file(out / "app.key")) as volume:
        fab = bytes(volume.read_bytes("app.fab"))
    digest = hashlib.sha256(fab).hexdigest()
    assert digest in commands["superlink"] and digest in commands["site-1"]
    assert "num-server-rounds=5" in commands["superlink"]
    assert "--mutual-tls" in commands["superlink"]
    assert "--root-certificates" not in commands["site-1"]
    assert (os.stat(out / "app.key").st_mode & 0o777) == 0o600
    # each host runs its line where the relative volume file it names is (found by running
    # the README's Flower steps: the SuperLink's line, run beside the folder, failed with
    # "cannot open volume 'app.secfl'", and the file did not say where to run it)
    script = (out / "commands.sh").read_text()
    assert "# On the SuperLink's host, beside a copy of app.secfl (written here):" in script
    assert f"# On site-1's host, beside its data volume {written['root'] / 'site-1'}.secfl:" \
        in script  # fmt: skip


def test_each_key_goes_only_where_it_belongs(written: dict[str, Any]) -> None:
    doc = yaml.safe_load((written["out"] / "policy.yaml").read_text())
    services = {s["name"]: s for s in doc["services"]}
    link = services["superlink"]["inject"]["files"]
    assert link["/flower/superlink.key"] == "$$SECFL::superlink-tls:key$$"
    assert link["/flower/nodes.pem"] == (  # each key after its site's name (the gate's binding)
        "service: site-1\n$$SECFL::site-1-node:pub$$\nservice: site-2\n$$SECFL::site-2-node:pub$$\n"
    )
    assert link["/flower/output.key"] == "$$SECFL::model-output-key:hex$$"
    for site in ("site-1", "site-2"):
        files = services[site]["inject"]["files"]
        # no Flower CA: the site trusts only the attested SuperLink (its relay checks it)
        assert files == {"/flower/node.key": f"$$SECFL::{site}-node:key$$"}
        assert services[site]["volumes"] == [f"{site}-data"]
    secrets = {s["name"]: s for s in doc["secrets"]}
    assert secrets["superlink-tls"]["issuer"] == "flower-ca"
    assert "link.example" in secrets["superlink-tls"]["sans"]
    assert secrets["site-1-node"]["kind"] == "ecdsa-p256"
    assert doc["identity_ca"] == "secfl-ca"


def test_mistakes_are_one_line(capsys: pytest.CaptureFixture[str], written: dict[str, Any]) -> None:
    spm = written["spm"]
    err = failed(
        capsys, "flower", "policy", "--app", str(APP), *written["board"], "--threshold", "2",
        "--superlink", "link.example:9092", "--spm", spm.spm_url, "--spm-pin", spm.spm_pin,
        "--sim-root", str(spm.sim_dir / "root.pem"), "--out", str(written["root"] / "o2"),
        "--data", "site-9=x.secfl",
    )  # fmt: skip
    assert "--data: 'site-9' is not one of site-1..site-2" in err
    err = failed(
        capsys, "flower", "policy", "--app", str(written["root"]), *written["board"],
        "--threshold", "2", "--superlink", "link.example:9092", "--spm", spm.spm_url,
        "--spm-pin", spm.spm_pin, "--sim-root", str(spm.sim_dir / "root.pem"),
        "--out", str(written["root"] / "o3"), *written["args"],
    )  # fmt: skip
    assert "is not a Flower app (no pyproject.toml)" in err
    # (found by a walk through the docs: a failed run left its --out folder half made,
    # and a run-config item without a value went into the measured policy)
    assert not (written["root"] / "o2").exists() and not (written["root"] / "o3").exists()
    err = failed(
        capsys, "flower", "policy", "--app", str(APP), *written["board"], "--threshold", "2",
        "--superlink", "link.example:9092", "--spm", spm.spm_url, "--spm-pin", spm.spm_pin,
        "--sim-root", str(spm.sim_dir / "root.pem"), "--out", str(written["root"] / "o4"),
        "--run-config", "num-server-rounds", *written["args"],
    )  # fmt: skip
    assert "--run-config: 'num-server-rounds' is not KEY=VALUE" in err
    assert not (written["root"] / "o4").exists()


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--site-port", "site-1=70000", "--site-port site-1: '70000' is not a port (1 to 65535)"),
        ("--site-port", "site-2=0", "--site-port site-2: '0' is not a port (1 to 65535)"),
        ("--site-port", "site-1=٩٠٩٤", "--site-port site-1: '٩٠٩٤' is not a port (1 to 65535)"),
        (
            "--superlink-port",
            "65536",
            "'--superlink-port': Input should be less than or equal to 65535",
        ),
    ],
)
def test_a_port_out_of_range_is_refused_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], written: dict[str, Any], option: str, value: str, said: str
) -> None:
    """From a review: the policy was written with a port no socket can bind (or, for
    digits of another script, a traceback), and the federation could not start."""
    spm, out = written["spm"], written["root"] / "bad-port"
    code, stdout, err = call(
        capsys, "flower", "policy", "--app", str(APP), *written["board"], "--threshold", "2",
        "--superlink", "link.example:9092", "--spm", spm.spm_url, "--spm-pin", spm.spm_pin,
        "--sim-root", str(spm.sim_dir / "root.pem"), "--out", str(out), *written["args"],
        option, value,
    )  # fmt: skip
    assert code in (1, 2) and stdout == "" and said in err, (code, err)
    assert "Traceback" not in err and (code == 2 or len(err.strip().splitlines()) == 1)
    assert not out.exists()


def test_a_site_key_is_named_in_its_service_and_its_command(
    capsys: pytest.CaptureFixture[str], written: dict[str, Any]
) -> None:
    """A site's command line is public: any host's TEE can run site-2's and present the
    measurement site-2's service accepts (tests/spm/test_site_keys.py). With --site-key
    the site's service names its key and its host's command names its key file, and a
    site left without one is noted; a key that is not one is refused in one line,
    nothing written."""
    spm, root = written["spm"], written["root"]
    _, public = keys.generate("ecdsa-p256")
    (root / "site-2.pub").write_bytes(public)
    common = [
        "flower", "policy", "--app", str(APP), *written["board"], "--threshold", "2",
        "--superlink", "link.example:9092", "--spm", spm.spm_url, "--spm-pin", spm.spm_pin,
        "--sim-root", str(spm.sim_dir / "root.pem"), *written["args"],
    ]  # fmt: skip
    out = root / "keyed"
    code, said, err = call(capsys, *common, "--out", str(out), "--site-key",
                           f"site-2={root / 'site-2.pub'}")  # fmt: skip
    assert code == 0, err
    # the site left without a key is named: its seat is anyone's
    assert "note: site-1 names no site key: any host's TEE can run a site's" in said
    assert "site-2" not in said.split("note:", 1)[1]
    policy = load_policy((out / "policy.yaml").read_text())
    assert policy.service("site-2").site_key == public.decode()  # type: ignore[union-attr]
    assert policy.service("site-1").site_key is None  # type: ignore[union-attr]
    lines = (out / "commands.sh").read_text().splitlines()
    (keyed,) = [line for line in lines if "--service site-2" in line]
    assert keyed.startswith("SECFL_SITE_KEY=site-keys/site-2.key secfl run ")
    assert not any(line.startswith("SECFL_SITE_KEY") for line in lines if line is not keyed)
    assert written["out"].exists()  # (the first policy, without keys, untouched)

    for value, said in (
        (f"site-2={root / 'alice.pub'}x", "cannot read"),
        (f"site-2={root / 'site-1.key'}", "--site-key site-2: not a PEM public key"),
        ("site-9=x.pub", "--site-key: 'site-9' is not one of site-1..site-2"),
    ):
        bad = root / "bad-key"
        err = failed(capsys, *common, "--out", str(bad), "--site-key", value)
        assert said in err, err
        assert not bad.exists()


def test_the_superlink_takes_a_site_key_too(
    capsys: pytest.CaptureFixture[str], written: dict[str, Any]
) -> None:
    """The SuperLink's command line is public as much as a site's: any host's TEE could
    run it and enrol as the SuperLink, receiving its certificate (the SuperNodes connect
    to it) and the output key (the model owner's). --site-key superlink=KEY.pub names its
    operator's key in the superlink service and its line of commands.sh; without it, the
    command says so."""
    spm, root = written["spm"], written["root"]
    _, public = keys.generate("ed25519")
    (root / "superlink.pub").write_bytes(public)
    common = [
        "flower", "policy", "--app", str(APP), *written["board"], "--threshold", "2",
        "--superlink", "link.example:9092", "--spm", spm.spm_url, "--spm-pin", spm.spm_pin,
        "--sim-root", str(spm.sim_dir / "root.pem"), *written["args"],
    ]  # fmt: skip
    out = root / "link-keyed"
    code, said, err = call(capsys, *common, "--out", str(out), "--site-key",
                           f"superlink={root / 'superlink.pub'}")  # fmt: skip
    assert code == 0, err
    assert "note: the superlink" not in said
    policy = load_policy((out / "policy.yaml").read_text())
    assert policy.service("superlink").site_key == public.decode()  # type: ignore[union-attr]
    lines = (out / "commands.sh").read_text().splitlines()
    (link,) = [line for line in lines if "--service superlink" in line]
    assert link.startswith("SECFL_SITE_KEY=site-keys/superlink.key secfl run ")

    code, said, err = call(capsys, *common, "--out", str(root / "link-open"))
    assert code == 0, err
    assert "note: the superlink names no site key: any host's TEE can run its" in said
