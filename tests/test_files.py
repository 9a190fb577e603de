"""The file primitives every component writes through (secfl._internal.files): what a
hostile host's disk can do to them, and what a crash may not undo."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from secfl._internal import files
from secfl.errors import ShieldError
from secfl.shield import encrypt_directory, encrypt_files, volume_tag

KEY = bytes(range(32))


@pytest.mark.parametrize("replace", [True, False])
def test_the_folder_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    """Found by a hostile review: the file was fsynced but not its folder, so after a
    power loss the new name (a volume, the final model, a key) could be missing though
    the write had returned. Only the checkpoints fsynced their folder, by hand."""
    real = os.fsync
    synced: list[tuple[str, bool]] = []

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    files.atomic_write(tmp_path / "out.bin", b"x" * 10, replace=replace)
    assert (tmp_path / "out.bin").read_bytes() == b"x" * 10
    assert synced[-1] == (str(tmp_path), True), synced
    synced.clear()
    files.atomic_write(tmp_path / "fast.bin", b"y", fsync=False)
    assert synced == []


def test_a_link_planted_at_a_volumes_name_is_replaced_not_followed(tmp_path: Path) -> None:
    """Found by a hostile review: volumes were written to the resolved path, so a link
    the host planted at the aggregator's `output/model.secfl` made it replace the link's
    target (any file the process may write); a dangling link was followed even where
    nothing may be replaced."""
    victim = tmp_path / "private" / "state.db"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    output = tmp_path / "output"
    output.mkdir()
    link = output / "model.secfl"
    link.symlink_to(victim)
    with pytest.raises(ShieldError, match="is a symbolic link; name the file itself"):
        encrypt_files({"model.safetensors": b"weights"}, link, KEY)
    assert victim.read_bytes() == b"precious" and link.is_symlink()
    # the review of the fix: an operator's own link was replaced silently; now refused,
    # and the file it names written as before
    tag = encrypt_files({"model.safetensors": b"weights"}, link.resolve(), KEY)
    assert volume_tag(link, KEY) == tag
    # without overwrite: a dangling link is refused and its target never created
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    planted = tmp_path / "elsewhere"
    dangling = tmp_path / "vol.secfl"
    dangling.symlink_to(planted)
    with pytest.raises(ShieldError, match="is a symbolic link"):
        encrypt_directory(src, dangling, KEY, overwrite=False)
    assert not planted.exists() and dangling.is_symlink()
    with pytest.raises(ShieldError, match="is a symbolic link"):
        encrypt_files({"a": b"a"}, dangling, KEY, overwrite=False)
    assert not planted.exists()


def test_a_write_into_a_folder_it_cannot_read_succeeds(tmp_path: Path) -> None:
    """The review of the fix: in a drop box (mode 1733) the folder's fsync failed after
    the rename, and a volume already in place was reported as not written."""
    code = (
        "import os, sys\n"
        "from secfl.shield import encrypt_files\n"
        "print(encrypt_files({'a': b'a'}, sys.argv[1], bytes(range(32))))\n"
    )
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to write as another user")
    top = Path(tempfile.mkdtemp(prefix="secfl-dropbox-"))  # pytest's folders are 0700
    try:
        top.chmod(0o755)
        box = top / "box"
        box.mkdir()
        box.chmod(0o1733)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        argv = [*as_nobody, sys.executable, "-c", code, str(box / "v.secfl")]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=env
        )
        assert done.returncode == 0, done.stderr[-500:]
        assert volume_tag(box / "v.secfl", KEY) == done.stdout.strip()
    finally:
        shutil.rmtree(top)


def test_a_write_a_swapped_link_leads_into_the_private_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host chose the metrics file's and the checkpoints' folders, checked at
    start-up; later it swaps one for a link into the workload's private folder
    (``$SECFL_FILES``, the keys). Before: the next round's metrics were appended to the
    key file there, and a checkpoint was written beside it. Now each write is refused
    where it really lands, and the private folder is left as it was."""
    monkeypatch.setattr(files, "_KEPT_OUT", [])
    private = tmp_path / "private"
    (private / "fl").mkdir(parents=True)
    key = private / "fl" / "metrics.jsonl"  # the host names its file after a key file
    key.write_bytes(b"the output key\n")
    host = tmp_path / "host" / "run"
    host.mkdir(parents=True)
    files.append(host / "metrics.jsonl", b"round 1\n")
    files.atomic_write(host / "ckpt", b"sealed")
    files.keep_out(private)
    files.append(host / "metrics.jsonl", b"round 2\n")  # still the host's own file
    shutil.rmtree(host)
    host.symlink_to(private / "fl")
    with pytest.raises(PermissionError, match="private folder"):
        files.append(host / "metrics.jsonl", b"round 3\n")
    with pytest.raises(PermissionError, match="private folder"):
        files.atomic_write(host / "ckpt", b"sealed")
    assert key.read_bytes() == b"the output key\n"
    assert sorted(p.name for p in (private / "fl").iterdir()) == ["metrics.jsonl"]
    # the folder given is resolved first: a link to it is the same folder
    monkeypatch.setattr(files, "_KEPT_OUT", [])
    (tmp_path / "alias").symlink_to(private)
    files.keep_out(tmp_path / "alias")
    with pytest.raises(PermissionError):
        files.append(host / "metrics.jsonl", b"round 3\n")


def test_a_hard_link_to_a_private_file_is_refused_and_a_pipe_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the third review: a hard link the host made at the metrics path, to a
    key file in the private folder, passed the check (the path it shows is the host's),
    and the metrics were appended to the key; and a metrics pipe (``/dev/stdout`` piped
    on) was refused as if it led into the private folder."""
    monkeypatch.setattr(files, "_KEPT_OUT", [])
    private = tmp_path / "private"
    private.mkdir()
    key = private / "key.pem"
    key.write_bytes(b"the key\n")
    host = tmp_path / "host"
    host.mkdir()
    os.link(key, host / "metrics.jsonl")
    files.keep_out(private)
    with pytest.raises(PermissionError, match="other names"):
        files.append(host / "metrics.jsonl", b"round 1\n")
    assert key.read_bytes() == b"the key\n"
    read, write = os.pipe()
    try:
        files.append(f"/proc/self/fd/{write}", b"round 1\n")
        assert os.read(read, 64) == b"round 1\n"
    finally:
        os.close(read)
        os.close(write)
    # found by a hostile review: a FIFO nobody reads, put at the metrics path between two
    # rounds, blocked the aggregator for ever after a round's counter had moved
    os.unlink(host / "metrics.jsonl")
    os.mkfifo(host / "metrics.jsonl")
    with pytest.raises(OSError, match="a FIFO nobody reads"):
        files.append(host / "metrics.jsonl", b"round 2\n")


def test_a_link_planted_at_an_appended_files_name_is_not_followed(tmp_path: Path) -> None:
    """Found by a review: ``append`` (the aggregator's metrics, one line a round) opened
    its path following a symbolic link, so a link planted at the name, to another file
    of the workload's user or to a name not yet made, had every round appended to, or
    created at, the link's target. Now the name is opened without following a link
    (as :func:`files.atomic_open` and :func:`files.write_stream` do), refused, and the
    target left as it was; this process's own stream names are still written to."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"kept\n")
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(victim)
    with pytest.raises(OSError) as refused:
        files.append(link, b"round 1\n")
    assert refused.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"kept\n"
    dangling = tmp_path / "later.jsonl"
    dangling.symlink_to(tmp_path / "made-through-the-link")
    with pytest.raises(OSError):
        files.append(dangling, b"round 1\n")
    assert not (tmp_path / "made-through-the-link").exists()
    read, write = os.pipe()
    try:
        files.append(f"/dev/fd/{write}", b"round 1\n")  # a link in /dev: own stream
        assert os.read(read, 64) == b"round 1\n"
    finally:
        os.close(read)
        os.close(write)
    files.append(tmp_path / "plain.jsonl", b"round 1\n")
    files.append(tmp_path / "plain.jsonl", b"round 2\n")
    assert (tmp_path / "plain.jsonl").read_bytes() == b"round 1\nround 2\n"


def test_a_folder_swapped_for_a_link_mid_write_moves_nothing_into_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the third review: the check looked at the new file where it was made,
    but the final rename went by path, so a host that swapped the folder for a link into
    the private folder between the two had the file renamed in there (over a key file
    of the same name: the ready file's name is the host's). Every step now happens in
    the folder held open from the start."""
    monkeypatch.setattr(files, "_KEPT_OUT", [])
    private = tmp_path / "private"
    private.mkdir()
    (private / "ready.json").write_bytes(b"the key\n")
    host = tmp_path / "host"
    (host / "run").mkdir(parents=True)
    files.keep_out(private)
    with files.atomic_open(host / "run" / "ready.json") as fh:
        fh.write(b'{"port": 1}')
        (host / "run").rename(host / "run.old")  # the host, mid-write
        (host / "run").symlink_to(private)
    assert (private / "ready.json").read_bytes() == b"the key\n"
    assert sorted(p.name for p in private.iterdir()) == ["ready.json"]
    assert (host / "run.old" / "ready.json").read_bytes() == b'{"port": 1}'


def test_no_temporary_file_is_left_when_the_folder_cannot_be_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: the temporary file was made before the folder was opened for
    its fsync, outside the clean-up, so a failure there (out of descriptors) left it
    behind, and its descriptor open, despite "on any error the temporary file is
    removed"."""

    def out_of_descriptors(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(files, "_open_folder", out_of_descriptors)
    with pytest.raises(OSError, match="Too many open files"):
        files.atomic_write(tmp_path / "ready.json", b"1")
    assert os.listdir(tmp_path) == []


KILLED_MID_WRITE = """
import sys
from secfl._internal import files
with files.atomic_open(sys.argv[1], mode=0o600, replace=sys.argv[2] == "replace") as fh:
    fh.write(b"secret key material " * 50000)
    fh.flush()
    print("written", flush=True)
    sys.stdin.read()  # until the parent kills this process
"""


@pytest.mark.parametrize("replace", ["replace", "keep"])
def test_a_process_killed_mid_write_leaves_nothing_behind(tmp_path: Path, replace: str) -> None:
    """Found by a SIGKILL hunt: the file was written under a temporary name, so a
    process killed while writing a key, or a plaintext, left that much of it in the
    folder (`.model.key.<hex>.tmp`), where nothing would ever remove it."""
    target = tmp_path / "model.key"
    if replace == "replace":
        target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_WRITE, str(target), replace],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n"
        child.kill()
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["model.key"] if replace == "replace" else []), left
    if replace == "replace":
        assert target.read_bytes() == b"old"


@pytest.mark.parametrize("nameless", [True, False])
@pytest.mark.parametrize("replace", [True, False])
def test_a_file_is_written_whole_with_or_without_a_nameless_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nameless: bool, replace: bool
) -> None:
    """Where the file system has no O_TMPFILE, a named temporary file does the same,
    and in either way an existing file is kept with ``replace=False``."""
    if not nameless:
        monkeypatch.setattr(files, "_TMPFILE", 0)
    elif not files._TMPFILE:
        pytest.skip("this system has no O_TMPFILE")
    files.write_private(tmp_path / "a.key", b"one", replace=replace)
    assert (tmp_path / "a.key").read_bytes() == b"one"
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600
    if replace:
        files.write_private(tmp_path / "a.key", b"two")
        assert (tmp_path / "a.key").read_bytes() == b"two"
    else:
        with pytest.raises(FileExistsError):
            files.write_private(tmp_path / "a.key", b"two", replace=False)
        assert (tmp_path / "a.key").read_bytes() == b"one"
    assert os.listdir(tmp_path) == ["a.key"]


@pytest.mark.parametrize("replace", [True, False])
def test_a_nameless_file_that_cannot_be_linked_is_copied_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    """The review of the nameless files: where /proc cannot link a descriptor (another
    pid namespace's /proc, a sandbox), the write failed outright; now it is copied into
    a named temporary file and renamed, as where there is no O_TMPFILE."""
    if not files._TMPFILE:
        pytest.skip("this system has no O_TMPFILE")

    def unlinkable(fd: int, name: str, parent: int) -> None:
        raise OSError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(files, "_link_fd", unlinkable)
    data = os.urandom(3 << 20)  # more than one piece of the copy
    files.write_private(tmp_path / "big.key", data, replace=replace)
    assert (tmp_path / "big.key").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "big.key").stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["big.key"]


def _remove_in_a_process(folder: Path, unprivileged: bool) -> subprocess.CompletedProcess[str]:
    """``files.remove_tree(folder)`` in a process of its own: as root without the
    capabilities that ignore a folder's mode when ``unprivileged`` (and setpriv is here)."""
    code = "import sys; from secfl._internal import files; print(files.remove_tree(sys.argv[1]))"
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    prefix = drop if unprivileged and os.geteuid() == 0 and shutil.which("setpriv") else []
    return subprocess.run([*prefix, sys.executable, "-c", code, str(folder)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_a_tree_nested_thousands_deep_is_removed(tmp_path: Path) -> None:
    """Found by the review of a fix: ``shutil.rmtree`` recurses once per level, and a
    program that nested 1,200 folders (``mkdirat``: no long path needed) made every
    later `secfl run` fail (its wipe of stale folders raised RecursionError)."""
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    with os.fdopen(os.open("plain.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as fh:
        fh.write("PLAINTEXT")
    os.chmod(fd, 0o500)  # the deepest one read-only too
    os.close(fd)
    try:
        done = _remove_in_a_process(top, unprivileged=True)
        assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-500:]
        assert not top.exists()
    finally:  # pytest's own clean-up recurses too: never leave it the deep tree
        subprocess.run(["rm", "-rf", str(top)], check=False)


def test_read_only_folders_are_emptied_and_a_link_out_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "ro").mkdir(parents=True)
    (outside / "ro" / "keep.txt").write_text("not ours to remove")
    outside.joinpath("ro").chmod(0o555)
    top = tmp_path / "private"
    for sub in ("a/b/c", "d"):
        (top / sub).mkdir(parents=True)
    (top / "a" / "b" / "c" / "secret.txt").write_text("PLAINTEXT")
    (top / "a" / "b" / "c" / "secret.txt").chmod(0)
    (top / "a" / "link").symlink_to(outside / "ro")
    for mode, sub in ((0o555, "a/b/c"), (0o000, "a/b"), (0o500, "d"), (0o555, "a")):
        (top / sub).chmod(mode)
    done = _remove_in_a_process(top, unprivileged=True)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-500:]
    assert not top.exists()
    assert (outside / "ro" / "keep.txt").read_text() == "not ours to remove"
    assert (outside / "ro").stat().st_mode & 0o777 == 0o555  # not given rights through the link


def test_a_name_the_program_takes_first_keeps_nothing_behind(tmp_path: Path) -> None:
    """Found by a review: folders were moved up under a name the program could guess
    (the remover's pid and a count); one planted there made the move fail, and the
    folder it was to move (plaintext and all) stayed."""
    top = tmp_path / "private"
    (top / "a0" / "b" / "p").mkdir(parents=True)
    (top / "a0" / "b" / "p" / "plain.bin").write_text("PLAINTEXT")
    for n in range(1, 40):
        (top / f".secfl-removed-{os.getpid()}-{n}" / "s").mkdir(parents=True)
    assert files.remove_tree(top) is True
    assert not top.exists()


REPLACE_SPECIAL = """
import sys
from secfl._internal import files
try:
    files.atomic_write(sys.argv[1], b"a model", mode=0o600)
except OSError as exc:
    print(exc.strerror)
"""


def test_no_device_fifo_or_socket_is_replaced(tmp_path: Path) -> None:
    """A hostile review: ``secfl simulate -o /dev/null`` (and ``policy init -o /dev/null
    --force``) run as root replaced the system's /dev/null with a regular file of mode
    0600: every writer of /dev/null failed from then on. Here in a real process, on a
    FIFO, a socket and (as root) a device node of /dev/null's numbers: each is refused
    and left as it was."""
    import socket

    fifo, sock, null = tmp_path / "fifo", tmp_path / "sock", tmp_path / "null"
    os.mkfifo(fifo)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock))
        made = [(fifo, stat.S_ISFIFO), (sock, stat.S_ISSOCK)]
        if os.geteuid() == 0:
            os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            made.append((null, stat.S_ISCHR))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for path, kind in made:
            done = subprocess.run(
                [sys.executable, "-c", REPLACE_SPECIAL, str(path)],
                capture_output=True, text=True, env=env, timeout=60, check=True,
            )  # fmt: skip
            assert "not a file to replace" in done.stdout, done.stdout
            assert kind(os.lstat(path).st_mode), path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p, _ in made)


REPLACE_STREAM = """
import os, sys
from secfl._internal import files
try:
    files.atomic_write(sys.argv[1], b"a model", mode=0o600)
except OSError as exc:
    print(exc.strerror)
print(os.path.islink(sys.argv[1]) if sys.argv[1].startswith("/dev/std") else "")
"""


@pytest.mark.parametrize("stream", ["/dev/stdout", "/dev/stderr", "/dev/fd/1", "/proc/self/fd/2"])
def test_a_stream_name_is_never_replaced(stream: str) -> None:
    """The review of the /dev/null fix: /dev/stdout is a link in /dev, and a link is
    replaced, so a whole-file output given it (``secfl simulate -o /dev/stdout``) run as
    root replaced the machine's /dev/stdout with a regular file holding the model. Here
    in a real process; as root, in a mount namespace of its own whose /dev is a tmpfs
    (the machine's is never touched): the name is refused and the link left as it was."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", REPLACE_STREAM, stream]
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare is not None:
        own_dev = (
            "mount -t tmpfs none /dev && ln -s /proc/self/fd/1 /dev/stdout && "
            'ln -s /proc/self/fd/2 /dev/stderr && exec "$@" 2>&1'
        )
        trial = [unshare, "-m", "--propagation", "private", "sh", "-c", own_dev, "sh", *argv]
        if subprocess.run([unshare, "-m", "--propagation", "private", "true"], check=False,
                          capture_output=True).returncode == 0:  # fmt: skip
            argv = trial
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "this process's stream, not a file to replace", done.stdout
    assert lines[-1] in ("True", ""), done.stdout  # the link is still a link
