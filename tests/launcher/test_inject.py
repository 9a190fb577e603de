"""Injection that cannot be done is refused in one line, and a secret's value is never
expanded again (issue 13, item 14 and the single-pass item). Real `secfl run`
processes against a real SPM; the checks themselves also in-process."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from secfl.errors import LaunchError
from secfl.launcher.inject import check_policy_args, file_plan, no_nul
from tests.launcher.world import BAD_FILES, META_VALUE, SHOW_META, STARTED, World, python

ONE_LINE = re.compile(r"^error: [^\n]+\n$")

FILE_REFUSALS = {
    "own-file": "inject: file '/.secfl/key.pem' collides with the launcher's own '.secfl'",
    "own-volume": "inject: file '/volumes/data/rows.csv' collides with the launcher's own "
    "'volumes'",
    "same-file": "inject: files '/a/b' and '/a/b/' are the same file",
    "file-folder": "inject: file '/a/b' needs '/a' to be a folder, but it is an injected file",
}


@pytest.fixture(scope="module")
def hostile(world: World) -> World:
    world.submit_hostile()
    return world


@pytest.mark.parametrize("service", list(BAD_FILES))
def test_colliding_injected_files_are_refused_in_one_line(hostile: World, service: str) -> None:
    done = hostile.run(service, python(STARTED), policy="hostile")
    assert done.returncode == 1
    assert done.stdout == "", "the program must not start"
    assert ONE_LINE.match(done.stderr), done.stderr
    assert done.stderr.startswith(f"error: {FILE_REFUSALS[service]}"), done.stderr


@pytest.mark.parametrize(
    ("service", "argv", "where"),
    [
        ("nul-env", python(STARTED), "environment variable NUL"),
        ("nul-arg", python(STARTED, "$$SECFL::nul$$"), "argument 4"),
    ],
)
def test_a_nul_byte_bound_for_env_or_args_is_refused_in_one_line(
    world: World, service: str, argv: list[str], where: str
) -> None:
    done = world.run(service, argv)
    assert done.returncode == 1
    assert done.stdout == "", "the program must not start"
    assert ONE_LINE.match(done.stderr), done.stderr
    assert done.stderr.startswith(f"error: inject: {where} would contain a NUL byte"), done.stderr
    assert ":hex or :base64, or as a file" in done.stderr


def test_a_placeholder_inside_a_secret_is_not_expanded_again(world: World) -> None:
    done = world.run("meta", python(SHOW_META))
    assert done.returncode == 0, done.stderr
    expected = f"{META_VALUE.decode()} {world.token().hex()}"
    assert f"ENV {expected}\n" in done.stdout, done.stdout
    assert f"FILE {expected}\n" in done.stdout, done.stdout


def test_file_plan_accepts_distinct_paths() -> None:
    plan = file_plan({"/a/b": "1", "a/c": "2", "/.secflx": "3", "volumes.txt": "4"})
    assert plan == {
        "/a/b": PurePosixPath("a/b"),
        "a/c": PurePosixPath("a/c"),
        "/.secflx": PurePosixPath(".secflx"),
        "volumes.txt": PurePosixPath("volumes.txt"),
    }


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"/": "x"}, "inject: file '/' is not a clean file path"),
        ({"/a/../b": "x"}, "inject: file '/a/../b' is not a clean file path"),
        ({"a\0b": "x"}, "inject: file 'a\\x00b' is not a clean file path"),
        ({"/.secfl": "x"}, "inject: file '/.secfl' collides with the launcher's own"),
        ({"./volumes/x": "x"}, "inject: file './volumes/x' collides with the launcher's own"),
        ({"/a/b/c": "1", "/a": "2"}, "inject: file '/a/b/c' needs '/a' to be a folder"),
        ({"x": "1", "/./x": "2"}, "inject: files 'x' and '/./x' are the same file"),
    ],
)
def test_file_plan_refusals(files: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError) as err:
        file_plan(files)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_policy_args_may_carry_public_parts_only() -> None:
    check_policy_args(["--ca", "$$SECFL::ca:crt$$", "$$SECFL::sig:pub$$", "$$SECFL::ca:chain$$"])
    for secret in ("$$SECFL::token:hex$$", "--k=$$SECFL::key$$", "$$SECFL::sig:key$$"):
        with pytest.raises(LaunchError, match=r"^inject: policy argument 1 puts secret"):
            check_policy_args([secret])


def test_no_nul_names_the_place() -> None:
    assert no_nul("fine", "argument 1") == "fine"
    with pytest.raises(LaunchError, match=r"^inject: argument 2 would contain a NUL byte"):
        no_nul("a\0b", "argument 2")
