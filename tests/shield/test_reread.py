"""A chunk of a shielded file read again must be what the file's digest took in the
first time, before any of it is returned, however far into the file and on every read
path (found by a review of the re-read checks). Real volumes sealed with the project's
own API, the host changing the volume file between reads; a key holder's forged chunk
is a valid AES-GCM encryption of other bytes under the volume's own keys."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from secfl.errors import ShieldError
from secfl.shield import Volume, _parallel, _reader, _threads, encrypt_files
from tests.shield import KEY, forge_chunk, put_bytes


def _honest(chunks: int, chunk_size: int) -> bytes:
    # every chunk distinct and recognisable: b"c000123:" then filler
    return b"".join(
        f"c{c:07d}:".encode().ljust(chunk_size, b".")[:chunk_size] for c in range(chunks)
    )


CS = 16
N = 70_000  # chunks: past MAX_STATES (65,536), no monkeypatching


@pytest.fixture(scope="module")
def long_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    assert _reader.MAX_STATES == 1 << 16
    honest = _honest(N, CS)
    path = tmp_path_factory.mktemp("long") / "v.vol"
    encrypt_files({"f": honest}, path, KEY, chunk_size=CS)
    return path, honest


def test_reread_past_kept_states_never_returns_a_swapped_chunk(
    long_volume: tuple[Path, bytes], tmp_path: Path
) -> None:
    """After a whole, digest-checked read, the host swaps in a key holder's chunk. A
    re-read of it must be refused before any of its bytes come back. On d49f0f5:
    (1) chunk 65,535 re-read at random (its state is kept, the one after it is not) and
    (2) chunk 66,000 reached in order from there through the buffered reader a workload
    gets both come back (EVIL-A, EVIL-B) without error, ``digest_checked`` True, and
    (3) once the reader seeks elsewhere the pending comparison is dropped for good."""
    src, honest = long_volume
    last_kept = _reader.MAX_STATES - 1  # chunk 65,535: its state *is* kept
    k = 66_000  # past the kept states
    for case in ("at random", "in order"):
        vol = tmp_path / f"{case}.vol"
        vol.write_bytes(src.read_bytes())
        chunk = last_kept if case == "at random" else k
        _, forged, at = forge_chunk(vol, chunk, b"EVIL")
        with Volume.open(vol, KEY) as volume:
            buffered = volume.open_file("f")
            stream = buffered.raw
            assert stream.read() == honest and stream.digest_checked
            put_bytes(vol, at, forged)  # the host, between two reads, with a key holder's help
            returned = b""
            if case == "at random":
                stream.seek(last_kept * CS)
                with pytest.raises(ShieldError, match="changed since it was first read"):
                    returned += stream.read(CS)
            else:
                buffered.seek((last_kept - 3) * CS)
                with pytest.raises(ShieldError, match="changed since it was first read"):
                    while len(returned) < (k + 1 - last_kept + 3) * CS:
                        returned += buffered.read(1000)
            assert b"EVIL" not in returned, case
            assert not stream.digest_checked, case
            buffered.seek(0)  # and it stays refused
            with pytest.raises(ShieldError):
                buffered.read(CS)


def test_reread_past_kept_states_serves_ordinary_access_patterns(tmp_path: Path) -> None:
    """Availability regression of 0e594a7/d49f0f5: with a chunk size the CLI offers
    (``--chunk-kib 1``), a 66 MiB file read once in order (its digest checked) could no
    longer be read at random past 64 MiB on that handle, nor could a reader step back
    a few bytes across a chunk boundary there ("read again at random past the chunks
    whose digest is kept"), while a fresh handle read the very same bytes (unchecked)
    without complaint: checking the file made it unreadable at random."""
    cs = 1024
    n = 66_100  # 66 MiB of 1 KiB chunks
    honest = _honest(n, cs)
    vol = tmp_path / "v.vol"
    encrypt_files({"f": honest}, vol, KEY, chunk_size=cs)
    with Volume.open(vol, KEY) as volume:
        f = volume.open_file("f")
        assert f.read() == honest and f.raw.digest_checked
        f.seek(66_000 * cs)
        assert f.read(10) == honest[66_000 * cs : 66_000 * cs + 10]
        g = volume.open_file("f")  # a fresh handle: the same read
        g.seek(66_000 * cs)
        assert g.read(10) == honest[66_000 * cs : 66_000 * cs + 10]
        # reading in order, then stepping back 8 bytes (a parser's peek-and-rewind)
        h = volume.open_file("f")
        assert h.read(65_600 * cs + 4) == honest[: 65_600 * cs + 4]
        h.seek(-8, io.SEEK_CUR)
        assert h.read(8) == honest[65_600 * cs - 4 : 65_600 * cs + 4]


FUZZ_CS = 64


def _forged_chunks(
    vol: Path, chunks: int, size: int, count: int, rng: random.Random
) -> dict[int, tuple[int, bytes, bytes]]:
    """A key holder's other ciphertext for ``count`` chunks: chunk -> (offset, honest, forged)."""
    out = {}
    for k in rng.sample(range(chunks), min(count, chunks)):
        if k * FUZZ_CS < size:
            good, bad, at = forge_chunk(vol, k, rng.randbytes(FUZZ_CS))
            out[k] = (at, good, bad)
    return out


@pytest.mark.parametrize("mode", ["plain", "pool"])
@pytest.mark.parametrize("max_states", [1 << 16, 5])
@pytest.mark.parametrize("size", [40 * FUZZ_CS + 13, 24 * FUZZ_CS, 1])
def test_fuzz_reader_against_its_promises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, max_states: int, size: int
) -> None:
    """A differential fuzz of the reader against what its digest checks promise, the
    host swapping a key holder's chunk in and out between reads, on every read path
    (the cache, whole chunks, the read-ahead pipeline, ranges split among threads):
    bytes of a chunk read again are what the digest took in the first time, and while
    ``digest_checked`` is True every byte returned is the owner's; nothing but a
    ``ShieldError`` is raised. With few states kept (5) it failed on the deferred
    comparison past them."""
    if mode == "pool":
        monkeypatch.setattr(_threads, "WORKERS", 2)
        monkeypatch.setattr(_threads, "READ_AHEAD", True)
        monkeypatch.setattr(_parallel, "RANGE_MIN_BYTES", 0)
        monkeypatch.setattr(_threads, "_pool", None)
    monkeypatch.setattr(_reader, "MAX_STATES", max_states)
    if max_states < 1000:
        monkeypatch.setattr(_reader, "MAX_MARKS", 10)
    failures: list[str] = []
    for seed in range(int(os.environ.get("FUZZ_SEEDS", "30"))):
        rng = random.Random(seed * 7919 + size)
        honest = rng.randbytes(size)
        vol = tmp_path / f"v{seed}.vol"
        encrypt_files({"f": honest}, vol, KEY, chunk_size=FUZZ_CS)
        with Volume.open(vol, KEY) as volume:
            (entry,) = volume.files
        forged = _forged_chunks(vol, entry.chunks, entry.size, 2, rng)
        with Volume.open(vol, KEY) as volume:
            buffered = volume.open_file("f")
            raw = buffered.raw
            first: dict[int, int] = {}  # byte position -> value the digest took in
            use_raw = seed % 2 == 0  # one interface per handle (mixing them is invalid)
            for step in range(80):
                # the host: swap a key holder's chunk in or out, or garble one
                r = rng.random()
                if forged and r < 0.3:
                    k = rng.choice(list(forged))
                    at, good, bad = forged[k]
                    put_bytes(vol, at, bad if rng.random() < 0.6 else good)
                f = raw if use_raw else buffered
                f.seek(
                    rng.choice(
                        [0, rng.randrange(size + 2), rng.randrange(size + 2) // FUZZ_CS * FUZZ_CS]
                    )
                )
                pos = raw.tell() if use_raw else buffered.tell()
                h_before = raw._hashed
                checked_before = raw.digest_checked
                n = rng.choice([1, 7, FUZZ_CS, 2 * FUZZ_CS, 3 * FUZZ_CS + 5, 1000, -1])
                try:
                    if rng.random() < 0.3 and n > 0:
                        b = bytearray(n)
                        got = f.readinto(b)
                        data = bytes(b[: got or 0])
                    else:
                        data = f.read(n)
                except ShieldError:
                    continue
                except Exception as exc:  # a crash
                    failures.append(f"seed {seed} step {step}: crash {exc!r}")
                    break
                if data is None:
                    continue
                h_after = raw._hashed
                for i, byte in enumerate(data):
                    p = pos + i
                    c = p // FUZZ_CS
                    if c < h_before and p in first and first[p] != byte:
                        failures.append(
                            f"seed {seed} step {step}: re-read of chunk {c} differs from what "
                            "the digest took in"
                        )
                        break
                    if h_before <= c < h_after and p not in first:
                        first[p] = byte
                    if raw.digest_checked and byte != honest[p]:
                        failures.append(
                            f"seed {seed} step {step}: chunk {c} not the owner's with "
                            "digest_checked True"
                            f" (checked before: {checked_before}, hashed {h_before}->{h_after})"
                        )
                        break
                if failures:
                    break
            buffered.close()
        if len(failures) > 3:
            break
    assert not failures, failures[:3]
