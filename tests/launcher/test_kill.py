"""A killed launcher leaves nothing running and nothing readable; a crashing program
leaves no core and no traceback. Real `secfl run` processes against a real SPM,
killed with real signals."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secfl.launcher import _private as private
from tests.launcher.world import KILLED, SEGFAULT, World, python, wait_ready

#: Runs `secfl run` as root without CAP_SYS_ADMIN: no private mount namespace, so
#: the plaintext sits in /dev/shm and only the watchdog and the stale wipe protect it.
NO_NAMESPACE = ("setpriv", "--bounding-set", "-sys_admin", "--")
MODES = {"namespace": (), "no-namespace": NO_NAMESPACE}


def _can_mount() -> bool:
    done = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return done.returncode == 0


def _mode(name: str) -> tuple[str, ...]:
    if name == "namespace" and not _can_mount():
        pytest.skip("this user may not create a mount namespace (the fallback is tested)")
    if name == "no-namespace" and os.geteuid() == 0 and not _setpriv():
        pytest.skip("setpriv is not installed: cannot run the launcher without CAP_SYS_ADMIN")
    return MODES[name] if os.geteuid() == 0 else ()


def _setpriv() -> bool:
    return subprocess.run(["sh", "-c", "command -v setpriv"], capture_output=True).returncode == 0


def _dead(pid: int) -> bool:
    """Gone, or a zombie that runs nothing any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def _wait_until(check: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(check())  # type: ignore[operator]


def _holding(secret: str) -> list[Path]:
    """Every file where a launcher keeps plaintext that contains ``secret``."""
    found = []
    for base in private.bases():
        for folder in base.glob(f"{private.PREFIX}*"):
            for path in folder.rglob("*"):
                try:
                    if path.is_file() and secret.encode() in path.read_bytes():
                        found.append(path)
                except OSError:
                    continue
    return found


@pytest.mark.parametrize("mode", list(MODES))
def test_kill_9_of_the_launcher_leaves_nothing(world: World, mode: str) -> None:
    prefix = _mode(mode)
    proc = world.start("worker", world.argv("--die"), prefix=prefix)
    try:
        lines = wait_ready(proc)
        program, folder = int(lines["PID"]), Path(lines["FILES_DIR"])
        token = lines["FILE"]
        assert not _dead(program)
        if prefix:  # plain folder: the secrets and the volume are really there
            assert (folder / "secrets" / "token").read_text() == token
            assert (folder / "volumes" / "data" / "rows.csv").is_file()
        else:  # private tmpfs: from outside the launcher, the folder is empty
            assert folder.is_dir() and list(folder.iterdir()) == []
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert any(line.startswith("Max core file size") and line.split()[4:6] == ["0", "0"]
                   for line in limits.splitlines()), limits  # fmt: skip

        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert _wait_until(lambda: _dead(program)), "the program runs on without its launcher"
        assert _wait_until(lambda: not folder.exists()), f"left behind: {folder}"
        assert _holding(token) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


#: Runs the command after it with its stdin closed: a trampoline that closes it and execs,
#: not a ``preexec_fn``, which forks this test process (with gRPC loaded there by earlier
#: tests, such a fork aborted in CI: "epoll_wait error: Bad file descriptor").
STDIN_CLOSED = (
    sys.executable,
    "-c",
    "import os, sys; os.close(0); os.execvp(sys.argv[1], sys.argv[1:])",
)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_launcher_started_with_stdin_closed_keeps_its_watchdog(world: World, mode: str) -> None:
    """Found by a hostile review: a host that started `secfl run` with its stdin closed
    (``<&-``) had the watchdog's pipe made as descriptor 0, which the watchdog then
    replaced with /dev/null: it read an end at once, removed the fresh folder and
    ended. The launcher went on (the first volume it decrypted made the folder again,
    on /dev/shm itself, outside its private tmpfs, mode 0755), and a ``kill -9`` left
    the secrets and the volumes' plaintext there."""
    prefix = _mode(mode)
    proc = world.start("worker", world.argv("--die"), prefix=(*STDIN_CLOSED, *prefix))
    try:
        lines = wait_ready(proc)
        folder, token = Path(lines["FILES_DIR"]), lines["FILE"]
        if not prefix:  # private tmpfs: from outside the launcher, the folder is empty
            assert folder.is_dir() and list(folder.iterdir()) == []
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert _wait_until(lambda: not folder.exists()), f"left behind: {folder}"
        assert _holding(token) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_child_forked_by_a_module_workload_does_not_keep_the_folder(world: World) -> None:
    """Found by a hostile review: with ``--module`` the workload runs in the launcher's
    own process, and a child it forked (a pool's worker, a daemonised helper) held
    the watchdog's pipe open: after a ``kill -9`` of the launcher the plaintext stayed
    in /dev/shm as long as the child lived."""
    prefix = _mode("no-namespace")  # the folder holds plaintext in /dev/shm
    proc = world.start("mod", ["fork"], module="mytask", prefix=prefix)
    child = 0
    try:
        lines = wait_ready(proc)
        child, folder = int(lines["CHILD"]), Path(lines["FILES_DIR"])
        assert any(folder.rglob("*")), "the launcher's folder holds its files"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert _wait_until(lambda: not folder.exists()), f"left behind: {folder}"
        assert not _dead(child)  # the child lives on: the watchdog did not wait for it
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def _children(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task")
    return {int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()}


def test_kill_9_of_the_launchers_process_group_leaves_nothing(world: World) -> None:
    """A kill of the whole process group (``kill -9 -PGID``) does not take the watchdog
    along: it removes the plaintext in /dev/shm at once (it was in the group, and the
    folder stayed until some later launcher started)."""
    prefix = _mode("no-namespace")
    proc = world.start("worker", world.argv("--die"), prefix=prefix, new_group=True)
    try:
        lines = wait_ready(proc)
        folder, token = Path(lines["FILES_DIR"]), lines["FILE"]
        assert (folder / "secrets" / "token").read_text() == token
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert _wait_until(lambda: not folder.exists()), f"left behind: {folder}"
        assert _holding(token) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_dead_launchers_folder_is_wiped_by_the_next_one(world: World) -> None:
    prefix = _mode("no-namespace")  # the folder holds plaintext in /dev/shm
    dead = world.start("worker", world.argv("--die"), prefix=prefix, new_group=True)
    lines = wait_ready(dead)
    stale, token = Path(lines["FILES_DIR"]), lines["FILE"]
    # launcher, watchdog and program at once, as a kill of their control group does
    (watchdog,) = _children(dead.pid) - {int(lines["PID"])}
    os.kill(watchdog, signal.SIGKILL)
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait(timeout=10)
    assert _wait_until(lambda: _dead(int(lines["PID"])))
    assert (stale / "secrets" / "token").read_text() == token, "nothing stale to wipe"

    live = world.start("worker", world.argv("--die"), prefix=prefix)
    try:
        live_lines = wait_ready(live)
        assert not stale.exists(), "the next launcher did not wipe the stale folder"
        again = world.run("worker", world.argv())  # a third launcher starts and ends
        assert again.returncode == 7, again.stderr
        live_folder = Path(live_lines["FILES_DIR"])
        assert (live_folder / "secrets" / "token").is_file(), "a live launcher's folder was wiped"
        assert not _dead(int(live_lines["PID"]))
        live.send_signal(signal.SIGTERM)  # forwarded; the program dies of it
        assert live.wait(timeout=30) == 128 + signal.SIGTERM
        assert not live_folder.exists()
    finally:
        live.kill()
        live.wait(timeout=10)
    assert _holding(token) == []


def test_a_folder_whose_pid_was_reused_is_stale(tmp_path: Path) -> None:
    """The name records the launcher's start time: another process with its PID is not it."""
    ns = os.stat("/proc/self/ns/pid").st_ino
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    base = private.bases()[0]
    reused = base / f"{private.PREFIX}{ns}-{os.getppid()}-{start + 12345}-abc"
    mine = base / f"{private.PREFIX}{ns}-{os.getpid()}-{start}-abc"
    foreign = base / f"{private.PREFIX}notmine"
    for folder in (reused, mine, foreign):
        folder.mkdir()
        (folder / "secret").write_text("x")
    try:
        wiped = private.wipe_stale()
        assert reused in wiped and not reused.exists()
        assert mine.exists() and foreign.exists()
    finally:
        for folder in (reused, mine, foreign):
            subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_program_killed_by_sigkill_exits_137_without_traceback(world: World) -> None:
    done = world.run("crash", python(KILLED))
    assert done.returncode == 128 + signal.SIGKILL
    # (nothing but the note of the host's variables the program did not get, if any)
    said = [line for line in done.stderr.splitlines() if " does not get " not in line]
    assert "Traceback" not in done.stderr and said == [], done.stderr


#: Let the launcher dump a core if it tried (the machine's default may be 0). A shell
#: raises the limit and execs it, not a ``preexec_fn``: that would fork this test process,
#: whose gRPC (loaded by earlier tests) aborted the fork's child once in CI (its poller
#: hit a closed descriptor) before anything ran.
ALLOW_CORES = ("sh", "-c", 'ulimit -c "$(ulimit -H -c)" && exec "$@"', "sh")


def test_a_segfault_passes_through_as_139_and_dumps_no_core(world: World, tmp_path: Path) -> None:
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("core dumps are disabled for this user already: nothing to prove")
    proc = world.start("crash", python(SEGFAULT), prefix=ALLOW_CORES, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGSEGV, err
    assert "Traceback" not in err
    assert "CORE (0, 0)" in out, out  # the program could not dump (nor raise the limit)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("core")] == []


def test_the_launcher_is_not_dumpable() -> None:
    code = (
        "from secfl.launcher import _linux as linux, _process as process; process.harden(); "
        "import resource; print(linux.prctl(linux.PR_GET_DUMPABLE), "
        "resource.getrlimit(resource.RLIMIT_CORE))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.strip() == "0 (0, 0)"


_PROBE = """
import sys
from secfl.errors import LaunchError
from secfl.launcher._private import PrivateDir, file_system
try:
    folder = PrivateDir.create()
except LaunchError as exc:
    print("refused:", exc)
    sys.exit(0)
print("made:", folder.path, folder.mounted, file_system(folder.path))
folder.remove()
"""


def test_the_private_folder_is_never_on_a_disk(tmp_path: Path) -> None:
    """Found by a hostile review: with /dev/shm not writable and no tmpfs of its own
    (no CAP_SYS_ADMIN), the private folder (keys, secrets, every volume's plaintext) fell
    back to the temp folder on disk, where a kill of the launcher's whole cgroup left it.
    A real process in a mount namespace whose /dev/shm is read-only, run without
    CAP_SYS_ADMIN."""
    if os.geteuid() != 0 or not _can_mount() or not _setpriv():
        pytest.skip("needs root, unshare and setpriv to build a system without RAM folders")
    script = (
        "mount -t tmpfs -o ro,mode=1777 none /dev/shm && "
        f'exec setpriv --bounding-set -sys_admin -- {sys.executable} -c "$PROBE"'
    )
    env = {**os.environ, "PROBE": _PROBE, "TMPDIR": str(tmp_path)}
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    assert line.startswith("refused: files: the private folder "), line
    assert "not in RAM" in line and "make /dev/shm a writable tmpfs" in line
    assert list(tmp_path.iterdir()) == []  # nothing left on the disk either
    # The advice followed (the review: it could not be, while /dev/shm was writable):
    # TMPDIR on a tmpfs of its own, /dev/shm a writable folder on a disk.
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    ram.mkdir()
    disk.mkdir(mode=0o1777)
    script = (
        f"mount --bind {disk} /dev/shm && mount -t tmpfs none {ram} && "
        f'exec setpriv --bounding-set -sys_admin -- {sys.executable} -c "$PROBE"'
    )
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**env, "TMPDIR": str(ram)}, check=False)  # fmt: skip
    (line,) = done.stdout.strip().splitlines()
    assert line.startswith(f"made: {ram}/") and line.endswith(" False tmpfs"), line
    # The usual system: a folder in RAM.
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=60, env=env, check=False)  # fmt: skip
    assert done.stdout.startswith("made: ") and done.stdout.split()[-1] == "tmpfs", done.stdout


#: A program that unpacks a read-only tree into its TMPDIR (as ``cp -r`` or ``tar x`` of
#: a read-only folder, or a module cache, does), holding a secret, then ends or waits.
UNPACK = (
    "import os, sys, tempfile, time\n"
    "d = os.path.join(tempfile.gettempdir(), 'unpacked')\n"
    "os.makedirs(os.path.join(d, 'deeper'))\n"
    "for name in ('secret.txt', 'deeper/secret.txt'):\n"
    "    open(os.path.join(d, name), 'w').write(os.environ['TOKEN'])\n"
    "os.chmod(os.path.join(d, 'deeper'), 0o500)\n"
    "os.chmod(d, 0o555)\n"
    "print('FILES_DIR', os.environ['SECFL_FILES'])\n"
    "print('FILE', os.environ['TOKEN'])\n"
    "print('READY', flush=True)\n"
    "time.sleep(60) if sys.argv[1:] == ['wait'] else None\n"
)
#: An unprivileged launcher: root without the capabilities that ignore a folder's mode.
UNPRIVILEGED = ("setpriv", "--bounding-set",
                "-sys_admin,-dac_override,-dac_read_search,-fowner", "--")  # fmt: skip


@pytest.fixture(scope="module")
def unpacking(world: World) -> World:
    argvs = [python(UNPACK), python(UNPACK, "wait")]
    world._submit({
        "name": "unpack", "version": 1,
        "board": {"members": world.board.members(), "threshold": 2},
        "platforms": {"accept": ["simulated"], "simulation_root": world.root.decode()},
        "identity_ca": "ca",
        "services": [{
            "name": "unpacker", "role": "any",
            "measurements": {"simulated": [world.plain(a) for a in argvs]},
            "inject": {"env": {"TOKEN": "$$SECFL::token:hex$$"}},
        }],
        "secrets": [{"name": "ca", "kind": "x509-ca", "common_name": "unpack CA"},
                    {"name": "token", "kind": "random", "size": 16}],
    })  # fmt: skip
    return world


def _unprivileged() -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()
    if not _setpriv():
        pytest.skip("setpriv is not installed: cannot run the launcher without root's overrides")
    return UNPRIVILEGED


@pytest.mark.parametrize("end", ["exit", "kill -9"])
def test_a_folder_the_program_left_read_only_is_removed_with_its_plaintext(
    unpacking: World, end: str
) -> None:
    """Found by a hostile review: ``shutil.rmtree`` cannot empty a folder of mode 0555
    without root's override, and the launcher's removal, its watchdog and the next
    launcher's wipe all ignored the failure: a program that left a read-only folder in
    its TMPDIR left its plaintext in /dev/shm, after a normal exit and after a SIGKILL."""
    argv = python(UNPACK, *(["wait"] if end == "kill -9" else []))
    proc = unpacking.start("unpacker", argv, prefix=_unprivileged(), policy="unpack")
    try:
        lines = wait_ready(proc)
        folder, token = Path(lines["FILES_DIR"]), lines["FILE"]
        if end == "kill -9":
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        else:
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        assert _wait_until(lambda: not folder.exists()), f"left behind: {folder}"
        assert _holding(token) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_next_launcher_wipes_a_stale_read_only_folder(tmp_path: Path) -> None:
    """The same, for the wipe of a dead launcher's folder (it said nothing, and left it)."""
    ns = os.stat("/proc/self/ns/pid").st_ino
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    stale = private.bases()[0] / f"{private.PREFIX}{ns}-{os.getppid()}-{start + 54321}-ro"
    (stale / "tmp" / "unpacked").mkdir(parents=True)
    (stale / "tmp" / "unpacked" / "rows.csv").write_text("PLAINTEXT-ROWS\n")
    (stale / "tmp" / "unpacked").chmod(0o555)
    try:
        code = "from secfl.launcher import _private; print(len(_private.wipe_stale()))"
        wipe = [sys.executable, "-c", code]
        done = subprocess.run([*_unprivileged(), *wipe], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert not stale.exists(), f"left behind: {stale} ({done.stdout.strip()} wiped)"
    finally:
        subprocess.run(["rm", "-rf", str(stale)], check=False)
