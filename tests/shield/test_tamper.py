"""Every change to a volume is refused: wrong key, flipped bytes, truncation, swaps, rollback."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfl.errors import ShieldError
from secfl.shield import Volume, encrypt_directory
from secfl.shield import _format as fmt
from tests.shield import KEY, OTHER_KEY, forge_chunk, put_bytes, reseal_manifest, write_tree

CHUNK = 64
STRIDE = CHUNK + fmt.TAG_SIZE
ERROR = r"^shield: [^\n]+$"  # one line, starting with "shield:"
F_CHUNK_0 = "file 'f' chunk 0 failed authentication"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small volume: files of several chunks, an empty file, a one-chunk file."""
    root = tmp_path_factory.mktemp("tamper")
    rng = random.Random(1)
    src = write_tree(
        root / "src",
        {
            "a/one.bin": rng.randbytes(3 * CHUNK + 20),
            "a/two.bin": rng.randbytes(3 * CHUNK),
            "empty": b"",
            "z.txt": b"last file\n",
        },
    )
    encrypt_directory(src, root / "v.vol", KEY, version=3, chunk_size=CHUNK)
    return root / "v.vol"


def entries(volume: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (offset, chunks, end of its region), from the authentic volume."""
    with Volume.open(volume, KEY) as v:
        return {
            e.path: (e.offset, e.chunks, e.offset + fmt.sealed_length(e.size, CHUNK))
            for e in v.files
        }


def refused_on_open(data: bytes, tmp: Path, key: bytes = KEY) -> str:
    path = tmp / "t.vol"
    path.write_bytes(data)
    with pytest.raises(ShieldError, match=ERROR) as info:
        Volume.open(path, key).close()
    return str(info.value)


def test_wrong_key(sample: Path) -> None:
    with pytest.raises(ShieldError, match=r"^shield: volume '.*v\.vol': wrong key \(the key check"):
        Volume.open(sample, OTHER_KEY)


def test_every_single_byte_change_is_refused(sample: Path, tmp_path: Path) -> None:
    """Each byte of the file, changed: refused on open (header, manifest), else on
    reading exactly the affected file (naming it and its chunk), and by verify()."""
    original = sample.read_bytes()
    layout = entries(sample)
    with Volume.open(sample, KEY) as v:
        manifest_offset = fmt.HEADER_SIZE + sum(fmt.sealed_length(e.size, CHUNK) for e in v.files)
    path = tmp_path / "t.vol"
    rng = random.Random(2)
    for offset in range(len(original)):
        data = bytearray(original)
        data[offset] ^= rng.randrange(1, 256)
        path.write_bytes(data)
        if offset < fmt.HEADER_SIZE or offset >= manifest_offset:
            with pytest.raises(ShieldError, match=ERROR):
                Volume.open(path, KEY)
            continue
        owner = next(p for p, (start, _, end) in layout.items() if start <= offset < end)
        chunk = (offset - layout[owner][0]) // STRIDE
        with Volume.open(path, KEY) as volume:
            for name in layout:
                if name == owner:
                    with pytest.raises(
                        ShieldError, match=rf"file '{name}' chunk {chunk} failed authentication"
                    ):
                        volume.read_bytes(name)
                else:
                    volume.read_bytes(name)
            with pytest.raises(ShieldError, match=rf"file '{owner}' chunk {chunk}"):
                volume.verify()


def test_header_fields_are_each_refused(sample: Path, tmp_path: Path) -> None:
    original = sample.read_bytes()
    messages = {}
    for name, offset in [
        ("magic", 0),
        ("format", 9),
        ("flags", 11),
        ("chunk_size", 15),
        ("salt", 20),
        ("key_check", 50),
        ("manifest_offset", 87),
        ("manifest_length", 95),
    ]:
        data = bytearray(original)
        data[offset] ^= 0x01
        messages[name] = refused_on_open(bytes(data), tmp_path)
    assert "bad magic" in messages["magic"]
    assert "unsupported volume format" in messages["format"]
    assert "unknown flags" in messages["flags"]
    assert "manifest failed authentication" in messages["chunk_size"]
    assert "wrong key" in messages["salt"] and "wrong key" in messages["key_check"]
    assert (
        "truncated" in messages["manifest_offset"]
        or "unexpected bytes" in messages["manifest_offset"]
    )


def test_truncated_at_every_length(sample: Path, tmp_path: Path) -> None:
    original = sample.read_bytes()
    for length in range(len(original)):
        message = refused_on_open(original[:length], tmp_path)
        assert "truncated" in message, (length, message)


def test_appended_bytes_are_refused(sample: Path, tmp_path: Path) -> None:
    message = refused_on_open(sample.read_bytes() + b"\x00", tmp_path)
    assert "1 unexpected bytes after its manifest" in message


def swap(data: bytearray, a: int, b: int, n: int) -> None:
    data[a : a + n], data[b : b + n] = data[b : b + n], data[a : a + n]


def test_two_chunks_swapped_within_a_file(sample: Path, tmp_path: Path) -> None:
    offset, _, _ = entries(sample)["a/one.bin"]
    data = bytearray(sample.read_bytes())
    swap(data, offset, offset + STRIDE, STRIDE)
    path = tmp_path / "t.vol"
    path.write_bytes(data)
    with Volume.open(path, KEY) as volume:
        with pytest.raises(ShieldError, match=r"file 'a/one\.bin' chunk 0 failed authentication"):
            volume.read_bytes("a/one.bin")
        with volume.open_file("a/one.bin") as f:
            f.seek(STRIDE * 2)
            f.read(1)  # an untouched chunk still reads by random access
            f.seek(CHUNK)
            with pytest.raises(ShieldError, match="chunk 1 failed"):
                f.read(1)


def test_chunks_swapped_between_files(sample: Path, tmp_path: Path) -> None:
    layout = entries(sample)
    data = bytearray(sample.read_bytes())
    swap(data, layout["a/one.bin"][0], layout["a/two.bin"][0], STRIDE)
    path = tmp_path / "t.vol"
    path.write_bytes(data)
    with Volume.open(path, KEY) as volume:
        for name in ("a/one.bin", "a/two.bin"):
            with pytest.raises(ShieldError, match=rf"file '{name}' chunk 0 failed"):
                volume.read_bytes(name)
        volume.read_bytes("z.txt")


def test_whole_files_swapped(sample: Path, tmp_path: Path) -> None:
    """Two files' regions exchanged (same length when the sizes match)."""
    src = write_tree(tmp_path / "src", {"x": b"A" * 100, "y": b"B" * 100})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)
    layout = entries(tmp_path / "v.vol")
    data = bytearray((tmp_path / "v.vol").read_bytes())
    swap(data, layout["x"][0], layout["y"][0], layout["x"][2] - layout["x"][0])
    (tmp_path / "v.vol").write_bytes(data)
    with (
        Volume.open(tmp_path / "v.vol", KEY) as volume,
        pytest.raises(ShieldError, match="'x' chunk 0"),
    ):
        volume.verify()


def test_chunk_from_another_volume_with_the_same_key(sample: Path, tmp_path: Path) -> None:
    """Same content, same key, same position: another volume's salt still differs."""
    src = write_tree(tmp_path / "src", {"f": bytes(200)})
    encrypt_directory(src, tmp_path / "a.vol", KEY, chunk_size=CHUNK)
    encrypt_directory(src, tmp_path / "b.vol", KEY, chunk_size=CHUNK)
    a, b = bytearray((tmp_path / "a.vol").read_bytes()), (tmp_path / "b.vol").read_bytes()
    a[fmt.HEADER_SIZE : fmt.HEADER_SIZE + STRIDE] = b[fmt.HEADER_SIZE : fmt.HEADER_SIZE + STRIDE]
    (tmp_path / "a.vol").write_bytes(a)
    with (
        Volume.open(tmp_path / "a.vol", KEY) as volume,
        pytest.raises(ShieldError, match=F_CHUNK_0),
    ):
        volume.verify()


def test_dropped_chunk(sample: Path, tmp_path: Path) -> None:
    offset, chunks, _ = entries(sample)["a/one.bin"]
    original = sample.read_bytes()
    # Cut out chunk 1: the layout no longer matches the authenticated header.
    cut = original[: offset + STRIDE] + original[offset + 2 * STRIDE :]
    assert "truncated" in refused_on_open(cut, tmp_path)
    # Shift the later chunks over it, keeping the length (the last one repeats).
    data = bytearray(original)
    end = offset + (chunks - 1) * STRIDE
    data[offset + STRIDE : end] = original[offset + 2 * STRIDE : end + STRIDE][
        : end - offset - STRIDE
    ]
    path = tmp_path / "t.vol"
    path.write_bytes(data)
    with (
        Volume.open(path, KEY) as volume,
        pytest.raises(ShieldError, match=r"'a/one\.bin' chunk 1"),
    ):
        volume.read_bytes("a/one.bin")


def test_last_chunk_cannot_end_a_file_early(tmp_path: Path) -> None:
    """A file's last chunk is marked as such: an earlier chunk cannot pose as the end."""
    src = write_tree(tmp_path / "src", {"f": bytes(2 * CHUNK)})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)

    def shorten(plaintext: bytes) -> bytes:  # a forged manifest with one chunk fewer
        doc = json.loads(plaintext)
        doc["files"][0].update(size=CHUNK, chunks=1)
        return fmt.canonical(doc)

    reseal_manifest(tmp_path / "v.vol", KEY, shorten, body=lambda chunks: chunks[:STRIDE])
    with (
        Volume.open(tmp_path / "v.vol", KEY) as volume,
        pytest.raises(ShieldError, match=F_CHUNK_0),
    ):
        volume.read_bytes("f")


def test_a_wrong_digest_in_the_manifest_is_caught(tmp_path: Path) -> None:
    """Only a key holder could forge it; reading and verify() still catch it."""
    src = write_tree(tmp_path / "src", {"f": b"content " * 40})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)

    def wrong_digest(plaintext: bytes) -> bytes:
        doc = json.loads(plaintext)
        doc["files"][0]["sha256"] = "0" * 64
        return fmt.canonical(doc)

    reseal_manifest(tmp_path / "v.vol", KEY, wrong_digest)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        with pytest.raises(ShieldError, match="file 'f' does not match its SHA-256"):
            volume.read_bytes("f")
        with pytest.raises(ShieldError, match="does not match its SHA-256"):
            volume.verify()
        with volume.open_file("f", check_digest=False) as f:
            assert f.read() == b"content " * 40
        with pytest.raises(ShieldError, match="does not match its SHA-256"):
            volume.extract(tmp_path / "out")
    assert not (tmp_path / "out" / "f").exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: {**d, "extra": 1}, "unexpected fields"),
        (lambda d: {**d, "format": "secfl-shield/9"}, "unsupported manifest format"),
        (lambda d: {**d, "version": -1}, "invalid version"),
        (lambda d: {**d, "chunk_size": 65}, "disagree on the chunk size"),
        (
            lambda d: {
                **d,
                "files": [{**d["files"][0], "path": "b"}, {**d["files"][1], "path": "a"}],
            },
            "not sorted",
        ),
        (
            lambda d: {**d, "files": [d["files"][0], {**d["files"][1], "path": "a/c"}]},
            "below a file",
        ),
        (lambda d: {**d, "files": [{**d["files"][0], "chunks": 2}, d["files"][1]]}, "chunk count"),
        (lambda d: {**d, "files": [d["files"][0]]}, "disagree on the layout"),
        (lambda d: {**d, "files": [{**d["files"][0], "path": "../x"}]}, "invalid path"),
        (lambda d: {**d, "files": [{**d["files"][0], "mode": 0o10000}]}, "invalid mode"),
        (lambda d: {**d, "files": [{**d["files"][0], "sha256": "X"}]}, "invalid digest"),
        # numbers equal to the right ones but not integers (os.preadv raised TypeError)
        (lambda d: {**d, "chunk_size": float(d["chunk_size"])}, "invalid chunk size"),
        (
            lambda d: {**d, "files": [{**d["files"][0], "chunks": True}, d["files"][1]]},
            "invalid chunk count: a bool",
        ),
        (
            lambda d: {
                **d,
                "files": [
                    {**d["files"][0], "offset": float(d["files"][0]["offset"])},
                    d["files"][1],
                ],
            },
            "invalid offset: 136.0",
        ),
    ],
)
def test_forged_manifests_are_refused(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    src = write_tree(tmp_path / "src", {"a": b"1", "b": b"2"})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)
    reseal_manifest(tmp_path / "v.vol", KEY, lambda p: fmt.canonical(mutate(json.loads(p))))
    with pytest.raises(ShieldError, match=message):
        Volume.open(tmp_path / "v.vol", KEY)


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda p: p.replace(b'"version":1', b'"version":NaN'),  # canonical form raised
        lambda p: b'{"files":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError
    ],
    ids=["nan", "deep"],
)
def test_a_manifest_json_cannot_parse_is_refused(tmp_path: Path, rewrite) -> None:  # type: ignore[no-untyped-def]
    src = write_tree(tmp_path / "src", {"a": b"1"})
    encrypt_directory(src, tmp_path / "v.vol", KEY, version=1)
    reseal_manifest(tmp_path / "v.vol", KEY, rewrite)
    with pytest.raises(ShieldError, match="manifest is not valid JSON"):
        Volume.open(tmp_path / "v.vol", KEY)


def test_a_manifest_nested_near_the_stack_limit_is_one_line(tmp_path: Path) -> None:
    """Nesting that json.loads takes but json.dumps (a frame or two deeper) does not:
    refused as a ShieldError at every depth around the limit."""
    src = write_tree(tmp_path / "src", {"a": b"1"})
    encrypt_directory(src, tmp_path / "v.vol", KEY, version=1)
    original = (tmp_path / "v.vol").read_bytes()
    limit = sys.getrecursionlimit()
    for depth in range(limit - 100, limit + 10, 2):
        (tmp_path / "v.vol").write_bytes(original)
        nested = b"[" * depth + b"]" * depth
        value = b'"version":' + nested

        reseal_manifest(tmp_path / "v.vol", KEY, lambda p, v=value: p.replace(b'"version":1', v))
        with pytest.raises(ShieldError):
            Volume.open(tmp_path / "v.vol", KEY)


def test_a_huge_manifest_in_a_sparse_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A header that claims a manifest past the limit (in a sparse file: a few KiB on
    disk) is refused before anything of that size is read or allocated: the limit
    once let it cost the opener twice 1 GiB before authentication failed."""
    src = write_tree(tmp_path / "src", {"a": b"1"})
    encrypt_directory(src, tmp_path / "v.vol", KEY)
    raw = (tmp_path / "v.vol").read_bytes()
    header = fmt.unpack_header(raw[: fmt.HEADER_SIZE], "test")
    length = 300 << 20  # above the limit of 256 MiB, below the old one of 1 GiB
    huge = dataclasses.replace(header, manifest_length=length).pack()
    with open(tmp_path / "v.vol", "r+b") as f:
        f.write(huge)
        f.truncate(header.manifest_offset + length)
    with pytest.raises(ShieldError, match="invalid manifest location"):
        Volume.open(tmp_path / "v.vol", KEY)


def test_non_canonical_manifest_is_refused(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1"})
    encrypt_directory(src, tmp_path / "v.vol", KEY)
    reseal_manifest(tmp_path / "v.vol", KEY, lambda p: json.dumps(json.loads(p)).encode())
    with pytest.raises(ShieldError, match="not in canonical form"):
        Volume.open(tmp_path / "v.vol", KEY)


def test_old_version_refused_by_the_new_tag(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"data.csv": b"x,y\n1,2\n"})
    old_tag = encrypt_directory(src, tmp_path / "v1.vol", KEY, version=1)
    new_tag = encrypt_directory(src, tmp_path / "v2.vol", KEY, version=2)
    assert old_tag != new_tag
    with pytest.raises(
        ShieldError,
        match=rf"^shield: volume '.*v1\.vol': volume tag {old_tag} is not the expected {new_tag}$",
    ):
        Volume.open(tmp_path / "v1.vol", KEY, expected_tag=new_tag)
    with Volume.open(tmp_path / "v2.vol", KEY, expected_tag=new_tag.upper()) as v:
        assert v.version == 2
    with pytest.raises(ShieldError, match="volume version 1 is older than the minimum 2"):
        Volume.open(tmp_path / "v1.vol", KEY, min_version=2)


# -- fuzzing: whatever the bytes, only ShieldError --------------------------------

_FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _open_and_verify(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.vol"
        path.write_bytes(data)
        try:
            with Volume.open(path, KEY) as volume:
                volume.verify()
        except ShieldError as exc:
            assert str(exc).startswith("shield: ") and "\n" not in str(exc)
            raise


@_FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    with pytest.raises(ShieldError):
        _open_and_verify(data)


@_FUZZ
@given(
    chunk=st.integers(1, 1 << 26),
    m_off=st.integers(0, (1 << 64) - 1),
    m_len=st.integers(0, (1 << 64) - 1),
    tail=st.binary(max_size=300),
)
def test_fuzz_plausible_headers(chunk: int, m_off: int, m_len: int, tail: bytes) -> None:
    header = fmt.Header(chunk, bytes(32), bytes(32), m_off, m_len).pack()
    with pytest.raises(ShieldError):
        _open_and_verify(header + tail)


@_FUZZ
@given(data=st.data())
def test_fuzz_mutated_volumes(sample: Path, data: st.DataObject) -> None:
    original = sample.read_bytes()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "overwrite"]))
        at = data.draw(st.integers(0, len(mutated)))
        if kind == "flip" and at < len(mutated):
            mutated[at] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=40))
        elif kind == "delete":
            del mutated[at : at + data.draw(st.integers(1, 40))]
        else:
            piece = data.draw(st.binary(min_size=1, max_size=40))
            mutated[at : at + len(piece)] = piece
    if bytes(mutated) == original:
        _open_and_verify(bytes(mutated))
        return
    with pytest.raises(ShieldError):
        _open_and_verify(bytes(mutated))


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda p: p.replace(b'"version":1', b'"version":1e400'),  # a float past any number
        lambda p: p.replace(b'"path":"', b'"path":"\\ud800', 1),  # a lone surrogate
    ],
    ids=["infinity", "surrogate"],
)
def test_values_with_no_canonical_form_are_one_line(tmp_path: Path, rewrite) -> None:  # type: ignore[no-untyped-def]
    """Found by a review: a key holder's manifest with such a value was a traceback
    (ValueError, UnicodeEncodeError) in `secfl shield ls` and `secfl run`."""
    src = write_tree(tmp_path / "src", {"a": b"1"})
    encrypt_directory(src, tmp_path / "v.vol", KEY, version=1)
    reseal_manifest(tmp_path / "v.vol", KEY, rewrite)
    with pytest.raises(ShieldError, match="manifest is not in canonical form"):
        Volume.open(tmp_path / "v.vol", KEY)


def test_a_deep_path_is_refused_before_it_costs_anything(tmp_path: Path) -> None:
    """Found by a review: every prefix of every path was built and kept, so a volume of
    60 KB holding one path 30 000 folders deep took 10 s and 1 GiB to open."""
    import time

    from secfl.shield import encrypt_files

    with pytest.raises(ShieldError, match="deeper than 128 folders"):
        encrypt_files({"a/" * 200 + "f": b"x"}, tmp_path / "w.vol", KEY)
    encrypt_files({"a/" * 127 + "f": b"x"}, tmp_path / "ok.vol", KEY)  # the deepest allowed
    with Volume.open(tmp_path / "ok.vol", KEY) as volume:
        assert volume.read_bytes("a/" * 127 + "f") == b"x"
    # a key holder's manifest with one 30 000 folders deep: refused at once
    encrypt_files({"a": b"x"}, tmp_path / "v.vol", KEY)
    deep = b'"path":"' + b"a/" * 30000 + b"a"
    reseal_manifest(tmp_path / "v.vol", KEY, lambda p: p.replace(b'"path":"a', deep))
    started = time.monotonic()
    with pytest.raises(ShieldError, match="deeper than 128 folders"):
        Volume.open(tmp_path / "v.vol", KEY)
    assert time.monotonic() - started < 5  # (the old code: 10 s; this is not a benchmark)


def test_a_path_below_a_file_is_refused_whatever_sorts_between(tmp_path: Path) -> None:
    """The prefix-free check now runs in one pass over the paths ordered with "/"
    lowest: "a" and "a/b" are refused with "a-b" (which sorts between them) present."""
    from secfl.shield import encrypt_files

    encrypt_files({"a": b"1", "a-b": b"2", "c/d": b"3"}, tmp_path / "v.vol", KEY)
    reseal_manifest(tmp_path / "v.vol", KEY, lambda p: p.replace(b'"path":"c/d"', b'"path":"a/d"'))
    with pytest.raises(ShieldError, match="'a/d' is below a file"):
        Volume.open(tmp_path / "v.vol", KEY)


def test_a_fifo_given_as_a_volume_or_key_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Found by a review: a FIFO planted where a volume or key file is named hung
    `secfl run` for ever (after the SPM released the keys) and `secfl shield verify`."""
    import os

    from secfl.shield import key_from_file, peek_tag

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ShieldError, match="is not a regular file"):
        Volume.open(fifo, KEY)
    with pytest.raises(ShieldError, match="is not a regular file"):
        peek_tag(fifo)
    with pytest.raises(ShieldError, match="^shield: cannot read key file"):
        key_from_file(fifo)


def test_a_folder_with_a_name_that_hides_text_is_refused_as_files_are(tmp_path: Path) -> None:
    """Found by a review: `secfl shield encrypt` of a folder kept a file named with
    terminal escapes and a line break, which `encrypt_files` refuses in a new volume."""
    from secfl.shield import encrypt_files

    name = "task.py\x1b[8m\nfake line"
    src = write_tree(tmp_path / "src", {name: b"1"})
    for encrypt in (
        lambda: encrypt_directory(src, tmp_path / "v.vol", KEY),
        lambda: encrypt_files({name: b"1"}, tmp_path / "w.vol", KEY),
    ):
        with pytest.raises(ShieldError, match="holds a control or invisible character"):
            encrypt()
    assert not (tmp_path / "v.vol").exists()


def test_a_key_holders_other_content_under_the_same_tag_is_refused_when_streamed(
    tmp_path: Path,
) -> None:
    """Found by a review: whoever holds a volume's key can encrypt other bytes under
    the same header and manifest, so the volume keeps the tag a policy pins; streaming
    (`open_file`, what a `--module` workload reads through `secfl.launcher.volumes`)
    did not check the file's SHA-256, which alone tells the two apart."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    src = write_tree(tmp_path / "src", {"rows.csv": b"honest,data\n" * 1000})
    encrypt_directory(src, tmp_path / "v.vol", KEY, version=1)
    raw = bytearray((tmp_path / "v.vol").read_bytes())
    header = fmt.unpack_header(bytes(raw[: fmt.HEADER_SIZE]), "test")
    keys = fmt.derive_keys(KEY, header.salt)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        tag, (entry,) = volume.tag, volume.files
    for j in range(entry.chunks):
        n = min(header.chunk_size, entry.size - j * header.chunk_size)
        offset = entry.offset + j * (header.chunk_size + fmt.TAG_SIZE)
        aad = fmt.chunk_aad(header.salt, 0, entry.path, j, j == entry.chunks - 1)
        forged = AESGCM(keys.chunk).encrypt(fmt.chunk_nonce(0, j), b"E" * n, aad)
        raw[offset : offset + n + fmt.TAG_SIZE] = forged
    (tmp_path / "forged.vol").write_bytes(bytes(raw))
    with Volume.open(tmp_path / "forged.vol", KEY, expected_tag=tag) as forged_volume:
        with pytest.raises(ShieldError, match="does not match its SHA-256 in the manifest"):
            forged_volume.open_file("rows.csv").read()
        stream = forged_volume.open_file("rows.csv")
        with pytest.raises(ShieldError, match="does not match its SHA-256"):
            while stream.read(4096):
                pass


@pytest.mark.parametrize("first", ["whole", "part"])
def test_a_chunk_the_host_swaps_before_a_seek_back_is_refused(tmp_path: Path, first: str) -> None:
    """Found by a hostile review: a chunk read again after a seek back was read from the
    disk again and checked only by GCM, never against what the digest had taken in: the
    host, holding a key holder's other ciphertext for it, swapped it between the two
    reads, and the reader returned it under the pinned tag, the digest "checked"."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    honest = b"honest,data\n" * 15_000  # 44 chunks of 4 KiB: more than a read buffers
    src = write_tree(tmp_path / "src", {"rows.csv": honest})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=4096)
    raw = (tmp_path / "v.vol").read_bytes()
    header = fmt.unpack_header(raw[: fmt.HEADER_SIZE], "test")
    keys = fmt.derive_keys(KEY, header.salt)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        tag, (entry,) = volume.tag, volume.files
    aad = fmt.chunk_aad(header.salt, 0, entry.path, 0, False)
    forged = AESGCM(keys.chunk).encrypt(fmt.chunk_nonce(0, 0), b"EVIL".ljust(4096, b"!"), aad)
    with Volume.open(tmp_path / "v.vol", KEY, expected_tag=tag) as volume:
        stream = volume.open_file("rows.csv")
        got = stream.read() if first == "whole" else stream.read(100_000)
        assert got == honest[: len(got)]
        with open(tmp_path / "v.vol", "r+b") as disk:  # the host, between the two reads
            disk.seek(entry.offset)
            disk.write(forged)
        stream.seek(0)
        with pytest.raises(ShieldError, match="changed since it was first read"):
            stream.read()


def test_a_volume_opened_with_hidden_names_refuses_without_naming_a_file(
    sample: Path, tmp_path: Path
) -> None:
    """What `secfl run` opens (``reveal_names=False``): its refusals reach the host, so
    they name a file by its place in the manifest, never by the sealed path (a review
    read every name of a volume from the refusals to one flipped byte at a time)."""
    where = entries(sample)
    data = bytearray(sample.read_bytes())
    data[where["a/two.bin"][0] + 5] ^= 1  # chunk 0 of the manifest's second file
    bad = tmp_path / "bad.vol"
    bad.write_bytes(bytes(data))
    refusals = []
    with Volume.open(bad, KEY, reveal_names=False) as v:
        for attempt in (
            lambda: v.read_bytes("a/two.bin"),
            v.verify,
            lambda: v.extract(tmp_path / "out"),
            lambda: v.entry("a/secret-name.csv"),
            lambda: v.listdir("secret-folder"),
        ):
            with pytest.raises(ShieldError, match=ERROR) as info:
                attempt()
            refusals.append(str(info.value))
    assert [r.split(": ", 2)[-1].split(" (")[0] for r in refusals[:3]] == [
        "file #2 of 4",
        "file #2 of 4",
        "file #2 of 4",
    ]
    assert all("chunk 0 failed authentication" in r for r in refusals[:3])
    assert refusals[3].endswith("has no file of the name asked for")
    assert refusals[4].endswith("has no folder of the name asked for")
    assert not any(n in r for r in refusals for n in ("one.bin", "two.bin", "secret", "'a/"))
    # the owner's own tools still say which file
    with Volume.open(bad, KEY) as v, pytest.raises(ShieldError, match="file 'a/two.bin'"):
        v.verify()


def test_a_manifest_length_at_the_cap_costs_one_buffer_not_two(tmp_path: Path) -> None:
    """Found by a hostile review: the host alone (no key) set the header's manifest
    length to the cap in a sparse file of a few KiB, and every opener read 256 MiB and
    decrypted it into another 256 MiB before authentication failed."""
    import dataclasses
    import tracemalloc

    from secfl.shield import encrypt_files

    encrypt_files({"a": b"1"}, tmp_path / "v.vol", KEY)
    header = fmt.unpack_header((tmp_path / "v.vol").read_bytes()[: fmt.HEADER_SIZE], "test")
    length = fmt.MAX_MANIFEST_SIZE
    with open(tmp_path / "v.vol", "r+b") as f:
        f.write(dataclasses.replace(header, manifest_length=length).pack())
        f.truncate(header.manifest_offset + length)
    tracemalloc.start()
    try:
        with pytest.raises(ShieldError, match="manifest failed authentication"):
            Volume.open(tmp_path / "v.vol", KEY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * length, peak  # was two buffers of the manifest's length


def test_a_file_refused_by_its_digest_stays_refused(tmp_path: Path) -> None:
    """Found by the review of a fix: a caller that caught "does not match its SHA-256"
    and read again from the start got the content, and ``digest_checked`` said True."""
    import json as jsonlib

    from secfl.shield import encrypt_files

    honest = b"honest,data\n" * 15_000
    encrypt_files({"rows.csv": honest}, tmp_path / "v.vol", KEY, chunk_size=4096)

    def wrong_digest(plaintext: bytes) -> bytes:
        doc = jsonlib.loads(plaintext)
        doc["files"][0]["sha256"] = "00" * 32
        return fmt.canonical(doc)

    reseal_manifest(tmp_path / "v.vol", KEY, wrong_digest)  # a key holder's doing
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        stream = volume.open_file("rows.csv")
        for _ in range(2):
            with pytest.raises(ShieldError, match="does not match its SHA-256"):
                stream.read()
            stream.seek(0)
        assert not stream.raw.digest_checked


def test_a_chunk_peeked_at_first_is_still_digest_checked_in_order(tmp_path: Path) -> None:
    """Found by the review of a fix: a chunk decrypted at random (a peek) was served
    from the one-chunk cache when the in-order pass reached it, and never reached the
    digest; every chunk after it went unchecked, the key holder's content returned."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    honest = b"honest,data\n" * 15_000
    src = write_tree(tmp_path / "src", {"rows.csv": honest})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=4096)
    raw = bytearray((tmp_path / "v.vol").read_bytes())
    header = fmt.unpack_header(bytes(raw[: fmt.HEADER_SIZE]), "test")
    keys = fmt.derive_keys(KEY, header.salt)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        (entry,) = volume.files
    k = 16  # the key holder's other content for chunk 16, served by the host
    aad = fmt.chunk_aad(header.salt, 0, entry.path, k, False)
    forged = AESGCM(keys.chunk).encrypt(fmt.chunk_nonce(0, k), b"EVIL".ljust(4096, b"!"), aad)
    at = entry.offset + k * (4096 + fmt.TAG_SIZE)
    raw[at : at + len(forged)] = forged
    (tmp_path / "v.vol").write_bytes(bytes(raw))
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        buffered = volume.open_file("rows.csv")  # (its raw file lives as long as it does)
        raw_file = buffered.raw
        raw_file.seek(k * 4096)
        assert raw_file.read(20).startswith(b"EVIL")  # random access: not digest-checked
        raw_file.seek(0)
        with pytest.raises(ShieldError, match="does not match its SHA-256"):
            while raw_file.read(65536):
                pass
        assert not raw_file.digest_checked


def test_past_the_kept_states_a_seek_back_is_checked_at_once_and_refused_past_the_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review of a fix: a digest state kept per chunk (~250 bytes) grew with the file
    (a key holder's 16-byte chunks: seven times the volume). Only so many are kept; past
    them each chunk has a 16-byte mark, checked before a chunk read again is returned,
    in order or at random (a comparison deferred to a later state returned a key
    holder's chunk with ``digest_checked`` True: hunt38); past the marks, refused."""
    from secfl.shield import _reader, encrypt_files

    monkeypatch.setattr(_reader, "MAX_STATES", 4)
    monkeypatch.setattr(_reader, "MAX_MARKS", 4)
    honest = bytes(range(256)) * 160  # ten chunks of 4 KiB
    encrypt_files({"f": honest}, tmp_path / "v.vol", KEY, chunk_size=4096)
    kept, forged, at = forge_chunk(tmp_path / "v.vol", 6, b"EVIL")
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        buffered = volume.open_file("f")  # (its raw file lives as long as it does)
        stream = buffered.raw
        assert stream.read() == honest and stream.digest_checked
        assert len(stream._states) == 5 and len(stream._marks) == 4 * 16
        for chunk in (2, 3, 7, 6, 4, 0):  # states, then marks: checked at once
            stream.seek(chunk * 4096)
            assert stream.read(4096) == honest[chunk * 4096 : (chunk + 1) * 4096]
        stream.seek(0)
        assert stream.read(8 * 4096) == honest[: 8 * 4096]  # in order again
        stream.seek(9 * 4096)
        with pytest.raises(ShieldError, match="read again past the chunks whose digest"):
            stream.read(4096)  # past the marks
        put_bytes(tmp_path / "v.vol", at, forged)  # the host, between two reads
        stream.seek(6 * 4096)
        with pytest.raises(ShieldError, match="changed since it was first read"):
            stream.read(4096)  # refused before any of it is returned
        assert not stream.digest_checked
        assert kept != forged


def test_a_peek_cached_before_the_in_order_pass_is_not_served_after_it(tmp_path: Path) -> None:
    """The review of a fix: a chunk peeked at (cached, not digest-checked), then read
    afresh by the in-order pass (checked), stayed in the cache: a later read of it got
    the peeked copy, the key holder's content, with ``digest_checked`` True."""
    from secfl.shield import encrypt_files

    honest = b"honest,data\n" * 15_000
    encrypt_files({"rows.csv": honest}, tmp_path / "v.vol", KEY, chunk_size=4096)
    kept, forged, at = forge_chunk(tmp_path / "v.vol", 16, b"EVIL")
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        buffered = volume.open_file("rows.csv")
        stream = buffered.raw
        put_bytes(tmp_path / "v.vol", at, forged)
        stream.seek(16 * 4096)
        assert stream.read(10).startswith(b"EVIL")  # a peek: random access, not checked
        put_bytes(tmp_path / "v.vol", at, kept)
        stream.seek(0)
        assert stream.read() == honest and stream.digest_checked
        stream.seek(16 * 4096)
        assert stream.read(10) == honest[16 * 4096 : 16 * 4096 + 10]


def test_a_manifest_cut_short_while_read_leaves_no_plaintext_in_its_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review of a fix: a manifest that ended (or failed to read) after its first
    piece left that piece's decrypted, unauthenticated plaintext in the dropped buffer."""
    from secfl.shield import _sealed_manifest, encrypt_files

    names = {f"secret/patient-{i:05d}.csv": b"" for i in range(200)}
    encrypt_files(names, tmp_path / "v.vol", KEY)
    header = fmt.unpack_header((tmp_path / "v.vol").read_bytes()[: fmt.HEADER_SIZE], "test")
    monkeypatch.setattr(_sealed_manifest, "PIECE", 1024)
    buffers: list[bytearray] = []
    real_wipe = _sealed_manifest._wipe
    monkeypatch.setattr(_sealed_manifest, "_wipe", lambda b: (buffers.append(b), real_wipe(b)))
    real_preadv = os.preadv
    pieces = iter(range(10**6))

    def cut_after_one(fd: int, bufs: Any, offset: int) -> int:
        return real_preadv(fd, bufs, offset) if next(pieces) == 0 else 0

    monkeypatch.setattr(_sealed_manifest.os, "preadv", cut_after_one)
    with pytest.raises(ShieldError, match="is truncated \\(in its manifest\\)"):
        Volume.open(tmp_path / "v.vol", KEY)
    assert header.manifest_length > 2048 and len(buffers) == 1
    assert not any(buffers[0]) and b"patient" not in buffers[0]
