"""Shielded volume throughput against plain file I/O on the same machine, in one run.

Run: ``.venv/bin/python benchmarks/bench_shield.py [--size-mb 256] [--chunk-kb 1024]``.
It writes a file of random bytes to a temporary folder, then measures:

- plain copy (``shutil.copyfile`` then fsync, as ``encrypt_directory`` fsyncs the
  volume) and ``encrypt_directory`` of the same file;
- plain read, twice: the first read may come from disk, the second from the page
  cache (caches cannot be dropped without root); the warm figure is the baseline;
- streaming read through ``Volume.open_file`` (1 MiB ``readinto``, volume file
  warm in the page cache too), without the whole-file SHA-256 check (the streaming
  default: every chunk still authenticated by AES-GCM) and with it (``check_digest=True``).

Warm reads are the best of ``--repeat`` runs, as other load on the machine only
ever slows a run down.

It prints figures and the read ratios against the warm plain read (target >= 50%);
it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from secfl.shield import Volume, encrypt_directory, generate_key

MIB = 1 << 20


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """The best of ``repeat`` runs, in seconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def read_plain(path: Path, block: int) -> int:
    buffer = bytearray(block)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
    return total


def read_volume(volume: Volume, name: str, block: int, check_digest: bool) -> int:
    buffer = bytearray(block)
    total = 0
    with volume.open_file(name, check_digest=check_digest) as f:
        while n := f.readinto(buffer):
            total += n
    return total


def copy_synced(src: Path, dst: Path) -> None:
    """shutil.copyfile then fsync: encrypt_directory fsyncs the volume before renaming it."""
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_random(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for i in range(0, size, MIB):
            # distinct blocks without paying for os.urandom on every MiB
            f.write(i.to_bytes(8, "little") + block[8 : min(MIB, size - i)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--chunk-kb", type=int, default=1024)
    parser.add_argument("--block-kb", type=int, default=1024, help="read size")
    parser.add_argument("--repeat", type=int, default=3, help="reads: best of N runs")
    parser.add_argument("--dir", default=None, help="where to put the test files")
    args = parser.parse_args()
    size, chunk, block = args.size_mb * MIB, args.chunk_kb * 1024, args.block_kb * 1024
    mb = size / MIB
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"file {args.size_mb} MiB, chunk {args.chunk_kb} KiB, read size {args.block_kb} KiB, "
        f"reads best of {args.repeat}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        plain = data / "blob.bin"
        write_random(plain, size)
        key = generate_key()
        vol = root / "blob.vol"

        copy_s = timed(lambda: copy_synced(plain, root / "copy.bin"))
        (root / "copy.bin").unlink()
        enc_s = timed(lambda: encrypt_directory(data, vol, key, chunk_size=chunk))
        cold_s = timed(lambda: read_plain(plain, block))
        warm_s = timed(lambda: read_plain(plain, block), args.repeat)
        with Volume.open(vol, key) as volume:
            read_volume(volume, "blob.bin", block, False)  # warm the volume file's pages
            digest_s = timed(lambda: read_volume(volume, "blob.bin", block, True), args.repeat)
            aead_s = timed(lambda: read_volume(volume, "blob.bin", block, False), args.repeat)

    def line(label: str, seconds: float, base: float | None = None) -> None:
        ratio = f"   {base / seconds:6.1%} of warm plain read" if base else ""
        print(f"  {label:<44} {mb / seconds:8.0f} MB/s{ratio}")

    print("write")
    line("plain copy (shutil.copyfile + fsync)", copy_s)
    line("encrypt_directory", enc_s)
    print("read")
    line("plain read, first", cold_s)
    line(f"plain read, warm, best of {args.repeat} (baseline)", warm_s)
    line("Volume.open_file, check_digest=True", digest_s, warm_s)
    line("Volume.open_file (default: chunks authenticated)", aead_s, warm_s)
    print(f"encrypt / plain copy: {copy_s / enc_s:.1%}")


if __name__ == "__main__":
    main()
