"""Volumes: round trips, tags, streaming with bounded memory, the reader API, keys."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfl.errors import ShieldError
from secfl.shield import (
    Volume,
    _parallel,
    encrypt_directory,
    encrypt_files,
    generate_key,
    key_from_file,
    load_key,
    volume_tag,
    write_key_file,
)
from secfl.shield import _format as fmt
from tests.shield import KEY, read_tree, reseal_manifest, write_tree

CHUNK = 64


def tree(root: Path) -> Path:
    rng = random.Random(7)
    return write_tree(
        root,
        {
            "top.txt": b"top level\n",
            "empty": b"",
            "a/b/c/deep.bin": rng.randbytes(1000),
            "a/exact.bin": rng.randbytes(CHUNK),
            "a/exact_plus_one.bin": rng.randbytes(CHUNK + 1),
            "a/two_chunks.bin": rng.randbytes(2 * CHUNK),
            "a/empty_too": b"",
            "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
            "secret.key": (b"k" * 10, 0o600),
            "na\u00efve \u00e9t\u00e9.txt": b"unicode name",
        },
    )


def test_round_trip(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    tag = encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)
    with Volume.open(tmp_path / "v.vol", KEY, expected_tag=tag) as volume:
        assert volume.tag == tag and volume.version == 1 and volume.chunk_size == CHUNK
        expected = read_tree(src)
        assert [e.path for e in volume.files] == sorted(expected)
        for entry in volume.files:
            content, mode = expected[entry.path]
            assert entry.size == len(content) and entry.mode == mode
            assert entry.sha256 == hashlib.sha256(content).hexdigest()
            assert entry.chunks == max(1, -(-len(content) // CHUNK))
            assert volume.read_bytes(entry.path) == content
        assert volume.entry("a/exact.bin").chunks == 1
        assert volume.entry("a/exact_plus_one.bin").chunks == 2
        assert volume.entry("empty").chunks == 1
        assert volume.total_size == sum(len(c) for c, _ in expected.values())
        names = ["b", "empty_too", "exact.bin", "exact_plus_one.bin", "two_chunks.bin"]
        assert volume.listdir("a") == names
        assert volume.is_dir("a/b") and not volume.is_dir("top.txt")
        assert "top.txt" in volume and "nope" not in volume
        volume.verify()
        volume.extract(tmp_path / "out")
    assert read_tree(tmp_path / "out") == expected
    assert volume_tag(tmp_path / "v.vol", KEY.hex()) == tag


def test_files_in_memory_seal_as_the_same_tree(tmp_path: Path) -> None:
    """``encrypt_files``: the tree a folder of those files would give (the same tag, the
    modes aside: 0600), and no file of plaintext on the way."""
    src = tree(tmp_path / "src")
    contents = {path: content for path, (content, _) in read_tree(src).items()}
    for path in contents:
        os.chmod(src / path, 0o600)
    tag = encrypt_files(contents, tmp_path / "m.vol", KEY, chunk_size=CHUNK)
    assert tag == encrypt_directory(src, tmp_path / "d.vol", KEY, chunk_size=CHUNK)
    with Volume.open(tmp_path / "m.vol", KEY, expected_tag=tag) as volume:
        assert {e.path: volume.read_bytes(e.path) for e in volume.files} == contents
        assert {e.mode for e in volume.files} == {0o600}
    one = encrypt_files({"x": memoryview(bytearray(b"ab" * 100))}, tmp_path / "o.vol", KEY,
                        chunk_size=CHUNK)  # fmt: skip
    with Volume.open(tmp_path / "o.vol", KEY, expected_tag=one) as volume:
        assert volume.read_bytes("x") == b"ab" * 100


@pytest.mark.parametrize(
    "path", ["", "/abs", "a//b", "a/../b", ".", "a/", "x\udcff", "a\x00b", "n" * 256]
)
def test_files_in_memory_need_paths_below_the_top(tmp_path: Path, path: str) -> None:
    with pytest.raises(ShieldError, match="^shield: .* is not a path below the volume's top$"):
        encrypt_files({path: b"x"}, tmp_path / "v.vol", KEY)
    assert not (tmp_path / "v.vol").exists()


def test_files_in_memory_cannot_be_a_file_and_a_folder(tmp_path: Path) -> None:
    """Found by review: {"a", "a/b"} sealed a volume that no reader opens."""
    with pytest.raises(ShieldError, match="^shield: 'a/b' is below the file 'a'$"):
        encrypt_files({"a": b"x", "a/b": b"y"}, tmp_path / "v.vol", KEY)
    assert not (tmp_path / "v.vol").exists()


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    tag = encrypt_directory(tmp_path / "src", tmp_path / "v.vol", KEY)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        assert volume.files == [] and volume.tag == tag
        volume.verify()


def test_manifest_is_canonical_and_tag_is_its_digest(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    tag = encrypt_directory(src, tmp_path / "v.vol", KEY, version=5, chunk_size=CHUNK)
    seen: list[bytes] = []

    def capture(plaintext: bytes) -> bytes:
        seen.append(plaintext)
        return plaintext

    reseal_manifest(tmp_path / "v.vol", KEY, capture)
    doc = json.loads(seen[0])
    assert (
        seen[0]
        == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert hashlib.sha256(seen[0]).hexdigest() == tag
    assert doc["format"] == "secfl-shield/1" and doc["version"] == 5 and doc["chunk_size"] == CHUNK
    assert set(doc["files"][0]) == {"path", "mode", "size", "sha256", "chunks", "offset"}
    assert doc["files"][0]["offset"] == fmt.HEADER_SIZE


def test_tag_is_stable_and_changes_with_everything(tmp_path: Path) -> None:
    base = {"x/a.txt": b"alpha", "b.bin": bytes(300)}

    def tag_of(files: dict, version: int = 1, name: str = "t") -> tuple[str, str]:  # type: ignore[type-arg]
        src = write_tree(tmp_path / f"src-{name}", files)
        out = tmp_path / f"{name}.vol"
        tag = encrypt_directory(src, out, KEY, version=version, chunk_size=CHUNK)
        with Volume.open(out, KEY) as volume:
            return tag, volume.volume_id

    tag, vid = tag_of(base, name="one")
    tag2, vid2 = tag_of(base, name="two")
    assert tag == tag2 and vid != vid2  # same content: same tag, fresh salt
    variants = {
        "byte": {**base, "b.bin": bytes(299) + b"\x01"},
        "mode": {**base, "b.bin": (bytes(300), 0o600)},
        "name": {"x/A.txt": b"alpha", "b.bin": bytes(300)},
        "folder": {"y/a.txt": b"alpha", "b.bin": bytes(300)},
        "extra": {**base, "c": b""},
    }
    tags = {tag}
    for name, files in variants.items():
        tags.add(tag_of(files, name=name)[0])
    tags.add(tag_of(base, version=2, name="v2")[0])
    assert len(tags) == len(variants) + 2
    other_key = encrypt_directory(
        tmp_path / "src-one", tmp_path / "k.vol", bytes(32), chunk_size=CHUNK
    )
    assert other_key == tag  # the tag is about the content, not the key


def test_streaming_50mb_with_bounded_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(src / "big.bin", "wb") as f:
        for i in range(50):
            piece = i.to_bytes(4, "big") + block[4:]
            digest.update(piece)
            f.write(piece)
    tracemalloc.start()
    try:
        tag = encrypt_directory(src, tmp_path / "big.vol", KEY)
        encrypt_peak = tracemalloc.get_traced_memory()[1]
        buffer = bytearray(1 << 20)
        tracemalloc.reset_peak()
        seen = hashlib.sha256()
        with Volume.open(tmp_path / "big.vol", KEY, expected_tag=tag) as volume:
            with volume.open_file("big.bin") as f:
                while n := f.readinto(buffer):
                    seen.update(memoryview(buffer)[:n])
            read_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            volume.verify()
            verify_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen.digest() == digest.digest()
    assert encrypt_peak < 6 << 20, encrypt_peak
    # two chunks, plus the parallel reader's bounded read-ahead
    assert read_peak < (4 << 20) + _parallel.memory_limit(1 << 20), read_peak
    assert verify_peak < (4 << 20) + _parallel.memory_limit(1 << 20), verify_peak


def test_reader_api(tmp_path: Path) -> None:
    lines = b"".join(f"line {i}\n".encode() for i in range(100))
    src = write_tree(tmp_path / "src", {"text.txt": lines, "empty": b""})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        with volume.open_file("text.txt") as f:
            assert f.readable() and f.seekable() and not f.writable()
            assert f.readline() == b"line 0\n"
            assert list(f)[-1] == b"line 99\n"
            assert f.read() == b""
            f.seek(-8, io.SEEK_END)
            assert f.read() == b"line 99\n"
            f.seek(CHUNK - 3)
            assert f.read(6) == lines[CHUNK - 3 : CHUNK + 3]
            assert f.tell() == CHUNK + 3
            f.seek(10_000)
            assert f.read(5) == b""
        with volume.open_file("text.txt") as f, io.TextIOWrapper(f, encoding="ascii") as text:
            assert text.read().splitlines()[42] == "line 42"
        with volume.open_file("empty") as f:
            assert f.read() == b"" and f.read(10) == b""
        with volume.open_file("text.txt", check_digest=True) as f:
            assert f.raw.readall() == lines and f.raw.digest_checked
        with volume.open_file("text.txt", check_digest=False) as f:
            assert f.raw.readall() == lines and not f.raw.digest_checked
        with pytest.raises(ShieldError, match=r"^shield: volume '.*' has no file 'nope'$"):
            volume.open_file("nope")
        with pytest.raises(ShieldError, match="no folder"):
            volume.listdir("nope")
    with pytest.raises(ShieldError, match="is closed"):
        volume.open_file("text.txt")
    with pytest.raises(ShieldError, match="is closed"):
        volume.verify()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 700),
    ops=st.lists(st.tuples(st.integers(-50, 800), st.integers(-1, 200)), max_size=12),
)
def test_random_seeks_and_reads_match_the_plaintext(tmp_path: Path, size: int, ops: list) -> None:  # type: ignore[type-arg]
    data = random.Random(size).randbytes(size)
    src = write_tree(tmp_path / f"src{size}", {"f": data})
    out = tmp_path / f"v{size}.vol"
    if not out.exists():
        encrypt_directory(src, out, KEY, chunk_size=CHUNK)
    model = io.BytesIO(data)
    with Volume.open(out, KEY) as volume, volume.open_file("f") as f:
        for pos, n in ops:
            if pos >= 0:
                assert f.seek(pos) == model.seek(pos)
            assert f.read(n) == model.read(n)
            assert f.tell() == model.tell()


def test_volume_closed_under_an_open_reader(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"f": bytes(200_000)})  # more than the read buffer
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)
    volume = Volume.open(tmp_path / "v.vol", KEY)
    f = volume.open_file("f")
    assert f.read(10) == bytes(10)
    volume.close()
    with pytest.raises(ShieldError, match="is closed"):
        f.read()


def test_extract_refuses_to_overwrite_and_restores_modes(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)
    dest = write_tree(tmp_path / "dest", {"a/exact.bin": b"mine"})
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        with pytest.raises(ShieldError, match=r"refusing to overwrite '.*exact\.bin'"):
            volume.extract(dest)
        assert read_tree(dest) == {"a/exact.bin": (b"mine", 0o644)}  # nothing written
        volume.extract(tmp_path / "fresh")
    restored = read_tree(tmp_path / "fresh")
    assert restored["run.sh"][1] == 0o755 and restored["secret.key"][1] == 0o600


def test_modes_are_restored_where_a_nameless_file_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a review: where /proc cannot link a nameless file (a sandbox), it is copied
    under a name, and the copy had the creation mode (0600), not the file's own."""
    from secfl._internal import files

    def unlinkable(fd: int, name: str, parent: int) -> None:
        raise OSError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(files, "_link_fd", unlinkable)
    src = tree(tmp_path / "src")
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        volume.extract(tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_extract_writes_nothing_through_a_folder_swapped_for_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile review: decrypt checked each folder below the output folder by its
    path (not a link), then opened it by that path again to write the file in it. A
    local user who may write in the output folder swapped a folder for a link in
    between (renameat2 RENAME_EXCHANGE in a loop won within a few runs of `secfl
    shield decrypt`), and the plaintext was written where the link led: a folder of
    root's. Here the swap is made at that moment, every time: just before each file
    is written. The files go where the folders were opened, never through the link."""
    from secfl._internal import files

    encrypt_files({"d/e/a": b"one", "d/e/b": b"two"}, tmp_path / "v.vol", KEY)
    out, victim = tmp_path / "out", tmp_path / "victim"
    (victim / "e").mkdir(parents=True)
    real = files.atomic_open

    def swapped(path, **kwargs):  # type: ignore[no-untyped-def]
        if not (out / "d").is_symlink():  # the other user's swap, after the checks
            (out / "d").rename(out / "moved")
            (out / "d").symlink_to(victim, target_is_directory=True)
        return real(path, **kwargs)

    monkeypatch.setattr(files, "atomic_open", swapped)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        try:
            volume.extract(out)
        except ShieldError as exc:  # the second file: the folder is a link now
            assert "exists and is not a folder" in str(exc)
    assert list((victim / "e").iterdir()) == []
    assert read_tree(out / "moved") == {"e/a": (b"one", 0o600)}


def test_encrypt_refuses_links_and_special_files(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"ok.txt": b"ok"})
    (src / "link").symlink_to(src / "ok.txt")
    with pytest.raises(
        ShieldError,
        match=r"^shield: '.*link' is a symbolic link; a volume holds regular files only$",
    ):
        encrypt_directory(src, tmp_path / "v.vol", KEY)
    (src / "link").unlink()
    (src / "dirlink").symlink_to(src, target_is_directory=True)
    with pytest.raises(ShieldError, match="symbolic link"):
        encrypt_directory(src, tmp_path / "v.vol", KEY)
    (src / "dirlink").unlink()
    os.mkfifo(src / "fifo")
    with pytest.raises(ShieldError, match="is a FIFO"):
        encrypt_directory(src, tmp_path / "v.vol", KEY)
    assert not (tmp_path / "v.vol").exists()
    assert list(tmp_path.iterdir()) == [src]  # no temporary file left behind


def test_encrypt_refuses_bad_arguments(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"f": b"x"})
    cases = [
        (dict(src=src, out=src / "v.vol"), "must not be inside"),
        (dict(src=src / "f", out=tmp_path / "v"), "is not a directory"),
        (dict(src=tmp_path / "missing", out=tmp_path / "v"), "cannot read"),
        (dict(src=src, out=tmp_path / "no" / "dir" / "v"), "cannot write"),
        (dict(src=src, out=tmp_path / "v", version=-1), "version must be"),
        (dict(src=src, out=tmp_path / "v", version=True), "version must be"),
        (dict(src=src, out=tmp_path / "v", chunk_size=0), "chunk size must be"),
        (dict(src=src, out=tmp_path / "v", key=b"short"), "a key is"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("key", KEY)
        with pytest.raises(ShieldError, match=message):
            encrypt_directory(**kwargs)  # type: ignore[arg-type]


def test_encrypt_replaces_an_existing_volume_atomically(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"f": b"one"})
    out = tmp_path / "v.vol"
    first = encrypt_directory(src, out, KEY)
    (src / "f").write_bytes(b"two")
    second = encrypt_directory(src, out, KEY)
    assert first != second and volume_tag(out, KEY) == second
    assert out.stat().st_mode & 0o777 == 0o600


def test_open_refuses_what_is_not_a_volume(tmp_path: Path) -> None:
    with pytest.raises(ShieldError, match="cannot open volume"):
        Volume.open(tmp_path / "missing", KEY)
    with pytest.raises(ShieldError, match="is not a regular file"):
        Volume.open(tmp_path, KEY)
    (tmp_path / "text").write_bytes(b"x" * 200)
    with pytest.raises(ShieldError, match="not a secfl volume"):
        Volume.open(tmp_path / "text", KEY)
    with pytest.raises(ShieldError, match="expected tag 'xyz' is not 64 hex"):
        Volume.open(tmp_path / "text", KEY, expected_tag="xyz")


def test_keys(tmp_path: Path) -> None:
    raw = bytes(range(32))
    assert load_key(raw) == raw
    assert load_key(raw.hex()) == raw
    assert load_key(f"  {raw.hex().upper()}\n".encode()) == raw
    assert load_key(raw.hex()[:32] + "\n" + raw.hex()[32:]) == raw
    for bad, message in [
        (b"", "got 0 characters"),
        (b"\xff" * 31, "got 31 bytes"),
        ("ab" * 31, "got 62 characters"),
        ("zz" * 32, "not hexadecimal"),
        (12, "not int"),
    ]:
        with pytest.raises(ShieldError, match=f"^shield: .*{message}"):
            load_key(bad)  # type: ignore[arg-type]
    path = tmp_path / "k"
    key = write_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == 32
    assert path.read_text() == key.hex() + "\n" and key_from_file(path) == key
    with pytest.raises(ShieldError, match="already exists"):
        write_key_file(path)
    with pytest.raises(ShieldError, match="cannot read key file"):
        key_from_file(tmp_path / "missing")
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(ShieldError, match=r"^shield: key file '.*bad': a key is 64 hex"):
        key_from_file(tmp_path / "bad")
    assert generate_key() != generate_key()


FORGED = "x\n0644          10 " + "0" * 64 + " task.py\x1b[8m"


@pytest.mark.parametrize("name", [FORGED, "a\u202egnp.exe", "tab\there", "del\x7f", "c1\x85"])
def test_names_that_hide_text_are_refused_and_listed_escaped(tmp_path: Path, name: str) -> None:
    """Found by a hostile review: a key holder could name a file with a newline and
    escape sequences, and `secfl shield ls` printed a forged line (a task.py that is
    not there) and hid the real ones from another key holder reviewing the volume. New
    volumes refuse such names; `ls` shows every name escaped, whoever wrote it (a
    volume written before the rule, or by hand, still opens)."""
    with pytest.raises(ShieldError, match="holds a control or invisible character"):
        encrypt_files({name: b"payload", "z.txt": b"ok"}, tmp_path / "v.vol", KEY)
    encrypt_files({"task.py": b"payload", "z.txt": b"ok"}, tmp_path / "v.vol", KEY)

    def rename(plaintext: bytes) -> bytes:
        manifest = json.loads(plaintext)
        for entry in manifest["files"]:
            if entry["path"] == "task.py":
                entry["path"] = name
        return fmt.canonical(manifest)

    reseal_manifest(tmp_path / "v.vol", KEY, rename)
    (tmp_path / "k").write_text(KEY.hex())
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "shield", "ls", str(tmp_path / "v.vol"),
         "--key-file", str(tmp_path / "k")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[-1].endswith(" z.txt"), lines  # title and two files
    assert "\x1b" not in done.stdout
    assert all(c.isprintable() for c in done.stdout.replace("\n", "")), done.stdout


@pytest.mark.parametrize("name", [
    "Screenshot 2024-05-01 at 10.02.11\u202fAM.png",  # macOS: a narrow no-break space
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.txt",  # Persian, with a ZWNJ
    "family\U0001F468\u200d\U0001F469.txt", "no\u00a0break.csv", "\U0001FAE8.txt",
])  # fmt: skip
def test_ordinary_names_with_invisible_characters_are_kept(tmp_path: Path, name: str) -> None:
    """The review's review: ``str.isprintable`` refused these, and volumes holding them
    no longer opened."""
    encrypt_files({name: b"x"}, tmp_path / "v.vol", KEY)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        assert volume.read_bytes(name) == b"x"


def test_deep_paths_cost_their_size_not_their_size_times_their_depth(tmp_path: Path) -> None:
    """Found by a hostile review: opening a volume indexed every folder by its full path,
    each file's every prefix: 1,000 files 127 folders deep (4 KiB paths, a 4 MB volume)
    held 312 MB, and a manifest at its cap about 20 GB, at every site that opens it."""
    deep = "/".join(f"{d:02d}" + "x" * 29 for d in range(100))  # 100 folders, 3.2 KB
    contents = {f"{i:04d}/{deep}/f": b"" for i in range(300)}  # each its own folders
    contents["top.txt"] = b"x"
    encrypt_files(contents, tmp_path / "deep.vol", KEY)
    tracemalloc.start()
    try:
        with Volume.open(tmp_path / "deep.vol", KEY) as volume:
            peak = tracemalloc.get_traced_memory()[1]
            assert volume.listdir("") == [f"{i:04d}" for i in range(300)] + ["top.txt"]
            assert volume.listdir(f"0007/{deep}") == ["f"]
            assert volume.is_dir(f"0007/{deep}") and volume.is_dir("0299")
            assert not volume.is_dir("top.txt") and not volume.is_dir(f"0007/{deep}/f")
            with pytest.raises(ShieldError, match="has no folder"):
                volume.listdir("top.txt")
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, peak  # the manifest is about 1 MB; the old index took ~50 MB


def test_listdir_keeps_siblings_that_sort_between_a_name_and_its_folder() -> None:
    """Found by the review of a fix: after a file ``model``, the skip past its folder
    also skipped ``model-v2.bin`` and ``model.json`` (they sort before ``model/``):
    a code volume's resources went missing from ``iterdir``."""
    from secfl.shield._folders import Folders

    paths = ["rpkg/__init__.py", "rpkg/model", "rpkg/model-v2.bin", "rpkg/model.json",
             "rpkg/model.d/x", "rpkg/model.d/y/z", "a", "a-b/c", "a.b", "b/c"]  # fmt: skip
    rng = random.Random(7)
    for _ in range(300):  # and random trees against the definition
        paths += ["/".join(rng.choice(["a", "a-", "a.b", "m", "m!", "\u00e9"])
                           for _ in range(rng.randint(1, 4)))]  # fmt: skip
    files = {p for p in paths if not any(q.startswith(p + "/") for q in paths)}
    folders = Folders(files)
    implied = {"/".join(p.split("/")[:i]) for p in files for i in range(len(p.split("/")))}
    for folder in implied:
        prefix = f"{folder}/" if folder else ""
        want = sorted({p[len(prefix) :].split("/")[0] for p in files if p.startswith(prefix)})
        assert folders.entries(folder) == want, folder
        assert folders.is_dir(folder)
    named = Folders(["rpkg/model", "rpkg/model-v2.bin", "rpkg/model.json", "rpkg/model.d/x"])
    assert named.entries("rpkg") == ["model", "model-v2.bin", "model.d", "model.json"]


def test_encrypt_follows_no_folder_swapped_for_a_link_after_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile review: a local user who may write in the folder being shielded
    listed ``sub/secret`` as a file of its own, then swapped ``sub`` for a link to a
    folder only the owner may read; the file was opened by its path, through the
    link, and the owner's file outside the folder sealed into the volume. Every file
    is now opened below the folder, one name at a time, never through a link."""
    from secfl.shield import _encrypt

    src = write_tree(tmp_path / "src", {"a": b"mine", "sub/secret": b"planted"})
    private = write_tree(tmp_path / "private", {"secret": b"the owner's private file"})
    listed = _encrypt._walk

    def walk_then_swap(top: Path) -> list[tuple[str, Path]]:
        found = listed(top)
        (src / "sub" / "secret").unlink()
        (src / "sub").rmdir()
        (src / "sub").symlink_to(private, target_is_directory=True)
        return found

    monkeypatch.setattr(_encrypt, "_walk", walk_then_swap)
    with pytest.raises(ShieldError, match=r"'.*sub/secret' changed while .*encrypt"):
        encrypt_directory(src, tmp_path / "v.vol", KEY)
    assert not (tmp_path / "v.vol").exists()
