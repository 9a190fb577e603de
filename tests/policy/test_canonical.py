"""The canonical form: same content, same digest; any semantic change, another digest."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl.policy import Policy, canonical_bytes, digest, load_policy, load_policy_file
from secfl.policy._keys import generate, generate_recovery
from tests.policy import EXAMPLE, MR_AGG, member_keys, policy_dict, to_yaml


def test_canonical_bytes_are_sorted_compact_utf8_json() -> None:
    policy = load_policy(to_yaml(policy_dict()))
    raw = canonical_bytes(policy)
    expected = json.dumps(
        policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert raw == expected
    assert raw.startswith(b'{"board":{"members":[{"name":"alice","public_key":"-----BEGIN')
    assert digest(policy) == hashlib.sha256(raw).hexdigest()
    # The canonical form is itself a policy document, with the same digest.
    assert digest(load_policy(raw)) == digest(policy)
    assert Policy.model_validate_json(raw) == policy


def test_non_ascii_text_is_utf8_in_the_canonical_form() -> None:
    data = policy_dict()
    data["federation"]["site"] = "Hôpital Saint-Éloi"
    raw = canonical_bytes(load_policy(to_yaml(data, allow_unicode=True)))
    assert "Hôpital Saint-Éloi".encode() in raw


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


HAND_WRITTEN = """\
# The same policy, written by hand: comments, another key order, flow style,
# quoting, upper-case hex, defaults spelt out and PEM blocks without a final newline.
federation: {strategy: {name: "fedavg"}, rounds: 3}
counters: [{name: round}, {name: "data-version"}]
volumes:
  - {counter: data-version, key: model-key, name: data}
secrets:
  - {name: ca, kind: x509-ca, common_name: Test CA, validity_days: 3650}
  - name: model-key
    kind: 'aes-256'
  - name: tls
    kind: x509
    issuer: tls-ca
    common_name: col
    sans: []                     # default
    usage: [server, client]      # default
    validity_days: 365           # default
    renew_before_days: 30        # default
  - {name: tls-ca, kind: x509-ca, common_name: TLS CA}
services:
  - role: aggregator
    name: agg
    certificate_ttl: 86400       # default
    secrets: []
    measurements:
      tdx: [{rtmr2: {MR_UPPER}, mrtd: {MR_UPPER}, rtmr1: {MR_UPPER}}]
      simulated: [{MR_UPPER}]
    volumes: [data]
    counters: [round]
    inject: {env: {MODEL_KEY: $$SECFL::model-key:hex$$}, args: [], files: {}}
  - name: col
    role: collaborator
    measurements: {simulated: [{MR_COL}]}
    inject:
      files: {/run/tls.crt: "$$SECFL::tls:crt$$"}
      env: {KEY: "$$SECFL::model-key$$"}
      args: [--tls-cert, "$$SECFL::tls:crt$$"]
identity_ca: ca
platforms:
  simulation_root: |-
{ROOT}
  accept: [simulated, tdx]
  min_tcb_status: UpToDate
  allow_unknown_tcb: false
  allow_debug: False
board:
  required: []
  threshold: 2
  members:
{MEMBERS}
predecessor: ''
version: 1
name: "test-policy"
"""


def _hand_written() -> str:
    data = policy_dict()
    members = "".join(
        f"    - name: {m['name']}\n      public_key: |-\n"
        + "".join(f"        {line}\n" for line in m["public_key"].strip().splitlines())
        for m in data["board"]["members"]
    )
    root = "".join(f"    {line}\n" for line in data["platforms"]["simulation_root"].splitlines())
    return (
        HAND_WRITTEN.replace("{MR_UPPER}", MR_AGG.upper())
        .replace("{MR_COL}", data["services"][1]["measurements"]["simulated"][0])
        .replace("{MEMBERS}\n", members)
        .replace("{ROOT}\n", root.rstrip("\n") + "\n")
    )


def test_digest_is_stable_under_reformatting() -> None:
    data = policy_dict()
    reference = digest(load_policy(to_yaml(data)))
    variants = {
        "sorted keys": yaml.safe_dump(data, sort_keys=True),
        "flow style": yaml.safe_dump(data, default_flow_style=True, width=10_000),
        "reversed keys": to_yaml(_reverse_keys(data)),
        "json": json.dumps(data, indent=4),
        "compact json": json.dumps(data, separators=(",", ":")),
        "comments": "# header\n" + to_yaml(data).replace("\n", "  # note\n", 3),
        "hand written": _hand_written(),
    }
    for name, text in variants.items():
        assert digest(load_policy(text)) == reference, name


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_digest_is_stable_under_any_key_order(rnd: random.Random) -> None:
    def shuffle(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffle(v) for k, v in items}
        if isinstance(value, list):
            return [shuffle(v) for v in value]
        return value

    data = policy_dict()
    assert digest(load_policy(to_yaml(shuffle(data)))) == digest(load_policy(to_yaml(data)))


_json_text = st.text(
    st.one_of(
        st.characters(exclude_categories=("Cs",)), st.sampled_from(["\x80", "\x85", "\u2028"])
    )
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_json_text, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(_json_values)
def test_the_canonical_form_loads_back_to_the_same_policy(value: Any) -> None:
    data = policy_dict()
    data["federation"]["x"] = value
    policy = load_policy(json.dumps(data))
    again = load_policy(canonical_bytes(policy))
    assert again == policy
    assert canonical_bytes(again) == canonical_bytes(policy)


def test_the_example_digest_does_not_depend_on_its_comments() -> None:
    text = EXAMPLE.read_text()
    stripped = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#") and line.strip()
    )
    assert digest(load_policy(stripped)) == digest(load_policy_file(EXAMPLE))


Edit = Callable[[dict[str, Any]], object]


def _edits() -> dict[str, Edit]:
    new_key = generate("ed25519")[1].decode()
    bob_pub = member_keys()["bob"][1].decode()
    recovery_pub = generate_recovery()[1].decode()
    return {
        "name": lambda d: d.update(name="test-policy-2"),
        "version": lambda d: d.update(version=2, predecessor="00" * 32),
        "threshold": lambda d: d["board"].update(threshold=3),
        "required member": lambda d: d["board"].update(required=["bob"]),
        "member key": lambda d: d["board"]["members"][2].update(public_key=new_key),
        "member order": lambda d: d["board"]["members"].reverse(),
        "recovery keys": lambda d: (
            d["board"]["members"][0].update(recovery_key=bob_pub),
            d["board"]["members"][1].update(recovery_key=recovery_pub),
        ),
        "debug allowed": lambda d: d["platforms"].update(allow_debug=True),
        "unknown tcb allowed": lambda d: d["platforms"].update(allow_unknown_tcb=True),
        "min tcb": lambda d: d["platforms"].update(min_tcb_status="OutOfDate"),
        "platform dropped": lambda d: (
            d["platforms"].update(accept=["simulated"]),
            d["services"][0]["measurements"].pop("tdx"),
        ),
        "measurement": lambda d: d["services"][0]["measurements"]["tdx"].append("ef" * 48),
        "role": lambda d: d["services"][1].update(role="any"),
        "service order": lambda d: d["services"].reverse(),
        "env value": lambda d: d["services"][1]["inject"]["env"].update(
            KEY="$$SECFL::model-key:hex$$"
        ),
        "arg order": lambda d: d["services"][1]["inject"]["args"].reverse(),
        "file path": lambda d: d["services"][1]["inject"].update(
            files={"/run/tls2.crt": "$$SECFL::tls:crt$$"}
        ),
        "extra released secret": lambda d: d["services"][1].update(secrets=["model-key"]),
        "certificate ttl": lambda d: d["services"][0].update(certificate_ttl=3600),
        "site key": lambda d: d["services"][1].update(site_key=new_key),
        "secret added": lambda d: d["secrets"].append({"name": "r", "kind": "random", "size": 8}),
        "validity": lambda d: d["secrets"][2].update(validity_days=90),
        "sans": lambda d: d["secrets"][2].update(sans=["col.example"]),
        "volume anchor": lambda d: d["volumes"][0].update(counter=None, tag="ab" * 32),
        "counter added": lambda d: d["counters"].append({"name": "extra"}),
        "federation value": lambda d: d["federation"].update(rounds=4),
        "federation type": lambda d: d["federation"].update(rounds="3"),
        "federation float": lambda d: d["federation"].update(rounds=3.0),
        "federation null": lambda d: d["federation"].update(extra=None),
    }


EDITS = _edits()


def test_every_semantic_edit_changes_the_digest() -> None:
    reference = digest(load_policy(to_yaml(policy_dict())))
    seen = {reference: "original"}
    for name, edit in EDITS.items():
        data = policy_dict()
        edit(data)
        value = digest(load_policy(to_yaml(data)))
        assert value not in seen, f"{name} has the digest of {seen.get(value)}"
        seen[value] = name


def test_the_hand_written_variant_normalises_hex() -> None:
    assert load_policy(_hand_written()).services[0].measurements["tdx"] == [
        {"mrtd": MR_AGG, "rtmr1": MR_AGG, "rtmr2": MR_AGG}
    ]
