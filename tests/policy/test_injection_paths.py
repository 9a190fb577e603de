"""What a policy injects is checked when it is validated, so that a bad policy is
refused at submit and never at launch: injected file paths that the launcher could
not write, NUL characters that no argument or environment variable can carry, and
counter-protected volumes that share a key (a volume file of one, presented as the
other, would open)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from secfl.errors import PolicyError
from secfl.policy import load_policy
from tests.policy import policy_dict, to_yaml

FILES = 'policy: services[1].inject.files["{}"]: '


def refusal(data: dict[str, Any]) -> str:
    """The one-line refusal of ``data``, read from YAML and from JSON alike."""
    messages = set()
    for text in (to_yaml(data), json.dumps(data)):
        with pytest.raises(PolicyError) as info:
            load_policy(text)
        messages.add(str(info.value))
    assert len(messages) == 1, messages
    message = messages.pop()
    assert "\n" not in message and message.startswith("policy: "), message
    return message


def with_files(files: dict[str, str]) -> dict[str, Any]:
    data = policy_dict()
    data["services"][1]["inject"]["files"] = files
    return data


# --- injected file paths ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/run/", "/run/tls/", "/a//"])
def test_a_path_ending_in_a_slash_is_refused(path: str) -> None:
    message = refusal(with_files({path: "x"}))
    assert message.startswith(FILES.format(path)), message
    assert "'/'" in message or "absolute clean path" in message, message


@pytest.mark.parametrize(
    "path", ["/.secfl", "/.secfl/key.pem", "/volumes", "/volumes/data/rows.csv"]
)
def test_the_launchers_own_folders_are_refused(path: str) -> None:
    message = refusal(with_files({path: "mine"}))
    folder = path.split("/")[1]
    assert message == (
        f"{FILES.format(path)}'{folder}' is the launcher's own folder in SECFL_FILES: "
        "choose another path"
    )


@pytest.mark.parametrize(
    ("files", "inner", "outer"),
    [
        ({"/a": "1", "/a/b": "2"}, "/a/b", "/a"),
        ({"/a/b/c": "1", "/a": "2"}, "/a/b/c", "/a"),
        ({"/x": "0", "/run/tls": "1", "/run/tls/key.pem": "2"}, "/run/tls/key.pem", "/run/tls"),
    ],
)
def test_a_file_that_is_a_folder_of_another_is_refused(
    files: dict[str, str], inner: str, outer: str
) -> None:
    message = refusal(with_files(files))
    assert message.startswith("policy: services[1].inject.files"), message
    assert f'"{inner}"' in message and f'"{outer}"' in message, message
    assert message.endswith("give each injected file its own path"), message


@pytest.mark.parametrize(
    "files",
    [
        {"/a": "1", "/ab": "2", "/a.d/b": "3"},  # prefixes of names, not folders
        {"/.secflx": "1", "/volumes.txt": "2", "/run/.secfl": "3", "/run/volumes/x": "4"},
        {"/run/tls.crt": "$$SECFL::tls:crt$$", "/run/tls/ca.crt": "$$SECFL::ca:crt$$"},
    ],
)
def test_distinct_files_in_their_own_folders_are_accepted(files: dict[str, str]) -> None:
    policy = load_policy(to_yaml(with_files(files)))
    assert policy.services[1].inject.files == files


# --- NUL characters in injected text ---------------------------------------------------


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("services[1].inject.args[1]", lambda i: i.update(args=["--opt", "a\0b"])),
        ("services[1].inject.env.KEY", lambda i: i["env"].update(KEY="$$SECFL::model-key$$\0")),
        ('services[1].inject.files["/run/tls.crt"]', lambda i: i["files"].update(
            {"/run/tls.crt": "\0$$SECFL::tls:crt$$"})),
    ],
)  # fmt: skip
def test_a_nul_character_in_injected_text_is_refused(where: str, edit: Any) -> None:
    data = policy_dict()
    edit(data["services"][1]["inject"])
    message = refusal(data)
    assert message.startswith(f"policy: {where}: a NUL character"), message
    assert "\0" not in message


# --- counter-protected volumes have keys of their own ----------------------------------


def with_volumes(*volumes: dict[str, Any]) -> dict[str, Any]:
    data = policy_dict()
    data["volumes"] += list(volumes)
    data["counters"].append({"name": "other-version"})
    return data


@pytest.mark.parametrize(
    ("other", "index"),
    [
        ({"name": "copy", "key": "model-key", "counter": "other-version"}, 0),
        ({"name": "copy", "key": "model-key", "tag": "ab" * 32}, 0),
    ],
    ids=["two counters", "counter and tag"],
)
def test_a_counter_volume_sharing_its_key_is_refused(other: dict[str, Any], index: int) -> None:
    message = refusal(with_volumes(other))
    assert message.startswith(f"policy: volumes[{index}].key: "), message
    assert "'data'" in message and "'copy'" in message and "'model-key'" in message, message
    assert message.endswith("give it a key of its own"), message


def test_a_tag_volume_before_a_counter_volume_is_caught_too() -> None:
    data = policy_dict()
    data["volumes"].insert(0, {"name": "copy", "key": "model-key", "tag": "ab" * 32})
    message = refusal(data)
    assert message.startswith("policy: volumes[1].key: volume 'data' "), message


def test_volumes_pinned_by_tag_may_share_a_key() -> None:
    data = with_volumes(
        {"name": "t1", "key": "shared", "tag": "ab" * 32},
        {"name": "t2", "key": "shared", "tag": "cd" * 32},
        {"name": "own", "key": "own-key", "counter": "other-version"},
    )
    data["secrets"] += [{"name": n, "kind": "aes-256"} for n in ("shared", "own-key")]
    policy = load_policy(to_yaml(data))
    assert [v.name for v in policy.volumes] == ["data", "t1", "t2", "own"]
