"""Placeholders `secfl policy init` leaves (`TODO(secfl): ...`) are found wherever they are,
and a policy holding one is refused in one line naming the field and what to do."""

from __future__ import annotations

import pytest

from secfl.errors import PolicyError
from secfl.policy import load_policy
from secfl.policy._todo import check_no_todos, todo, todos
from tests.policy import policy_dict, to_yaml


def test_placeholders_are_found_with_their_path_and_refused() -> None:
    doc = policy_dict()
    doc["secrets"].append(
        {"name": "site-key", "kind": "imported", "sealed": todo("site  seals\n it")}
    )
    doc["services"][1]["inject"]["files"]["/run/x.conf"] = "todo(SECFL): lower case too"
    policy = load_policy(to_yaml(doc))
    assert todos(policy) == [
        ('.services[1].inject.files["/run/x.conf"]', "lower case too"),
        (".secrets[4].sealed", "site seals it"),
    ]
    with pytest.raises(PolicyError) as info:
        check_no_todos(policy)
    assert str(info.value) == (
        'todo: services[1].inject.files["/run/x.conf"]: lower case too (and 1 more)'
    )


def test_a_policy_without_placeholders_passes() -> None:
    policy = load_policy(to_yaml(policy_dict()))
    assert todos(policy) == []
    check_no_todos(policy)
