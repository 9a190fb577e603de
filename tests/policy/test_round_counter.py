"""Only an aggregator may move the federation's round counter (found by a review).

The aggregator commits a round by moving the round counter in the increment that logs
the round: the audit log never has a round without its counter, nor a counter without
its round. A policy that also gave that counter to a collaborator, or to a service of
role ``any`` (a Flower site), let its host move the counter without a round: the
aggregator's next compare-and-increment was refused as if another aggregator ran. A new
version doing so is now refused, in one line naming the service and the counter; a
version already stored still reads (the SPM refuses the increment itself:
tests/spm/test_round_counter.py).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from secfl.errors import PolicyError
from secfl.policy import load_policy
from secfl.policy._new_version import check_new_version
from tests.policy import policy_dict, to_yaml


def _doc(counter: str | None = "round") -> dict[str, Any]:
    """The test policy, its round counter ``counter`` (None: left to the default)."""
    doc = policy_dict()
    if counter is not None:
        doc["federation"]["counter"] = counter
    else:
        doc["counters"].append({"name": "rounds"})
        doc["services"][0]["counters"] = ["rounds"]
    return doc


@pytest.mark.parametrize("role", ["collaborator", "any"])
@pytest.mark.parametrize("counter", ["round", None])
def test_the_round_counter_given_to_another_service_is_refused(
    role: str, counter: str | None
) -> None:
    doc = _doc(counter)
    named = counter or "rounds"
    doc["services"][1].update(role=role, counters=[named])
    policy = load_policy(to_yaml(doc))  # a version already stored still reads
    with pytest.raises(PolicyError) as refused:
        check_new_version(policy)
    assert str(refused.value) == (
        f"policy: services[1].counters: service 'col' (role {role}) may move '{named}', the "
        "federation's round counter, which only the aggregator moves (with the round it "
        "commits): remove it from the service's counters (a counter of its own, if it "
        "needs one)"
    )


def test_aggregators_and_other_counters_stay_accepted() -> None:
    from secfl.policy._round_counter import round_counter

    doc = _doc()
    doc["counters"].append({"name": "site"})
    doc["services"][1]["counters"] = ["site"]  # a counter of its own
    second = {**copy.deepcopy(doc["services"][0]), "name": "agg-2", "volumes": []}
    doc["services"].append(second)  # two aggregators (one runs at a time)
    policy = load_policy(to_yaml(doc))
    check_new_version(policy)
    assert round_counter(policy) == "round"


@pytest.mark.parametrize("settings", [False, True])
def test_a_policy_without_an_aggregator_has_no_round_counter(settings: bool) -> None:
    """No aggregator (`secfl run` of another program): no round is ever committed, and
    a counter named as the default is anyone's. (Federation settings without an
    aggregator are `secfl policy validate`'s to refuse, saying that.)"""
    from secfl.policy._round_counter import round_counter

    doc = _doc(None)
    if not settings:
        del doc["federation"]
    doc["services"][0]["role"] = "any"
    doc["services"][1]["counters"] = ["rounds"]
    policy = load_policy(to_yaml(doc))
    assert round_counter(policy) is None
    check_new_version(policy)
