"""Names that could stand for another's in TLS are refused in a new version. Found by a
hostile review of the collaborator's pin on the aggregator's certificate
(secfl.fl._pin): TLS compares DNS names ignoring case and a final dot and honours
wildcards, so a service named ``SAB.Aggregator`` answered to the name that pins the
aggregator's certificate of serial ``ab``, and an x509 secret the identity CA issued
for ``*.aggregator`` answered to every such name."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import PolicyError
from secfl.policy import load_policy
from secfl.policy._new_version import check_new_version
from tests.policy import policy_dict, to_yaml


def _service(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        extra = copy.deepcopy(doc["services"][1])
        extra.update(name=name, inject={})
        doc["services"].append(extra)

    return edit


def _identity_issued(doc: dict[str, Any]) -> None:
    doc["secrets"].append(
        {"name": "wild", "kind": "x509", "issuer": "ca", "common_name": "x",
         "sans": ["*.agg"]}
    )  # fmt: skip


CASES = {
    "case": (_service("AGG"), "policy: services: 'AGG' and 'agg' differ only in case"),
    "final dot": (_service("agg."), "policy: services: 'agg.' and 'agg' differ only in case"),
    "session": (_service("sab.agg"), "policy: services: 'sab.agg' has the form s<serial>."),
    "session, case": (_service("SAB.Agg."), "policy: services: 'SAB.Agg.' has the form"),
    "identity CA": (_identity_issued, "policy: secrets[4] ('wild'): issued by the identity CA"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_name_that_stands_for_another_is_refused(case: str) -> None:
    edit, expected = CASES[case]
    doc = policy_dict()
    check_new_version(load_policy(to_yaml(doc)))  # the base is fine
    edit(doc)
    with pytest.raises(PolicyError) as refused:
        check_new_version(load_policy(to_yaml(doc)))
    assert str(refused.value).startswith(expected), str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["sab", "sea.hospital", "s12.agg-b", "agg-2", "site.agg"])
def test_names_that_stand_for_no_other_are_accepted(name: str) -> None:
    doc = policy_dict()
    _service(name)(doc)
    check_new_version(load_policy(to_yaml(doc)))


def test_policy_validate_refuses_it_in_one_line(tmp_path: Path) -> None:
    doc = policy_dict()
    _service("sAb.agg")(doc)
    (tmp_path / "policy.yaml").write_text(to_yaml(doc))
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "policy", "validate", "policy.yaml"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: policy: services: 'sAb.agg' has the form s<serial>.<service> that names one "
        "certificate of a service: rename it"
    ]
