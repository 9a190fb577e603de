"""`secfl policy validate`, `sign` and `submit` read the federation as the aggregator does.

The policy layer keeps `federation` free-form; these commands apply the aggregator's own
parser and the strategy registry, so that a misspelt setting is refused before anyone
signs it instead of when the aggregator starts. Every refusal is one line, and nothing
is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secfl.policy import _keys as keys
from tests.clirun import ERROR_LINE, call
from tests.policy import member_keys, policy_dict, to_yaml

Mutation = Callable[[dict[str, Any]], None]


def _federation(**settings: Any) -> Mutation:
    def change(doc: dict[str, Any]) -> None:
        doc["federation"] = {"counter": "round", "min_clients": 1, **settings}

    return change


def _fl_policy(tmp_path: Path, *changes: Mutation) -> Path:
    """The test policy as a runnable federation (its aggregator holds every FL key)."""
    doc = policy_dict()
    doc["secrets"] += [
        {"name": "signing", "kind": "ed25519"},
        {"name": "out", "kind": "aes-256"},
    ]
    doc["services"][0]["inject"]["files"] = {
        "/fl/signing-key.pem": "$$SECFL::signing:key$$",
        "/fl/checkpoint.key": "$$SECFL::model-key:hex$$",
        "/fl/output.key": "$$SECFL::out:hex$$",
    }
    doc["services"][1]["inject"]["files"]["/fl/signing-key.pub"] = "$$SECFL::signing:pub$$"
    _federation(rounds=3)(doc)
    for change in changes:
        change(doc)
    path = tmp_path / "policy.yaml"
    path.write_text(to_yaml(doc))
    return path


@pytest.fixture
def alice_key(tmp_path: Path) -> Path:
    path = tmp_path / "alice.key"
    path.write_bytes(member_keys()["alice"][0])
    return path


def test_a_runnable_federation_validates_signs_and_warns_of_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, alice_key: Path
) -> None:
    path = _fl_policy(tmp_path)
    code, out, err = call(capsys, "policy", "validate", str(path))
    assert (code, err) == (0, ""), err
    assert "policy test-policy version 1: valid" in out
    code, _, err = call(capsys, "policy", "sign", str(path), "--key", str(alice_key),
                        "--member", "alice")  # fmt: skip
    assert (code, err) == (0, "")


SETTINGS = {
    "misspelt setting": (
        _federation(round=8),
        "federation: round: unknown setting (did you mean 'rounds'?)",
    ),
    "unknown strategy": (
        _federation(strategy="fedavgg"),
        "federation: strategy: unknown strategy 'fedavgg' (known: bulyan,",
    ),
    "strategy setting": (
        _federation(strategy="krum", strategy_settings={"f": "two"}),
        "federation: strategy: krum: f must be an integer >= 0, not 'two'",
    ),
    "too few updates for the strategy": (
        _federation(strategy="krum", strategy_settings={"f": 1}),
        "federation: strategy krum needs 5 updates a round, but a round may close with 1 "
        "(federation.min_clients): raise min_clients, or change the strategy's settings",
    ),
    "too few updates for the clone audit's clones": (
        _federation(strategy="clone-audit", strategy_settings={"base": "bulyan"}),
        "federation: strategy clone-audit needs 8 updates a round",
    ),
    "misspelt objective": (
        _federation(objective={"metric": "loss", "mod": "max"}),
        "federation: objective.mod: unknown setting (did you mean 'mode'?)",
    ),
    "wrong type": (_federation(rounds="8"), "federation: rounds: Input should be a valid integer"),
    "counter not declared": (
        lambda d: d["federation"].update(counter="rounds"),
        "federation: counter 'rounds' (federation.counter) is not a counter of the policy",
    ),
    "counter not the aggregator's": (
        lambda d: d["services"][0].update(counters=[]),
        "federation: service 'agg' may not increment counter 'round'",
    ),
    "round counter given to a collaborator": (
        lambda d: d["services"][1].update(counters=["round"]),
        "policy: services[1].counters: service 'col' (role collaborator) may move 'round', the "
        "federation's round counter, which only the aggregator moves",
    ),
    "round counter given to a service of role any": (
        lambda d: d["services"][1].update(role="any", counters=["round"]),
        "policy: services[1].counters: service 'col' (role any) may move 'round'",
    ),
    "too few collaborators": (
        lambda d: d["federation"].update(min_clients=2),
        "federation: min_clients is 2 but the policy has 1 collaborator service(s)",
    ),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_a_federation_the_aggregator_would_refuse_is_refused_before_signing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, alice_key: Path, case: str
) -> None:
    change, expected = SETTINGS[case]
    path = _fl_policy(tmp_path, change)
    sig = tmp_path / "alice.sig"
    for argv in (
        ["policy", "validate", str(path)],
        ["policy", "sign", str(path), "--key", str(alice_key), "--member", "alice", "-o", str(sig)],
        # refused before the SPM is even contacted (nothing listens there)
        ["policy", "submit", str(path), "--sig", str(sig), "--spm", "https://127.0.0.1:9",
         "--spm-pin", "ab" * 32],
    ):  # fmt: skip
        code, out, err = call(capsys, *argv)
        assert (code, out) == (1, ""), (argv, err)
        assert ERROR_LINE.match(err) and err.startswith(f"error: {expected}"), (argv, err)
        assert not sig.exists()


def test_no_output_key_is_a_warning_that_says_how_to_add_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, alice_key: Path
) -> None:
    """A policy whose final model nobody could open still validates, but says so."""
    path = _fl_policy(tmp_path, lambda d: d["services"][0]["inject"]["files"].pop("/fl/output.key"))
    code, out, err = call(capsys, "policy", "validate", str(path))
    assert code == 0 and "valid" in out
    assert err.splitlines() == [
        "warning: output: no output key: the final model will be sealed to nobody (it stays "
        "only in the aggregator's sealed checkpoints); to let the model owner open it, seal "
        "their key (`secfl shield keygen -o model.key`, `secfl policy seal-secret --key-file "
        "model.key --secret output-key ...`), add it as an imported secret and inject it into "
        "service 'agg' as /fl/output.key: $$SECFL::output-key:hex$$ (`secfl policy init` does "
        "this)"
    ]
    code, _, err = call(capsys, "policy", "sign", str(path), "--key", str(alice_key),
                        "--member", "alice")  # fmt: skip
    assert (code, err) == (0, "")  # a warning, not a refusal


def test_missing_fl_keys_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _fl_policy(tmp_path, lambda d: d["services"][1]["inject"]["files"].clear())
    code, _, err = call(capsys, "policy", "validate", str(path))
    assert code == 0
    assert err == (
        "warning: inject: service 'col' gets no /fl/signing-key.pub: `secfl collaborator` "
        "needs it (inject it, or name the injected file with --verify-key on its command "
        "line)\n"
    )


def test_a_policy_that_runs_no_federation_is_not_checked_as_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`secfl run` of any program: no aggregator, no federation settings, no FL checks."""
    doc = policy_dict()
    doc["services"] = [dict(doc["services"][1], role="any")]
    doc.pop("federation")
    path = tmp_path / "plain.yaml"
    path.write_text(to_yaml(doc))
    code, _, err = call(capsys, "policy", "validate", str(path))
    assert (code, err) == (0, "")


def test_a_federation_whose_aggregator_is_of_role_any_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Found by a hostile review of f7a6876: role ``any`` commits no round (the SPM
    refuses it), but a federation whose only would-be aggregator had that role passed
    validation, and stopped at its first round's commit."""
    doc = policy_dict()
    doc["federation"] = {"rounds": 3, "counter": "round"}
    doc["services"] = [dict(s, role="any") if s["role"] == "aggregator" else s
                       for s in doc["services"]]  # fmt: skip
    path = tmp_path / "anyagg.yaml"
    path.write_text(to_yaml(doc))
    code, _, err = call(capsys, "policy", "validate", str(path))
    assert code != 0 and "no service with role 'aggregator'" in err, err
    assert ERROR_LINE.fullmatch(err), err


def test_a_key_rotating_version_is_signed_with_the_key_of_the_board_it_replaces(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Version 2 gives carol a new key; the SPM checks version 2 against version 1's
    board, so carol signs with her old key and says so with --board."""
    from secfl.policy import digest, load_policy_file

    old = member_keys()["carol"][0]
    (tmp_path / "carol-old.key").write_bytes(old)
    v1 = _fl_policy(tmp_path)
    (tmp_path / "v1.yaml").write_bytes(v1.read_bytes())
    _, new_public = keys.generate("ed25519")

    def rotate(doc: dict[str, Any]) -> None:
        doc["board"]["members"][2]["public_key"] = new_public.decode()
        doc.update(version=2, predecessor=digest(load_policy_file(tmp_path / "v1.yaml")))

    v2 = _fl_policy(tmp_path, rotate)
    sign = [
        "policy",
        "sign",
        str(v2),
        "--key",
        str(tmp_path / "carol-old.key"),
        "--member",
        "carol",
    ]
    code, _, err = call(capsys, *sign)
    assert code == 1 and "this key is not carol's key on this policy's board" in err
    code, _, err = call(capsys, *sign, "--board", str(tmp_path / "v1.yaml"))
    assert (code, err) == (0, ""), err
    code, _, err = call(capsys, "policy", "verify", str(v2), "--sig", f"{v2}.carol.sig",
                          "--board", str(tmp_path / "v1.yaml"))  # fmt: skip
    assert code == 1 and "1 valid signature(s) of the 2 required" in err  # carol's counts
