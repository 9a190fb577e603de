"""Injection that cannot be done is refused in one line, no secret goes on a command
line, and a secret's value is never expanded again (placeholders are replaced in
one pass). Real `secfl run` processes against a real SPM; the checks themselves
also in-process."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from secfl.errors import LaunchError
from secfl.launcher._inject import check_public_args, file_plan, no_nul
from secfl.spm.client import SpmClient, SpmRefused
from tests.launcher.world import (
    BAD_FILES,
    LEAKY,
    META_VALUE,
    SHOW_META,
    STARTED,
    World,
    python,
)

ONE_LINE = re.compile(r"^error: [^\n]+\n$")

FILES = 'policy: services[0].inject.files["{}"]: '
#: A policy with such files is refused when it is submitted, never at launch.
FILE_REFUSALS = {
    "own-file": FILES.format("/.secfl/key.pem") + "'.secfl' is the launcher's own folder",
    "own-volume": FILES.format("/volumes/data/rows.csv") + "'volumes' is the launcher's own",
    "same-file": FILES.format("/a/b/") + "a file path cannot end with '/'",
    "file-folder": FILES.format("/a/b") + 'needs "/a" to be a folder, but that is an injected',
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_colliding_injected_files_are_refused_at_submit(world: World, case: str) -> None:
    with pytest.raises(SpmRefused) as info:
        world.submit_hostile(BAD_FILES[case])
    assert info.value.status == 400, str(info.value)
    assert str(info.value).startswith(FILE_REFUSALS[case]), str(info.value)
    assert "\n" not in str(info.value)
    done = world.run("victim", python(STARTED), policy="hostile")  # nothing was stored
    assert done.returncode == 1
    assert done.stdout == ""
    assert ONE_LINE.match(done.stderr), done.stderr


def test_a_nul_byte_bound_for_the_environment_is_refused_in_one_line(world: World) -> None:
    """(A secret cannot reach an argument at all: see the test below.)"""
    done = world.run("nul-env", python(STARTED))
    assert done.returncode == 1
    assert done.stdout == "", "the program must not start"
    assert ONE_LINE.match(done.stderr), done.stderr
    assert done.stderr.startswith(
        "error: inject: environment variable NUL would contain a NUL byte"
    ), done.stderr
    assert ":hex or :base64, or as a file" in done.stderr


def _audit(world: World) -> list[dict[str, object]]:
    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        return list(client.audit(0, 10000)["entries"])


@pytest.mark.parametrize(("case", "secret"), [("hex", "api-token"), ("bare", "nul")])
def test_a_secret_in_the_programs_own_arguments_is_refused_before_attesting(
    world: World, case: str, secret: str
) -> None:
    """`secfl run ... -- PROG --key $$SECFL::api-token:hex$$` would show the secret to
    every local user (ps): refused in one line, before the SPM releases anything."""
    argv = python(STARTED, *LEAKY[case])
    before = _audit(world)
    done = world.run("leaky", argv)
    assert done.returncode == 1
    assert done.stdout == "", "the program must not start"
    assert ONE_LINE.match(done.stderr), done.stderr
    assert done.stderr.startswith(
        f"error: inject: argument {len(argv)} puts secret '{secret}' in the program's "
        "arguments, which every local user can read (ps)"
    ), done.stderr
    assert "use inject.env or inject.files in the policy" in done.stderr
    assert _audit(world) == before, "the launcher must not attest: nothing may be released"


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


@pytest.mark.parametrize("what", ["argument", "policy argument"])
def test_arguments_may_carry_public_parts_only(what: str) -> None:
    public = ["--ca", "$$SECFL::ca:crt$$", "$$SECFL::sig:pub$$", "$$SECFL::ca:chain$$"]
    check_public_args(public, what)
    for secret in ("$$SECFL::token:hex$$", "--k=$$SECFL::key$$", "$$SECFL::sig:key$$"):
        with pytest.raises(LaunchError) as err:
            check_public_args([*public, secret], what)
        assert str(err.value).startswith(f"inject: {what} 5 puts secret "), str(err.value)
        assert str(err.value).endswith("use inject.env or inject.files in the policy")
    with pytest.raises(LaunchError, match=rf"^inject: {what} 1: malformed placeholder"):
        check_public_args(["$$SECFL::$$"], what)


def test_no_nul_names_the_place() -> None:
    assert no_nul("fine", "argument 1") == "fine"
    with pytest.raises(LaunchError, match=r"^inject: argument 2 would contain a NUL byte"):
        no_nul("a\0b", "argument 2")


def test_a_programs_environment_runs_none_of_the_hosts_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review of the first fix: the environment `secfl run` builds for its
    program (``_environment``, here called as the launcher calls it) kept ``HOME``,
    whose user site folder a Python outside a venv reads at start-up (a host's ``.pth``
    there read the workload's key), and bash's exported functions (``BASH_FUNC_x%%``
    replaced a command a measured script ran) and ``SHELLOPTS=xtrace`` (every command,
    secrets included, printed to the host's stderr). Both programs run for real."""
    import shutil
    import subprocess
    import sys
    from types import SimpleNamespace

    from secfl.launcher._launch import _environment

    home = tmp_path / "home"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = home / ".local" / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    (site / "zz.pth").write_text(
        "import os, sys; sys.stderr.write('PTH ' + open(os.environ['SECFL_IDENTITY'] "
        "+ '/key.pem').read())\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BASH_FUNC_true%%", '() { echo FUNC $(cat "$SECFL_IDENTITY/key.pem"); }')
    monkeypatch.setenv("SHELLOPTS", "xtrace")
    files = tmp_path / "files"
    files.mkdir(mode=0o700)
    enrolled = SimpleNamespace(certificate="CERT", key_pem=b"KEY-SECRET", ca_certificate="CA",
                               session_token="TOKEN", policy_digest="d" * 64)  # fmt: skip
    request = SimpleNamespace(policy="p", service="s", spm_url="https://spm")
    service = SimpleNamespace(inject=SimpleNamespace(env={}))
    env = _environment(service, enrolled, files, request, [])  # type: ignore[arg-type]
    python = Path(sys.base_prefix) / "bin" / version  # a Python outside any venv
    if not python.exists():
        pytest.skip(f"no Python outside a venv at {python}")
    ran = subprocess.run([str(python), "-c", "print('trained')"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert ran.stdout == "trained\n" and "SECRET" not in ran.stderr, ran.stderr
    bash = shutil.which("bash") or "/bin/bash"
    script = tmp_path / "train.sh"
    script.write_text('#!/bin/sh\ntrue\necho "trained $(cat "$SECFL_IDENTITY/key.pem" | wc -c)"\n')
    ran = subprocess.run([bash, str(script)], env=env, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert ran.stdout == "trained 10\n" and "SECRET" not in ran.stdout + ran.stderr, (
        ran.stdout + ran.stderr
    )
