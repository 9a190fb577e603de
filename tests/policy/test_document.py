"""Reading policies: the example loads; every mistake is one line naming its field path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfl._internal.yamlload import WITH_LIBYAML
from secfl.errors import PolicyError
from secfl.policy import Policy, load_policy, load_policy_file
from secfl.policy._document import MAX_BYTES, MAX_DEPTH
from tests.policy import EXAMPLE, policy_dict, to_yaml


def refusal(text: str | bytes) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("policy: ")
    return message


def test_the_example_policy_loads() -> None:
    policy = load_policy_file(EXAMPLE)
    assert policy.name == "hospital-fl"
    assert [s.name for s in policy.services] == ["aggregator", "hospital-a", "hospital-b"]
    assert [s.role for s in policy.services] == ["aggregator", "collaborator", "collaborator"]
    assert set(policy.platforms.accept) == {"simulated", "tdx", "snp", "sgx"}
    assert policy.platforms.simulation_root
    assert policy.identity_ca == "identity-ca"
    assert {s.kind for s in policy.secrets} >= {"x509-ca", "aes-256"}
    assert [v.name for v in policy.volumes] == ["task", "validation", "hospital-a", "hospital-b"]
    assert policy.counter_names() == {"rounds", "hospital-a-data", "hospital-b-data"}
    assert len(policy.board.members) == 3 and policy.board.threshold == 2
    assert policy.service("aggregator").released_secrets() == [  # type: ignore[union-attr]
        "checkpoint-key",
        "model-signing",
        "output-key",
    ]
    sgx = policy.service("hospital-a").identities("sgx")  # type: ignore[union-attr]
    assert sgx[0]["isv_prod_id"] == 1
    # the hospitals run the same code: each names its site key
    site_keys = {s.name: s.site_key for s in policy.services if s.role == "collaborator"}
    assert all(site_keys.values()) and len(set(site_keys.values())) == 2


def test_the_example_policy_is_a_federation_the_aggregator_accepts() -> None:
    """Its `federation` section is read by the aggregator's own parser, with the strategy
    the registry builds, and nothing a federation needs is missing (not even the output
    key: no warning)."""
    from secfl.fl._config import FederationConfig
    from secfl.fl._policy_check import check_ready

    policy = load_policy_file(EXAMPLE)
    config = FederationConfig.parse(policy.federation)
    assert (config.rounds, config.strategy, config.counter) == (10, "clone-audit", "rounds")
    assert type(config.strategy_object()).__name__ == "CloneAudit"
    assert check_ready(policy) == []


def test_the_test_policy_loads_from_yaml_and_json() -> None:
    data = policy_dict()
    assert (
        load_policy(to_yaml(data)) == load_policy(json.dumps(data)) == Policy.model_validate(data)
    )


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"^policy: cannot read '.*missing.yaml'"):
        load_policy_file(tmp_path / "missing.yaml")


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets ``a.b[0].c`` to ``value``."""

    def mutate(data: dict[str, Any]) -> None:
        parts = path.replace("[", ".").replace("]", "").split(".")
        target: Any = data
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _pop(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        parts = path.split(".")
        target: Any = data
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[parts[-1]]

    return mutate


def _rename_key(data: dict[str, Any]) -> None:
    member = data["board"]["members"][0]
    member["publc_key"] = member.pop("public_key")


def _append(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path.split("."):
            target = target[int(part)] if part.isdigit() else target[part]
        target.append(value)

    return mutate


CASES: list[tuple[str, Mutation, str]] = [
    # Unknown fields, at any depth, including inside a tagged union member.
    (
        "unknown field",
        _rename_key,
        "board.members[0].publc_key: unknown field (did you mean 'public_key'?)",
    ),
    ("unknown top field", _set("servics", []), "servics: unknown field (did you mean 'services'?)"),
    ("unknown field in a secret", _set("secrets.1.size", 3), "secrets[1].size: unknown field"),
    ("unknown field in a list", _set("counters.1.value", 3), "counters[1].value: unknown field"),
    ("missing field", _pop("identity_ca"), "identity_ca: missing required field"),
    (
        "unknown secret kind",
        _set("secrets.1.kind", "aes-512"),
        "secrets[1].kind: 'aes-512' is not one of 'aes-256', 'random', 'ed25519', "
        "'ecdsa-p256', 'x509-ca', 'x509', 'imported'",
    ),
    ("secret without kind", _pop("secrets.1.kind"), "secrets[1].kind: missing required field"),
    # Duplicate names.
    (
        "duplicate service",
        _set("services.1.name", "agg"),
        "services[1].name: duplicate name 'agg'",
    ),
    (
        "duplicate secret",
        _append("secrets", {"name": "ca", "kind": "aes-256"}),
        "secrets[4].name: duplicate name 'ca'",
    ),
    (
        "duplicate member",
        _set("board.members.2.name", "alice"),
        "board.members[2].name: duplicate name 'alice'",
    ),
    (
        "duplicate counter",
        _append("counters", {"name": "round"}),
        "counters[2].name: duplicate name 'round'",
    ),
    # Secrets referenced but not defined.
    ("volume key", _set("volumes.0.key", "nope"), "volumes[0].key: unknown secret 'nope'"),
    (
        "volume key of the wrong kind",
        _set("volumes.0.key", "ca"),
        "volumes[0].key: secret 'ca' is x509-ca, not aes-256 or imported",
    ),
    ("issuer", _set("secrets.2.issuer", "nope"), "secrets[2].issuer: unknown secret 'nope'"),
    ("identity_ca", _set("identity_ca", "nope"), "identity_ca: unknown secret 'nope'"),
    (
        "identity_ca of the wrong kind",
        _set("identity_ca", "model-key"),
        "identity_ca: secret 'model-key' is aes-256, not x509-ca",
    ),
    (
        "service secrets",
        _set("services.0.secrets", ["model-key", "nope"]),
        "services[0].secrets[1]: unknown secret 'nope'",
    ),
    (
        "placeholder",
        _set("services.1.inject.env.KEY", "$$SECFL::x$$"),
        "services[1].inject.env.KEY: placeholder names unknown secret 'x'",
    ),
    (
        "placeholder in a file",
        _set("services.1.inject.files", {"/etc/app.conf": "k=$$SECFL::nope:hex$$"}),
        "services[1].inject.files[\"/etc/app.conf\"]: placeholder names unknown secret 'nope'",
    ),
    (
        "malformed placeholder",
        _set("services.1.inject.args", ["--key", "$$SECFL::bad name$$"]),
        "services[1].inject.args[1]: malformed placeholder '$$SECFL::bad name$$'",
    ),
    (
        "bad selector",
        _set("services.1.inject.env.KEY", "$$SECFL::model-key:pem$$"),
        "services[1].inject.env.KEY: unknown selector ':pem' in '$$SECFL::model-key:pem$$' "
        "(one of base64, chain, crt, hex, key, pub)",
    ),
    (
        "selector for another kind of secret",
        _set("services.1.inject.env.KEY", "$$SECFL::model-key:crt$$"),
        "services[1].inject.env.KEY: selector ':crt' does not apply to secret 'model-key' "
        "(aes-256)",
    ),
    # Unknown counters and volumes.
    (
        "service counter",
        _set("services.0.counters", ["rounds"]),
        "services[0].counters[0]: unknown counter 'rounds'",
    ),
    (
        "volume counter",
        _set("volumes.0.counter", "nope"),
        "volumes[0].counter: unknown counter 'nope'",
    ),
    (
        "service volume",
        _set("services.0.volumes", ["data", "nope"]),
        "services[0].volumes[1]: unknown volume 'nope'",
    ),
    (
        "duplicate service volume",
        _set("services.0.volumes", ["data", "data"]),
        "services[0].volumes[1]: duplicate volume 'data'",
    ),
    (
        "volume with tag and counter",
        _set("volumes.0.tag", "ab" * 32),
        "volumes[0]: give exactly one of 'tag' or 'counter'",
    ),
    # The board rule.
    ("threshold", _set("board.threshold", 4), "board.threshold: 4 exceeds the 3 members"),
    (
        "threshold zero",
        _set("board.threshold", 0),
        "board.threshold: input should be greater than or equal to 1",
    ),
    (
        "required non-member",
        _set("board.required", ["dave"]),
        "board.required[0]: 'dave' is not a board member",
    ),
    (
        "required twice",
        _set("board.required", ["alice", "alice"]),
        "board.required[1]: duplicate member 'alice'",
    ),
    (
        "bad member key",
        _set("board.members.1.public_key", "not a key"),
        "board.members[1].public_key: not a PEM public key",
    ),
    (
        "recovery key as signing key",
        _set(
            "board.members.1.public_key",
            "-----BEGIN PUBLIC KEY-----\n"
            "MCowBQYDK2VuAyEAyuwT9Fksoy2IsdqOryZ811S65fPGyOH0NU1Pm/mxOWY=\n"
            "-----END PUBLIC KEY-----\n",
        ),
        "board.members[1].public_key: X25519 key refused (Ed25519 or ECDSA P-256 only)",
    ),
    # Platforms.
    (
        "simulated without root",
        _pop("platforms.simulation_root"),
        "platforms.simulation_root: required when 'simulated' is accepted",
    ),
    (
        "bad simulation root",
        _set("platforms.simulation_root", "-----BEGIN CERTIFICATE-----\nAAAA\n"),
        "platforms.simulation_root: not a PEM certificate",
    ),
    (
        "measurement for a platform not accepted",
        _set("services.1.measurements", {"sgx": ["ef" * 32]}),
        "services[1].measurements.sgx: platform 'sgx' is not in platforms.accept",
    ),
    (
        "unknown platform",
        _set("services.1.measurements", {"tpm": ["ef" * 32]}),
        "services[1].measurements.tpm: invalid key: input should be 'sgx', 'tdx', 'snp' or "
        "'simulated'",
    ),
    (
        "measurement not hex",
        _set("services.1.measurements", {"simulated": ["xyz"]}),
        "services[1].measurements.simulated[0]: 'xyz' is not a hex measurement",
    ),
    (
        "measurement of the wrong type",
        _set("services.1.measurements", {"simulated": [5]}),
        "services[1].measurements.simulated[0]: input should be a valid string",
    ),
    (
        "unknown claim field",
        _set("services.1.measurements", {"tdx": [{"mrtd": "ab" * 48, "rtmr7": "00"}]}),
        "services[1].measurements.tdx[0].rtmr7: 'rtmr7' is not a tdx claim field (one of "
        "mrconfigid, mrowner, mrownerconfig, mrseam, mrtd, rtmr0, rtmr1, rtmr2, rtmr3)",
    ),
    (
        "duplicate platform",
        _set("platforms.accept", ["tdx", "simulated", "tdx"]),
        "platforms.accept[2]: duplicate platform 'tdx'",
    ),
    ("bad role", _set("services.0.role", "boss"), "services[0].role: input should be "),
    # Injection.
    (
        "env name",
        _set("services.1.inject.env", {"A=B": "x"}),
        'services[1].inject.env["A=B"]: not a valid environment variable name',
    ),
    (
        "relative file",
        _set("services.1.inject.files", {"etc/x": "y"}),
        'services[1].inject.files["etc/x"]: must be an absolute clean path',
    ),
    (
        "escaping file",
        _set("services.1.inject.files", {"/run/../etc/shadow": "y"}),
        'services[1].inject.files["/run/../etc/shadow"]: must be an absolute clean path',
    ),
    # Versions.
    (
        "predecessor for version 1",
        _set("predecessor", "ab" * 32),
        "predecessor: must be empty for version 1",
    ),
    (
        "no predecessor for version 2",
        _set("version", 2),
        "predecessor: required for version 2 (the digest of version 1)",
    ),
    (
        "malformed predecessor",
        _set("predecessor", "AB" * 32),
        "predecessor: must be a SHA-256 digest (64 lowercase hex digits) or empty",
    ),
    # Federation holds JSON values only.
    (
        "federation NaN",
        _set("federation.lr", float("nan")),
        "federation.lr: nan is not a finite number",
    ),
    (
        "renewal longer than validity",
        _set("secrets.2.renew_before_days", 400),
        "secrets[2].renew_before_days: must be less than validity_days (365)",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_is_one_line_naming_the_field(mutate: Mutation, expected: str) -> None:
    data = policy_dict()
    mutate(data)
    message = refusal(to_yaml(data))
    assert message.startswith(f"policy: {expected}"), message
    if not expected.endswith(" "):
        assert message == f"policy: {expected}"


def test_several_errors_are_counted_on_the_same_line() -> None:
    data = policy_dict()
    data["version"] = 0
    data["name"] = "bad name!"
    del data["identity_ca"]
    message = refusal(to_yaml(data))
    assert message.startswith("policy: name: string should match pattern")
    assert message.endswith("(and 2 more errors)")


def test_a_key_that_is_not_text_is_refused() -> None:
    assert refusal(to_yaml(policy_dict()) + "1: x\n") == (
        "policy: 1: invalid key: keys should be strings"
    )
    text = to_yaml(policy_dict()).replace("    MODEL_KEY:", "    7:")
    assert (
        refusal(text)
        == "policy: services[0].inject.env.7: invalid key: input should be a valid string"
    )


def test_text_that_is_not_unicode_is_refused() -> None:
    data = policy_dict()
    data["federation"]["s"] = "@"
    text = json.dumps(data).replace('"@"', '"\\ud800"')  # JSON spells it by number
    assert refusal(text) == "policy: federation.s: text that is not valid Unicode"
    data["federation"].pop("s")
    data["federation"]["@"] = 1
    text = json.dumps(data).replace('"@"', '"\\ud800"')
    assert refusal(text) == 'policy: federation["\\ud800"]: text that is not valid Unicode'


def test_yaml_escapes_that_hide_what_a_string_holds_are_refused() -> None:
    """Found by a hostile review: "\\x24\\x24SECFL::output-key:hex\\x24\\x24" in an
    injected file released the output key to a service whose text showed no
    placeholder."""
    text = to_yaml(policy_dict())
    for escape in ("\\x24", "\\u0024", "\\U00000024", "\\N", "\\_", "\\L", "\\P"):
        assert refusal(text + f'  s: "a{escape}b"\n').endswith(
            "escapes that spell characters by number (\\x, \\u, \\U) or name (\\N, \\_, "
            "\\L, \\P) are not allowed: write the characters"
        ), escape
    assert load_policy(text + '  s: "a\\\\x24 \\t \\" b"\n')  # \\\\, \\t and \\" are fine


def test_a_date_in_federation_is_refused() -> None:
    text = to_yaml(policy_dict()) + "  start: 2024-01-01\n"
    assert refusal(text) == (
        "policy: federation.start: not a JSON value (text, number, boolean, null, list or "
        "mapping; quote dates)"
    )


def test_duplicate_yaml_keys_are_refused() -> None:
    text = to_yaml(policy_dict()).replace("version: 1\n", "version: 1\nname: other\n")
    line = text.splitlines().index("name: other") + 1
    assert refusal(text) == f"policy: YAML line {line}, column 1: duplicate key 'name'"


def test_duplicate_nested_yaml_keys_are_refused() -> None:
    text = to_yaml(policy_dict()).replace(
        "      MODEL_KEY: $$SECFL::model-key:hex$$\n",
        "      MODEL_KEY: $$SECFL::model-key:hex$$\n      MODEL_KEY: other\n",
    )
    assert "MODEL_KEY: other" in text
    assert refusal(text).endswith("duplicate key 'MODEL_KEY'")


def test_json_documents_are_read_strictly() -> None:
    text = json.dumps(policy_dict())
    assert load_policy(text) == load_policy(to_yaml(policy_dict()))
    assert load_policy(text.encode("utf-16")) == load_policy(text)
    assert refusal(text[:-1] + ', "name": "x"}') == "policy: JSON: duplicate key 'name'"
    assert (
        refusal(text[:-1] + ', "x": NaN}') == "policy: JSON: NaN is not a number a policy may hold"
    )
    data = policy_dict()
    data["federation"] = {"a": "HERE"}
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    deep = json.dumps(data).replace('"HERE"', nested)
    assert refusal(deep) == f"policy: JSON: nested deeper than {MAX_DEPTH} levels"
    # Not JSON, but YAML in flow style: read as YAML.
    assert refusal("{name: x, name: y}") == "policy: YAML line 1, column 11: duplicate key 'name'"


def test_yaml_syntax_errors_give_line_and_column() -> None:
    unclosed = refusal("name: a\nversion: [1\n")
    assert unclosed == "policy: YAML line 3, column 1: " + (
        "did not find expected ',' or ']'"  # libyaml's words
        if WITH_LIBYAML
        else "expected ',' or ']', but got '<stream end>'"
    )
    assert refusal("a: b\n c: d\n").startswith("policy: YAML line 2, column 3: ")


def test_aliases_and_merge_keys_are_refused() -> None:
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    assert refusal(laughs) == "policy: YAML line 2, column 8: YAML aliases are not allowed"
    assert refusal("a: 1\n<<: {b: 2}\n") == (
        "policy: YAML line 2, column 1: YAML merge keys ('<<') are not allowed"
    )


def test_deep_nesting_and_huge_documents_are_refused() -> None:
    deep = "federation: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    assert f"nested deeper than {MAX_DEPTH} levels" in refusal(deep)
    assert refusal("a: " + "x" * MAX_BYTES) == (
        f"policy: the document is larger than {MAX_BYTES} bytes"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "policy: the document is empty"),
        ("# only a comment\n", "policy: the document is empty"),
        ("- a\n- b\n", "policy: the document must be a mapping of fields, not a list"),
        ("just text", "policy: the document must be a mapping of fields, not text"),
        ("1: x\n", "policy: name: missing required field (and 6 more errors)"),
        ("? [a, b]\n: c\n", "policy: YAML line 1, column 3: a mapping key must be a plain value"),
        (
            b"name: \xff\xfe\xfa",
            "policy: the document is not UTF-8 text (byte 6): save it as UTF-8",
        ),
        ("name: !!python/object:os.system x\n", "policy: YAML line 1, column 7: "),
    ],
)
def test_documents_that_are_not_policies(text: str | bytes, expected: str) -> None:
    message = refusal(text)
    assert message.startswith(expected), message


# -- fuzzing: nothing but PolicyError, ever ------------------------------------------

_yaml_chars = st.sampled_from(list(":-[]{},&*!|>'\"%@`#?\n\t abc01\\$\x00\u00e9\ud800"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(_yaml_chars), st.binary()))
def test_random_text_raises_nothing_but_policy_error(text: str | bytes) -> None:
    try:
        load_policy(text)
    except PolicyError as exc:
        assert "\n" not in str(exc)


#: Any character, lone surrogates included (hypothesis leaves them out by default).
_chars = st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x00", "\x85"]))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(_chars, max_size=20),
    st.dates(),
    st.binary(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.text(_chars, max_size=8), st.integers()), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


_BASE_PATHS = _paths(policy_dict())[1:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_BASE_PATHS), _values)
def test_random_values_in_a_valid_policy_raise_nothing_but_policy_error(
    path: tuple[Any, ...], value: Any
) -> None:
    data = policy_dict()
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        load_policy(text)
    except PolicyError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(_values)
def test_random_yaml_documents_raise_nothing_but_policy_error(value: Any) -> None:
    try:
        load_policy(yaml.safe_dump(value))
    except PolicyError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    ("literal", "shown"),
    [
        ("010", "010 reads as 8 in YAML 1.1"),
        ("1:30", "1:30 reads as 90 in YAML 1.1"),
        ("0x10", "0x10 reads as 16 in YAML 1.1"),
        ("1_0", "1_0 reads as 10 in YAML 1.1"),
        ("1:30.5", "1:30.5 reads as 90.5 in YAML 1.1"),
        ("yes", "yes reads as True in YAML 1.1: write true or false"),
        ("off", "off reads as False in YAML 1.1: write true or false"),
        ("!!binary aGk=", "YAML tags (tag:yaml.org,2002:binary) are not allowed"),
        ("!!str 1", "YAML tags (tag:yaml.org,2002:str) are not allowed"),
    ],
)
def test_yaml_1_1_values_that_read_otherwise_than_they_look_are_refused(
    literal: str, shown: str
) -> None:
    """Found by a hostile review: `rounds: 010` was 8, `1:30` was 90, `allow_debug: on`
    true, and `!!binary` hid a placeholder. Each is now one line saying how to write it."""
    text = to_yaml(policy_dict()) + f"  setting: {literal}\n"
    assert shown in refusal(text)
