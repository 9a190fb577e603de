"""Which file `secfl run` starts: the one it measured, whatever PATH the program gets."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from secfl.launcher._measurement import locate_program, run_measurement
from tests.launcher.world import World

PROGRAM = "#!{python}\nimport os\nprint('WHO', {who!r}, os.environ.get('API_TOKEN'), flush=True)\n"


def test_the_program_started_is_the_file_measured_even_under_the_policys_path(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: the launcher measured the program its own PATH names
    (the host's) but started it by name again, under the program's environment, whose
    PATH the policy may set (``inject.env``). A host that planted a file of that name in
    a folder on the policy's PATH, and put the genuine program first on its own PATH,
    had its own program started with the genuine one's measurement, and its secrets."""
    genuine, planted = tmp_path / "genuine", tmp_path / "planted"
    for folder, who in ((genuine, "measured"), (planted, "host")):
        folder.mkdir()
        prog = folder / "fl-workload"
        prog.write_text(PROGRAM.format(python=sys.executable, who=who))
        prog.chmod(0o755)
    argv = ["fl-workload"]
    program = genuine / "fl-workload"
    measurement = run_measurement(program.resolve(), argv, {}, found=str(program))
    # the board's PATH for its program: a site's tools folder, then the system's
    env = {"PATH": f"{planted}:/usr/bin:/bin", "API_TOKEN": "$$SECFL::tok:hex$$"}
    world.submit_program("pathrun", measurement, env=env)
    cmd = world.command("svc", argv, policy="pathrun")
    env = {**os.environ, "PATH": f"{genuine}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    who = [line.split() for line in done.stdout.splitlines() if line.startswith("WHO")]
    assert who and who[0][1] == "measured", done.stdout


#: A measured Python program; the host's venv's start-up hook writes MARK when it runs
#: in a workload (where SECFL_FILES is set), not in the launcher.
HOOK = "import os\nif 'SECFL_FILES' in os.environ:\n    open({mark!r}, 'w').write('ran')\n"


def test_a_bare_names_venv_on_the_hosts_path_is_not_the_measured_program(
    world: World, tmp_path: Path
) -> None:
    """Found by a review: for a program named by a bare name the launcher measured the
    file PATH led to, resolved, and started it under that bare name. A venv's ``python``
    is a link to the base interpreter, so every venv's measured alike; and Python looks
    the name it was started under up on PATH again to find its venv. A host that put a
    venv of its own first on PATH (a start-up hook in its packages) had that hook run in
    the workload, with the genuine measurement. Now where PATH found the program is
    measured too, and the program is started under that path."""
    genuine = Path(sys.executable).parent  # the venv the board measured `python` in
    mark = tmp_path / "hook-ran"
    planted = _venv_with_hook(tmp_path / "host-venv", mark)
    assert planted.resolve() == (genuine / "python").resolve()  # measured alike
    argv = ["python", "-c", "import sys; print('PREFIX', sys.prefix, flush=True)"]
    path = os.environ.get("PATH", "")
    _only_the_measured_runs(
        world, "venvrun", argv, measured={"env": {**os.environ, "PATH": f"{genuine}:{path}"}},
        host={"env": {**os.environ, "PATH": f"{planted.parent}:{path}"}},
        says=f"found at:     {planted}", prefix=sys.prefix, mark=mark,
    )  # fmt: skip


def _venv_with_hook(folder: Path, mark: Path | None) -> Path:
    """A venv at ``folder`` (its python a link to this one's base interpreter); with
    ``mark``, a start-up hook in its packages that writes it in a workload."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    if mark is not None:
        site = subprocess.run(
            [folder / "bin" / "python", "-c", "import site; print(site.getsitepackages()[0])"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        (Path(site) / "hosthook.py").write_text(HOOK.format(mark=str(mark)))
        (Path(site) / "hosthook.pth").write_text("import hosthook\n")
    return folder / "bin" / "python"


def _only_the_measured_runs(
    world: World,
    policy: str,
    argv: list[str],
    *,
    measured: dict[str, Any],
    host: dict[str, Any],
    says: str,
    prefix: Path | str,
    mark: Path,
) -> None:
    """``argv`` measured as its author would (``subprocess.run`` keywords ``measured``:
    the PATH or working folder there), then started by ``secfl run`` as the host sets it
    up (``host``): refused, the refusal saying ``says``, the host's hook never run; and
    as it was measured: it runs, in the venv at ``prefix``."""
    digest = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "measure", "--for-run", "--", *argv],
        check=True, capture_output=True, text=True, timeout=60, **measured,
    ).stdout.strip()  # fmt: skip
    world.submit_program(policy, digest)
    cmd = world.command("svc", argv, policy=policy)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **host)
    assert not mark.exists(), "the host's venv ran its code in the workload"
    assert done.returncode != 0 and "PREFIX" not in done.stdout, done.stdout
    assert says in done.stderr, done.stderr
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                          **measured)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"PREFIX {prefix}" in done.stdout, done.stdout
    assert not mark.exists()


def test_a_relative_paths_venv_in_the_hosts_working_folder_is_not_the_measured_program(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review of the bare-name fix above: a program named by a
    relative path (``venv/bin/python``) was measured as the file it leads to, resolved,
    and the command line as given, and started under that relative name in the working
    folder the host chose. Every venv's python is the same file, so a host that started
    the launcher in a folder of its own, holding a venv with a start-up hook where the
    path leads, had that hook run in the workload with the genuine measurement. Now the
    absolute path it names is measured too, and the program is started under it."""
    genuine, host, mark = tmp_path / "genuine", tmp_path / "host", tmp_path / "hook-ran"
    genuine.mkdir()
    host.mkdir()
    real = _venv_with_hook(genuine / "venv", None)
    planted = _venv_with_hook(host / "venv", mark)
    assert planted.resolve() == real.resolve()  # measured alike, file by file
    argv = ["venv/bin/python", "-c", "import sys; print('PREFIX', sys.prefix, flush=True)"]
    _only_the_measured_runs(
        world,
        "relrun",
        argv,
        measured={"cwd": genuine},
        host={"cwd": host},
        says=f"found at:     {planted}",
        prefix=genuine / "venv",
        mark=mark,
    )


def test_a_script_named_by_a_relative_path_measures_alike_in_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fix above measures where a relative path leads for a program that may look at
    the name it was started under; a ``#!`` script never sees it (the kernel starts the
    interpreter its first line names), so ``./train.py`` measured by the policy's author
    in one folder still matches a site's copy in another (README's example)."""
    digests = set()
    for folder in ("author", "site"):
        (tmp_path / folder).mkdir()
        script = tmp_path / folder / "train.py"
        script.write_text("#!/usr/bin/python3\nprint('trained')\n")
        script.chmod(0o755)
        monkeypatch.chdir(tmp_path / folder)
        program, found = locate_program("./train.py")
        assert found is None
        digests.add(run_measurement(program, ["./train.py", "--rounds", "10"], {}))
    assert len(digests) == 1


@pytest.mark.parametrize(
    ("line", "policy"),
    [
        ("#!/usr/bin/env python3", "envrun"),
        # env spelt otherwise, which the kernel starts alike (a review of the fix)
        ("#!/usr//bin/env python3", "envrun2"),
        ("#! /usr/bin/../bin/env\tpython3", "envrun3"),
    ],
)
def test_a_scripts_interpreter_env_finds_on_the_hosts_path_is_not_the_measured_one(
    world: World, tmp_path: Path, line: str, policy: str
) -> None:
    """Found by a hostile review of the bare-name fix: a script whose first line is
    ``#!/usr/bin/env python3`` had env look its interpreter up on the program's PATH,
    the host's, after the launcher measured the script. A host that put a venv of its
    own first on PATH had its start-up hook run in the workload, under the genuine
    measurement, whatever path named the script. Now where the launcher's PATH finds
    the interpreter is measured, and it is started by that path with the script."""
    genuine = Path(sys.executable).parent  # the venv the board measured the script in
    mark = tmp_path / "hook-ran"
    planted = _venv_with_hook(tmp_path / "host-venv", mark)
    script = tmp_path / "train.py"
    script.write_text(f"{line}\nimport sys\nprint('PREFIX', sys.prefix, flush=True)\n")
    script.chmod(0o755)
    argv = [str(script), "--rounds", "10"]
    path = os.environ.get("PATH", "")
    _only_the_measured_runs(
        world, policy, argv, measured={"env": {**os.environ, "PATH": f"{genuine}:{path}"}},
        host={"env": {**os.environ, "PATH": f"{planted.parent}:{path}"}},
        says=f"interpreter:  {planted.parent / 'python3'}", prefix=sys.prefix, mark=mark,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("#!/usr/bin/env -S python3 -u", "runs env with options or settings"),
        ("#!/usr/bin/env PYTHONPATH=/x python3", "runs env with options or settings"),
        ("#!venv/bin/python", "names its interpreter by a relative path"),
    ],
)
def test_a_scripts_interpreter_the_host_would_choose_otherwise_is_refused(
    tmp_path: Path, line: str, says: str
) -> None:
    """The forms of a ``#!`` line that leave the interpreter to the program's PATH or
    working folder in a way the launcher does not resolve: refused in one line."""
    from secfl.errors import MeasurementError

    script = tmp_path / "train.py"
    script.write_text(f"{line}\nprint('x')\n")
    with pytest.raises(MeasurementError, match=f"^measure: train.py's #! line {says}"):
        run_measurement(script, [str(script)], {})


def test_what_a_measured_program_starts_by_name_is_not_found_on_the_hosts_path(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review of the fixes above: they measured where the launcher's
    PATH finds the program, but the program got the host's PATH for what it starts by
    name itself (a measured shell script's ``python``; torch.compile's ``g++`` once
    ``CXX`` is dropped, ``nvcc`` once ``CUDA_HOME`` is). A host that put a venv of its own
    first on PATH had its start-up hook run in the workload under the genuine
    measurement. The program's PATH is its own folder (a script's: its interpreter's,
    not the job folder it lies in, which the host may write in) then the system's,
    unless the policy's ``inject.env`` sets one (which the host's PATH does not change)."""
    genuine = Path(sys.executable).parent  # where the board's `python` is
    mark = tmp_path / "hook-ran"
    planted = _venv_with_hook(tmp_path / "host-venv", mark)
    beside = tmp_path / "python"  # planted beside the measured script
    beside.write_text(f"#!/bin/sh\necho ran > {mark}\n")
    beside.chmod(0o755)
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\nexec python -c 'import sys; print(\"PREFIX\", sys.prefix)'\n")
    script.chmod(0o755)
    argv = [str(script)]
    digest = run_measurement(script, argv, {})
    host = {**os.environ, "PATH": f"{planted.parent}:{os.environ.get('PATH', '')}"}
    world.submit_program("shrun", digest)
    done = subprocess.run(world.command("svc", argv, policy="shrun"), env=host,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert not mark.exists(), "the host's venv ran its code in the workload"
    assert "PREFIX" not in done.stdout, done.stdout
    world.submit_program("shrun-path", digest, env={"PATH": f"{genuine}:/usr/bin:/bin"})
    done = subprocess.run(world.command("svc", argv, policy="shrun-path"), env=host,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"PREFIX {sys.prefix}" in done.stdout, done.stdout
    assert not mark.exists()


def _swap_after_reads(path: Path, content: str, reads: int) -> threading.Thread:
    """A thread that replaces ``path`` with ``content`` as soon as readers have closed it
    ``reads`` times (inotify), as a host watching its working folder would."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, bytes(path), 0x10) >= 0  # CLOSE_NOWRITE

    def swap() -> None:
        try:
            seen = 0
            while seen < reads:  # (each event is 16 bytes: no name, a watched file)
                seen += len(os.read(fd, 4096)) // 16
            fresh = path.with_name(".swap")
            fresh.write_text(content)
            fresh.chmod(0o755)
            os.replace(fresh, path)
        finally:
            os.close(fd)

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("reads", [1, 2, 3])
def test_a_script_replaced_once_measured_is_not_what_runs(
    world: World, tmp_path: Path, reads: int
) -> None:
    """Found by a hostile review: the launcher measured a ``#!`` script, then had the
    kernel start it by its path, and its interpreter read it by that path again. A
    host that replaced the script in a folder it may write in (README's ``./train.py``
    in the working folder) once it was read had its own script run under the genuine
    measurement, with its secrets. Now the launcher copies the script into its private
    folder, then measures and starts that copy. (The host replaces it after the
    launcher's first, second or third read: whichever was its last before the start.)"""
    script, stolen = tmp_path / "train.py", tmp_path / "stolen.txt"
    script.write_text(f"#!{sys.executable}\nprint('GENUINE', flush=True)\n")
    script.chmod(0o755)
    argv = [str(script)]
    policy = f"swaprun{reads}"
    world.submit_program(policy, world.plain(argv), env={"API_TOKEN": "$$SECFL::tok:hex$$"})
    host = (f"#!{sys.executable}\nimport os\n"
            f"open({str(stolen)!r}, 'w').write(os.environ.get('API_TOKEN', ''))\n")  # fmt: skip
    swapper = _swap_after_reads(script, host, reads)
    done = subprocess.run(world.command("svc", argv, policy=policy), capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert not stolen.exists(), "the host's script ran in the workload"
    while swapper.is_alive():  # (read fewer times than it waited for: let it end)
        script.read_bytes()
        swapper.join(timeout=1)
    assert done.returncode == 0, done.stderr
    assert "GENUINE" in done.stdout, done.stdout


def test_a_tee_that_measured_itself_starts_a_bare_name_found_on_the_launchers_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On hardware (nothing measured here) a bare name is started where the launcher's
    PATH finds it, as the program's PATH found it before the program got a PATH of its
    own; a name not there is refused in one line."""
    from secfl.errors import LaunchError
    from secfl.launcher._launch import _on_path

    (tmp_path / "bin").mkdir()
    prog = tmp_path / "bin" / "fl-workload"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert _on_path("fl-workload") == str(prog)
    with pytest.raises(LaunchError, match="^run: program 'no-such-workload' is not on PATH$"):
        _on_path("no-such-workload")
