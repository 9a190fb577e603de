"""Hostile policies: each is refused in one line at validation, by the
library, by every ``secfl policy`` command as a real process, and by a real SPM
(HTTP 400 and an audit entry, never a 500)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from secfl.errors import PolicyError
from secfl.policy import Board, Policy, check_approval, load_policy, sign_policy
from secfl.policy import _keys as keys
from secfl.policy._signatures import sign_statement
from secfl.policy._validation_text import validation_message
from tests.policy import member_keys, policy_dict, to_yaml

HUGE = "9" * 5000  # more digits than int() converts (4300): ValueError in PyYAML and json


def refusal(text: str | bytes) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(text)
    message = str(info.value)
    assert "\n" not in message and message.startswith("policy: "), message
    assert len(message) < 600, message  # never the hostile input echoed back
    return message


def _yaml_with(path: list[Any], literal: str) -> str:
    """The test policy as YAML with the value at ``path`` replaced by ``literal`` as written."""
    data = policy_dict()
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = "HOSTILE-VALUE"
    return to_yaml(data).replace("HOSTILE-VALUE", literal)


# --- numbers and strings of any size --------------------------------------------------


WHERE = {
    "version": ["version"],
    "threshold": ["board", "threshold"],
    "certificate_ttl": ["services", 0, "certificate_ttl"],
    "federation": ["federation", "rounds"],
    "federation list": ["federation", "strategy", "name"],
}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize(
    "literal",
    [HUGE, "-" + HUGE, "0x" + "f" * 5000, "0b" + "1" * 20000, "0" + "7" * 6000, "1:" * 3000 + "1"],
    ids=["decimal", "negative", "hex", "binary", "octal", "sexagesimal"],
)
def test_huge_yaml_integers_are_one_line_refusals(where: str, literal: str) -> None:
    message = refusal(_yaml_with(WHERE[where], literal))
    assert "number" in message or "integer" in message or "less than" in message, message


def test_a_huge_integer_as_a_mapping_key_is_refused() -> None:
    assert "number" in refusal(to_yaml(policy_dict()) + f"  ? {HUGE}\n  : x\n")


def test_huge_json_integers_are_one_line_refusals() -> None:
    for path in WHERE.values():
        data = policy_dict()
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = 1234567
        text = json.dumps(data).replace("1234567", HUGE)
        assert refusal(text) == "policy: JSON: a number longer than 100 characters"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["version"], 2**31 + 1, "policy: version: input should be less than or equal to"),
        (["version"], 10**400, "policy: version: input should be less than or equal to"),
        (["board", "threshold"], 10**400, "policy: board.threshold: input should be less than"),
        (["secrets", 1], {"name": "r", "kind": "random", "size": 10**400}, "policy: secrets[1]"),
        (["federation", "rounds"], 10**400, "policy: federation.rounds: an integer out of range"),
        (["federation", "rounds"], -(10**30), "policy: federation.rounds: an integer out of range"),
        (["federation", "name"], "x" * 100_000, "policy: federation.name: text longer than"),
        (["federation", "x" * 1000], 1, "policy: federation: a key longer than"),
        (["services", 1, "inject", "args"], ["a"] * 10_000, "policy: services[1].inject.args"),
        (["services", 1, "inject", "env", "BIG"], "x" * 100_000, "policy: services[1].inject.env"),
        (["secrets", 2, "sans"], ["a.example"] * 10_000, "policy: secrets[2].sans"),
        (
            ["services", 0, "measurements", "tdx"],
            [{"mrtd": "ab" * 48, "mrseam": "0" * 99999}],
            "policy: services[0].measurements.tdx[0]",
        ),
    ],
    ids=[
        "version",
        "version 10^400",
        "threshold",
        "random size",
        "federation 10^400",
        "federation -10^30",
        "federation text",
        "federation key",
        "args count",
        "env value",
        "sans count",
        "measurement field",
    ],
)
def test_out_of_range_values_are_refused(path: list[Any], value: Any, expected: str) -> None:
    data = policy_dict()
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    # As the SPM reads a stored version, and as a library caller builds one:
    for validate in (
        lambda: Policy.model_validate_json(json.dumps(data)),
        lambda: Policy.model_validate(data),
    ):
        with pytest.raises(ValidationError) as info:
            validate()
        assert validation_message(info.value, Policy, "policy").startswith(expected)
    # As a document: refused in one line (huge numbers already by the parser).
    refusal(json.dumps(data))
    refusal(to_yaml(data))


# --- no secret on a command line ------------------------------------------------------


def _with_args(*args: str, extra_secrets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data = policy_dict()
    data["secrets"] += extra_secrets or []
    data["services"][1]["inject"]["args"] = ["--opt", *args]
    return data


KEYPAIR = {"name": "sig", "kind": "ed25519"}


@pytest.mark.parametrize(
    "placeholder",
    [
        "$$SECFL::model-key$$",
        "$$SECFL::model-key:hex$$",
        "$$SECFL::model-key:base64$$",
        "--key=$$SECFL::model-key:hex$$",
        "$$SECFL::tls:key$$",
        "$$SECFL::sig$$",
        "$$SECFL::sig:key$$",
        "$$SECFL::tls$$",  # public, but only an explicit :crt says so (the launcher's rule)
    ],
)
def test_secrets_in_args_are_refused(placeholder: str) -> None:
    message = refusal(json.dumps(_with_args(placeholder, extra_secrets=[KEYPAIR])))
    assert message.startswith("policy: services[1].inject.args[1]: "), message
    assert "inject.env or inject.files" in message


@pytest.mark.parametrize(
    "placeholder",
    [
        "$$SECFL::tls:crt$$",
        "$$SECFL::tls:chain$$",
        "$$SECFL::tls:pub$$",
        "$$SECFL::ca:crt$$",
        "$$SECFL::sig:pub$$",
    ],
)
def test_public_parts_may_stay_in_args(placeholder: str) -> None:
    load_policy(json.dumps(_with_args(placeholder, extra_secrets=[KEYPAIR])))


# --- recovery keys no fewer than the threshold -----------------------------------------


def _recovery(count: int, threshold: int = 2) -> dict[str, Any]:
    data = policy_dict()
    data["board"]["threshold"] = threshold
    for member in data["board"]["members"][:count]:
        member["recovery_key"] = keys.generate_recovery()[1].decode()
    return data


def test_fewer_recovery_keys_than_the_threshold_are_refused() -> None:
    assert refusal(json.dumps(_recovery(1))) == (
        "policy: board.members: 1 member(s) have a recovery_key, fewer than the threshold "
        "(2): give at least 2 members a recovery_key, or none"
    )
    refusal(json.dumps(_recovery(2, threshold=3)))
    for count, threshold in ((0, 2), (2, 2), (3, 2), (3, 3)):
        load_policy(json.dumps(_recovery(count, threshold)))


def test_one_recovery_key_given_twice_is_refused() -> None:
    data = _recovery(2)
    members = data["board"]["members"]
    members[1]["recovery_key"] = members[0]["recovery_key"]
    assert refusal(json.dumps(data)) == (
        "policy: board.members[1].recovery_key: the same key as board.members[0]; "
        "each member needs a key of their own"
    )


# --- low items: duplicate board keys, the identity CA's key, selectors -----------------


def test_a_board_key_listed_twice_is_refused() -> None:
    data = policy_dict()
    members = data["board"]["members"]
    # The same key, re-wrapped: only its meaning counts.
    members[2]["public_key"] = members[0]["public_key"].replace("\n", "\r\n")
    assert refusal(json.dumps(data)) == (
        "policy: board.members[2].public_key: the same key as board.members[0]; "
        "each member needs a key of their own"
    )


def test_one_key_counts_once_toward_the_threshold() -> None:
    alice_key, alice_pub = member_keys()["alice"]
    bob_pub = member_keys()["bob"][1]
    board = Board.model_validate(
        {
            "members": [
                {"name": "alice", "public_key": alice_pub.decode()},
                {"name": "mallory", "public_key": alice_pub.decode()},
                {"name": "bob", "public_key": bob_pub.decode()},
            ],
            "threshold": 2,
        }
    )
    digest_hex = "ab" * 32
    sigs = [
        sign_statement("secfl/policy/v1", digest_hex, alice_key, "alice"),
        sign_statement("secfl/policy/v1", digest_hex, alice_key, "mallory"),
    ]
    with pytest.raises(PolicyError, match=r"^approval: 1 distinct key\(s\) of the 2 required"):
        check_approval(board, digest_hex, sigs)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["services"][0]["inject"]["env"].update(CA="$$SECFL::ca:key$$"),
            "policy: services[0].inject.env.CA: '$$SECFL::ca:key$$' releases the private key of "
            "the identity CA 'ca'",
        ),
        (
            lambda d: d["services"][0]["inject"].update(files={"/ca.pem": "$$SECFL::ca:key$$"}),
            'policy: services[0].inject.files["/ca.pem"]: ',
        ),
        (
            lambda d: d["services"][0].update(secrets=["ca"]),
            "policy: services[0].secrets[0]: 'ca' is the identity CA: listing it releases its "
            "private key",
        ),
    ],
)
def test_the_identity_ca_key_is_never_released(edit: Any, expected: str) -> None:
    data = policy_dict()
    edit(data)
    assert refusal(json.dumps(data)).startswith(expected)


def test_the_identity_ca_certificate_may_be_released() -> None:
    data = policy_dict()
    data["services"][0]["inject"]["env"].update(CA="$$SECFL::ca$$", CA2="$$SECFL::ca:chain$$")
    load_policy(json.dumps(data))


@pytest.mark.parametrize(
    ("secret", "selector"),
    [
        ("ca", "hex"),
        ("ca", "base64"),
        ("tls", "hex"),
        ("sig", "base64"),
        ("sig", "crt"),
        ("model-key", "key"),
        ("model-key", "pub"),
        ("sig", "chain"),
    ],
)
def test_selectors_that_cannot_render_are_refused(secret: str, selector: str) -> None:
    data = policy_dict()
    data["secrets"].append(KEYPAIR)
    data["services"][0]["inject"]["env"]["X"] = f"$$SECFL::{secret}:{selector}$$"
    assert refusal(json.dumps(data)).startswith(
        f"policy: services[0].inject.env.X: selector ':{selector}' does not apply to secret "
        f"'{secret}'"
    )


def test_every_selector_validation_accepts_renders() -> None:
    """Validation and the SPM's rendering agree: what validates renders."""
    from datetime import UTC, datetime

    from secfl.policy._placeholders import SELECTORS
    from secfl.spm import _sealing as sv

    data = policy_dict()
    data["secrets"] += [KEYPAIR, {"name": "r", "kind": "random", "size": 8}]
    now = datetime.now(UTC)
    policy = load_policy(json.dumps(data))
    values: dict[str, Any] = {}
    for secret in sorted(policy.secrets, key=lambda s: s.kind != "x509-ca"):
        values[secret.name] = sv.generate(secret, values, now)
    for secret in policy.secrets:
        for selector in [None, *sorted(SELECTORS)]:
            data["services"][0]["inject"]["env"]["X"] = (
                f"$$SECFL::{secret.name}{':' + selector if selector else ''}$$"
            )
            try:
                load_policy(json.dumps(data))
            except PolicyError as exc:
                if "identity CA" in str(exc):
                    continue
                with pytest.raises(Exception, match="does not apply"):
                    sv.render(secret.name, values[secret.name], selector)
            else:
                assert sv.render(secret.name, values[secret.name], selector)


# --- the same refusals through real processes ------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_every_policy_command_refuses_a_huge_integer_in_one_line(tmp_path: Path) -> None:
    private, _ = member_keys()["alice"]
    key = tmp_path / "alice.key"
    key.write_bytes(private)
    good = tmp_path / "good.yaml"
    good.write_text(to_yaml(policy_dict()))
    sig = tmp_path / "good.sig"
    sig.write_text(sign_policy(load_policy(good.read_text()), private, "alice").to_json())
    bad = tmp_path / "bad.yaml"
    bad.write_text(_yaml_with(["version"], HUGE))
    commands = [
        ["policy", "validate", str(bad)],
        ["policy", "digest", str(bad)],
        ["policy", "sign", str(bad), "--key", str(key), "--member", "alice"],
        ["policy", "verify", str(bad), "--sig", str(sig)],
        ["policy", "verify", str(good), "--sig", str(sig), "--board", str(bad)],
        [
            "policy",
            "sign-reset",
            "--policy",
            str(bad),
            "--value",
            "3",
            "--key",
            str(key),
            "--member",
            "alice",
            "-o",
            str(tmp_path / "reset.json"),
        ],
    ]
    for argv in commands:
        done = _cli(*argv, cwd=tmp_path)
        assert done.returncode == 1, (argv, done.stderr)
        assert done.stdout == "", argv
        assert done.stderr.startswith("error: policy: ") and done.stderr.count("\n") == 1, (
            argv,
            done.stderr[-2000:],
        )
    assert not (tmp_path / "reset.json").exists()


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, bytes]]:
    from secfl.spm.client import SpmClient
    from tests.spm.harness import Board as SpmBoard
    from tests.spm.harness import SpmProcess, make_sim

    sim = tmp_path_factory.mktemp("sim")
    root = make_sim(sim)
    proc = SpmProcess(tmp_path_factory.mktemp("spm") / "data", sim, None).start()
    try:
        with SpmClient(proc.url, pin=proc.pin) as client:
            yield client, SpmBoard.create(), root
    finally:
        proc.stop()


def _hostile_documents(board: Any, root: bytes) -> dict[str, str]:
    import yaml

    from tests.spm.harness import policy_document

    text = policy_document("hostile", board, root)
    doc = yaml.safe_load(text)
    as_json = json.dumps(doc).replace('"rounds": 10', f'"rounds": {HUGE}')
    hidden = json.loads(json.dumps(doc))
    hidden["secrets"][0]["common_name"] = "hostile CA\u202e"
    doc["services"][1]["inject"] = {"args": ["$$SECFL::model-key:hex$$"]}
    return {
        "yaml integer": text.replace("version: 1", f"version: {HUGE}"),
        "json integer": as_json,
        "secret in args": yaml.safe_dump(doc),
        "json hidden text": json.dumps(hidden),
    }


@pytest.mark.parametrize(
    "case", ["yaml integer", "json integer", "secret in args", "json hidden text"]
)
def test_the_spm_refuses_hostile_policies_with_400_and_an_audit_entry(
    spm: tuple[Any, Any, bytes], case: str
) -> None:
    from secfl.spm.client import SpmRefused

    client, board, root = spm
    document = _hostile_documents(board, root)[case]
    before = client.audit(0, 10000)["entries"]
    with pytest.raises(SpmRefused) as info:
        client.submit_policy(document, [])
    assert info.value.status == 400, str(info.value)
    assert str(info.value).startswith("policy: ")
    after = client.audit(0, 10000)["entries"]
    assert len(after) == len(before) + 1
    assert after[-1]["event"] == "policy.refused"
    assert after[-1]["detail"]["reason"] == str(info.value)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


@pytest.mark.parametrize(
    ("char", "what"),
    [
        ("\r", "a carriage return (U+000D)"),
        ("\x85", "a next-line character (U+0085)"),
        ("\u2028", "a line separator (U+2028)"),
        ("\u2029", "a paragraph separator (U+2029)"),
        ("\u202e", "an invisible format character (U+202E)"),
        ("\u200b", "an invisible format character (U+200B)"),
        ("\ufeff", "an invisible format character (U+FEFF)"),
    ],
)
def test_text_a_reviewer_cannot_see_is_refused(char: str, what: str, tmp_path: Path) -> None:
    """Found by a hostile review: PyYAML starts a new line at a lone CR, U+0085, U+2028
    and U+2029, which editors, `cat` and `diff` show inside one line. What looked like a
    comment was a field: a 2-of-3 board validated and signed a policy that released the
    model-signing key to one more service, and the SPM accepted it. The real `secfl
    policy validate` now refuses it in one line."""
    base = EXAMPLE.read_text()
    target = "    volumes: [task, hospital-b]\n"
    assert target in base
    hidden = f"    volumes: [task, hospital-b]   # as hospital-a{char}    secrets: [output-key]\n"
    evil = tmp_path / "policy.yaml"
    evil.write_bytes(base.replace(target, hidden).encode())
    line = base[: base.index(target)].count("\n") + 1
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "policy", "validate", str(evil)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: policy: line {line}: the document holds {what}, which hides text from "
        "whoever reads the file; remove it"
    ]


def _example_as_json() -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        # an escape in a JSON string: the file shows "\u202e", a viewer of the
        # canonical form or of `secfl policy show` the reordered text
        (lambda d: json.dumps(d), "the text holds an invisible format character (U+202E)"),
        # the raw character, as JSON allows in a string
        (lambda d: json.dumps(d, ensure_ascii=False), "(U+202E)"),
    ],
)
def test_json_text_a_reviewer_cannot_see_is_refused(
    write: Any, expected: str, tmp_path: Path
) -> None:
    """Noted by a hostile review: YAML was scanned for hidden text, JSON was not, so a
    JSON version could show its board a common name, path or setting other than the one
    it holds. Every string of a new version is now checked, however it was written."""
    data = _example_as_json()
    ca = next(s for s in data["secrets"] if s.get("common_name"))
    ca["common_name"] = "hospital-fl \u202eAC ytitnedi"
    evil = tmp_path / "policy.json"
    evil.write_text(write(data), encoding="utf-8")
    done = _cli("policy", "validate", str(evil), cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: policy: secrets[") and expected in line, line
    # A lone carriage return between JSON tokens overwrites a line on a terminal.
    data = _example_as_json()
    text = json.dumps(data, indent=1).replace('\n "name"', '\r "name"', 1)
    evil.write_text(text, encoding="utf-8", newline="")
    done = _cli("policy", "validate", str(evil), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: policy: line 1: the document holds a carriage return (U+000D), which hides "
        "text from whoever reads the file; remove it"
    ]
    # The same policy as plain JSON validates.
    evil.write_text(json.dumps(_example_as_json(), indent=1), encoding="utf-8")
    assert _cli("policy", "validate", str(evil), cwd=tmp_path).returncode == 0


def test_windows_line_ends_and_a_leading_bom_still_load() -> None:
    base = EXAMPLE.read_text()
    assert load_policy(("\ufeff" + base.replace("\n", "\r\n")).encode()) == load_policy(base)


@pytest.mark.parametrize(
    ("kind", "pin", "shown"),
    [
        ("snp", {"vmpl": 0}, "measurement (96 hex digits) or id_key_digest"),
        ("sgx", {"isv_prod_id": 1, "isv_svn": 3}, "mrenclave (64 hex digits) or mrsigner"),
        ("sgx", {"mrsigner": ""}, "mrenclave (64 hex digits) or mrsigner"),
        ("tdx", {"rtmr0": "ab" * 48}, "mrtd (96 hex digits)"),
        ("tdx", "ab" * 32, "mrtd (96 hex digits)"),
    ],
)
def test_an_identity_that_pins_no_code_is_refused(
    kind: str, pin: Any, shown: str, tmp_path: Path
) -> None:
    """Found by a hostile review: `snp: [{vmpl: 0}]`, `sgx: [{isv_prod_id: 1, isv_svn:
    3}]` and `sgx: [{mrsigner: ""}]` validated, and the SPM then attested any code
    under them. A new version must pin code; the SPM ignores such an identity in a
    version it stored before (below)."""
    data = policy_dict()
    data["platforms"]["accept"] = sorted({*data["platforms"]["accept"], kind})
    data["services"][0]["measurements"][kind] = [pin]
    path = tmp_path / "policy.yaml"
    path.write_text(to_yaml(data))
    assert load_policy(path.read_text())  # the model reads it: stored versions still load
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "policy", "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: policy: services.agg.measurements.{kind}[0] pins no code: ")
    assert shown in line


def test_the_spm_matches_no_identity_that_pins_no_code() -> None:
    from secfl.errors import Refused
    from secfl.spm._evidence_checks import check_measurements

    data = policy_dict()
    data["platforms"]["accept"] = [*data["platforms"]["accept"], "snp"]
    data["services"][0]["measurements"]["snp"] = [{"vmpl": 0}, "cd" * 48]
    policy = load_policy(to_yaml(data))
    claims = {"measurement": "ee" * 48, "vmpl": 0, "policy": 0x30000}
    with pytest.raises(Refused, match="^measurement: snp measurement eeee"):
        check_measurements(policy, "agg", "snp", claims)
    check_measurements(policy, "agg", "snp", {**claims, "measurement": "cd" * 48})


#: What the review of the JSON check found still passed: characters that display as
#: nothing without being format characters, and controls a terminal acts on.
SHOWS_NOTHING = {
    "hangul filler": "\u3164",
    "hangul choseong filler": "\u115f",
    "combining grapheme joiner": "\u034f",
    "variation selector 17": "\U000e0100",
    "braille blank": "\u2800",
    "escape": "\x1b",
    "backspace": "\x08",
    "delete": "\x7f",
    "c1 csi": "\x9b",
}


@pytest.mark.parametrize("name", sorted(SHOWS_NOTHING))
def test_text_that_displays_as_nothing_is_refused(name: str, tmp_path: Path) -> None:
    data = _example_as_json()
    # an argument the service receives: what the board reads is not what it runs with
    data["services"][0].setdefault("inject", {}).setdefault("args", []).append(
        "--audit-log=on" + SHOWS_NOTHING[name]
    )
    evil = tmp_path / "policy.json"
    evil.write_text(json.dumps(data), encoding="utf-8")
    done = _cli("policy", "validate", str(evil), cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: policy: services[0].inject.args[") and "(U+" in line, line


def test_policy_show_prints_no_terminal_control(tmp_path: Path) -> None:
    """`secfl policy show` (review this, not the file) printed claim values raw: an
    identity whose host_data is ESC[8m hid the rest of its line, the attacker's
    measurement, on a board member's terminal. A stored version may hold anything."""
    data = _example_as_json()
    data["services"][0]["measurements"]["snp"].append(
        {"host_data": "\x1b[8m", "measurement": "ab" * 48}
    )
    evil = tmp_path / "policy.json"
    evil.write_text(json.dumps(data), encoding="utf-8")
    done = _cli("policy", "show", str(evil), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "host_data=\\x1b[8m" in done.stdout


def test_a_utf16_json_policy_with_windows_line_ends_loads() -> None:
    """The review: the JSON's lone-CR check read every encoding as UTF-8, so in UTF-16
    each CR of a CRLF was followed by a NUL and the policy was refused."""
    text = json.dumps(_example_as_json(), indent=2).replace("\n", "\r\n")
    assert load_policy(text.encode("utf-16-le")) == load_policy(text.encode())


@pytest.mark.parametrize(
    "emoji", ["\u26a0\ufe0f", "\u2764\ufe0f", "\u845b\U000e0100", "\u1820\u180b"]
)
def test_emoji_and_ideograph_variants_still_load(emoji: str, tmp_path: Path) -> None:
    """The review of the check: variation selectors after a visible character (an
    emoji's, a Japanese or Mongolian variant) were refused, in a YAML comment too."""
    base = EXAMPLE.read_text()
    assert load_policy(f"# {emoji} reviewed\n{base}") == load_policy(base)
    data = _example_as_json()
    ca = next(s for s in data["secrets"] if s.get("common_name"))
    ca["common_name"] = f"{emoji} hospital CA"
    good = tmp_path / "policy.json"
    good.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert _cli("policy", "validate", str(good), cwd=tmp_path).returncode == 0
    ca["common_name"] = "hospital CA\u2065"  # unassigned, ignorable: refused
    good.write_text(json.dumps(data), encoding="utf-8")
    assert "(U+2065)" in _cli("policy", "validate", str(good), cwd=tmp_path).stderr


def test_the_review_shows_every_change_a_version_makes_to_what_it_grants() -> None:
    """Found by a review: `secfl policy show --against` listed a secret by name and
    kind only, so a new version could swap the model owner's imported key for one its
    proposer sealed (anyone can seal to the SPM), add a name to a certificate, or
    change the federation's settings, and the diff the board reads showed nothing."""
    from secfl.policy._review import review_diff

    old = policy_dict()
    old["secrets"].append({"name": "output-key", "kind": "imported", "sealed": "AAAA"})
    new = json.loads(json.dumps(old))
    new["secrets"][-1]["sealed"] = "BBBB"  # the proposer's own key, sealed to the SPM
    new["secrets"][2]["sans"] = ["col", "*.attacker.example"]
    new["federation"]["rounds"] = 300
    new["services"][1]["certificate_ttl"] = 366 * 86400
    new["services"][1]["inject"]["files"]["/tmp/key"] = "$$SECFL::model-key:hex$$"
    changed = [
        line[1:]
        for line in review_diff(load_policy(to_yaml(old)), load_policy(to_yaml(new)))
        if line[:1] == "+" and not line.startswith("+++")
    ]
    text = "\n".join(changed)
    assert "  output-key: imported, sealed value sha256 " in text
    assert "*.attacker.example" in text and "  tls: x509, " in text
    assert '"rounds":300' in text
    assert "certificates last: 31622400 s" in text
    assert 'injects file "/tmp/key" = "$$SECFL::model-key:hex$$"' in text
    # a path and text that read as another split of the same line stay apart
    one, two = policy_dict(), policy_dict()
    one["services"][1]["inject"]["files"] = {"/s/k": "x = $$SECFL::model-key:hex$$"}
    two["services"][1]["inject"]["files"] = {"/s/k = x": "$$SECFL::model-key:hex$$"}
    changed = review_diff(load_policy(to_yaml(one)), load_policy(to_yaml(two)))
    assert any("injects file" in line for line in changed), changed


@pytest.mark.parametrize(
    "document",
    [
        "name: x\nfederation: {a: [" + "1," * 300000 + "1]}\n",
        "name: x\nfederation:\n" + "".join(f"  k{i}: 1\n" for i in range(60000)),
        '{"name": "x", "federation": {"a": [' + "1," * 300000 + "1]}}",
    ],
    ids=["flow list", "many keys", "json"],
)
def test_a_document_of_too_many_values_is_refused_before_it_costs_much(document: str) -> None:
    """Found by a review: a megabyte of one-character YAML values cost 20 s of CPU,
    read before any signature is checked, so anyone could keep the SPM busy."""
    import time

    started = time.process_time()
    assert refusal(document).endswith("more than 100000 values in one document")
    assert time.process_time() - started < 15  # (was 14-24 s; not a benchmark)


def test_a_large_real_policy_is_read_whole() -> None:
    """The review of the cap: 250 sites pinning 6 builds each (about 25 000 values)
    must still load, as YAML and as JSON."""
    data = policy_dict()
    template = data["services"][1]
    for i in range(250):
        site = json.loads(json.dumps(template))
        site["name"] = f"site-{i}"
        site["measurements"] = {"simulated": [f"{i % 256:02x}{j:02x}" * 24 for j in range(6)]}
        data["services"].append(site)
    assert len(load_policy(to_yaml(data)).services) == 252
    assert len(load_policy(json.dumps(data)).services) == 252


def test_the_review_shows_which_federation_setting_a_version_changes() -> None:
    """Found by a hostile review: the federation's settings were one line of JSON, which
    every new version changes (`secfl policy next` raises the run), so a proposer who also
    turned the clone audit off (strategy fedavg) showed the board the same two long lines
    as any version; each setting now has a line of its own."""
    from secfl.policy._review import review, review_diff

    old = policy_dict()
    old["federation"] = {"counter": "round", "run": 1, "strategy": "clone-audit",
                         "train": {"epochs": 2, "lr": 0.05}}  # fmt: skip
    new = json.loads(json.dumps(old))
    new["federation"].update(run=2, strategy="fedavg")
    changed = [
        line
        for line in review_diff(load_policy(to_yaml(old)), load_policy(to_yaml(new)))
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert '-  "strategy":"clone-audit"' in changed and '+  "strategy":"fedavg"' in changed
    assert not [line for line in changed if '"counter"' in line or '"train"' in line], changed
    assert '  "train":{"epochs":2,"lr":0.05}' in review(load_policy(to_yaml(old)))
    empty = policy_dict()
    empty["federation"] = {}
    assert review(load_policy(to_yaml(empty)))[-1] == "federation: (none)"


@pytest.mark.parametrize(
    ("secret", "refusal"),
    [
        ({"name": "ca", "kind": "x509-ca", "common_name": "é" * 40},
         "policy: secrets[0].common_name: 80 bytes of UTF-8, more than the 64"),
        ({"name": "tls", "kind": "x509", "issuer": "tls-ca", "common_name": "col",
          "sans": ["col", "müller.example"]},
         "policy: secrets[2].sans[1]: not ASCII"),
    ],
    ids=["common name", "dns name"],
)  # fmt: skip
def test_a_certificate_name_x509_cannot_hold_is_refused_before_the_board_signs(
    tmp_path: Path, secret: dict[str, Any], refusal: str
) -> None:
    """Found by a hostile review: a common name of 40 non-Latin characters (80 bytes) or
    a DNS name that is not ASCII passed `secfl policy validate` and `sign`, and the SPM,
    once the board's signatures checked out, failed making the certificate: an error 500
    and no refusal in its log. Now validate refuses it, and so does the SPM, in one line."""
    from secfl.spm._server import open_spm
    from secfl.spm._service import Refused
    from tests.spm.harness import Board, make_sim, policy_document

    data = policy_dict()
    at = next(i for i, s in enumerate(data["secrets"]) if s["name"] == secret["name"])
    data["secrets"][at] = secret
    data["federation"] = {"rounds": 3, "counter": "round", "min_clients": 1}  # one it can run
    path = tmp_path / "policy.yaml"
    path.write_text(to_yaml(data, allow_unicode=True), encoding="utf-8")
    done = _cli("policy", "validate", str(path), cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {refusal}"), done.stderr
    assert "Traceback" not in done.stderr
    # the SPM: refused before the signatures are weighed, never a ValueError (HTTP 500)
    root = make_sim(tmp_path / "sim")
    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=tmp_path / "sim")
    board = Board.create()
    doc = yaml.safe_load(policy_document("p", board, root))
    doc["secrets"].append({**secret, "name": "extra"})
    if "issuer" in secret:  # not the identity CA: a CA of its own
        doc["secrets"][-1]["issuer"] = "extra-ca"
        doc["secrets"].append({"name": "extra-ca", "kind": "x509-ca", "common_name": "extra"})
    text = yaml.safe_dump(doc, allow_unicode=True)
    signatures = [s.model_dump() for s in board.sign(text, "alice", "bob")]
    with pytest.raises(Refused, match="^policy: secrets") as info:
        spm.submit_policy(text, signatures)
    assert info.value.status == 400


@pytest.mark.heavy(20)
def test_the_review_of_a_hostile_new_version_is_not_quadratic(tmp_path: Path) -> None:
    """Found by a hostile review: 200 services with the same 250 variables (a document of
    0.7 MiB), and a version changing half of them, kept `secfl policy show --against`
    matching the same lines across services for almost three minutes; lines are now
    compared within their section."""
    from secfl.policy import digest

    data = policy_dict()
    data["services"][1:] = [
        {"name": f"site-{i}", "role": "collaborator", "measurements": {"simulated": ["cd" * 48]},
         "inject": {"env": {f"E{j}": "x" for j in range(250)}}}
        for i in range(200)
    ]  # fmt: skip
    old = tmp_path / "v1.json"
    old.write_text(json.dumps(data))
    for service in data["services"][1::2]:
        service["inject"]["env"] = {f"E{j}": "y" if j % 2 else "x" for j in range(250)}
    data.update(version=2, predecessor=digest(load_policy(old.read_text())))
    new = tmp_path / "v2.json"
    new.write_text(json.dumps(data))
    started = time.monotonic()
    done = _cli("policy", "show", str(new), "--against", str(old), cwd=tmp_path)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 90, took  # (minutes before)
    assert "@@ service site-0 (role collaborator)" in done.stdout
    assert '+  injects env "E1" = "y"' in done.stdout.splitlines()
