"""Shielded volume throughput against plain file I/O and AES-256-GCM, in one run.

Run: ``.venv/bin/python benchmarks/bench_shield.py [--size-mb 256] [--chunk-kb 1024]``.
It writes a file of random bytes to a temporary folder, then measures:

- plain copy (``shutil.copyfile`` then fsync, as ``encrypt_directory`` fsyncs the
  volume) and ``encrypt_directory`` of the same file;
- plain read, twice: the first read may come from disk, the second from the page
  cache (caches cannot be dropped without root);
- the limit, ``cryptography``'s AES-256-GCM ``decrypt_into`` on all CPUs (one
  thread each: OpenSSL releases the GIL), of chunks of the volume's chunk size:
  over the volume's own chunks held in memory (the bytes a reader of this file
  must decrypt: the baseline) and over one chunk per thread, hot in the CPU's
  cache (the cipher alone); and over the volume's chunks writing each chunk's
  plaintext to its place in a buffer of the file's size, or of the streaming read
  size (the same output as a reader's: the baseline's chunk-sized output stays in
  the CPU's cache, where a reader's plaintext must go to memory);
- the same, with each chunk first copied out of the page cache by ``os.preadv``
  (what the reader does, so that the bytes it authenticates are the bytes it
  decrypts): the floor of any reader's cost, for the breakdown;
- reads through ``Volume.open_file`` (volume file warm in the page cache too), all
  without the whole-file SHA-256 (``check_digest=False``: every chunk still
  authenticated by AES-GCM; the streaming default checks it, since only the
  digest stops a key holder's other content under the same tag): one
  ``readinto`` of the whole file (what loading a model does) and streaming with
  ``--big-block-kb`` reads, each on all threads (the default: the chunks of a
  read split among threads, each decrypting straight into its part of the buffer,
  :mod:`secfl.shield._parallel`) and on one (the pool turned off); streaming with
  ``--block-kb`` reads (a chunk at a time) on one thread and with read-ahead on
  all (``SECFL_SHIELD_THREADS``); and once with the digest (``check_digest=True``).

Every figure is the best of ``--repeat`` runs, run in turns (each variant once per
round), as other load on the machine only ever slows a run down. It prints the
figures and the shield read against the AES-GCM baseline (target >= 80%), from the
best of each and paired (the median over rounds of the two measured in the same
round: the baseline's best moves more from run to run than a reader's), where
one thread's time goes, and the CPU time each variant costs per GB (the least over
the rounds: on a loaded machine it moves far less than throughput); it asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secfl.shield import Volume, _threads, encrypt_directory, generate_key
from secfl.shield import _format as fmt

MIB = 1 << 20


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """The best of ``repeat`` runs, in seconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def in_turns(
    variants: dict[str, Callable[[], object]], repeat: int
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """The best wall time and the least CPU time (all threads of the process) of each
    variant over ``repeat`` rounds, each round running each variant once; and every
    round's wall time (for ratios of variants run seconds apart, in the same round)."""
    best = dict.fromkeys(variants, float("inf"))
    cpu = dict.fromkeys(variants, float("inf"))
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            start, used = time.perf_counter(), time.process_time()
            fn()
            took = time.perf_counter() - start
            rounds[name].append(took)
            best[name] = min(best[name], took)
            cpu[name] = min(cpu[name], time.process_time() - used)
    return best, cpu, rounds


def paired(rounds: dict[str, list[float]], base: str, name: str) -> tuple[float, list[float]]:
    """The median over rounds of ``base``'s time over ``name``'s in the same round, and
    each round's: the best of each (the headline) can come from different rounds, and
    the baseline's best moves more than a reader's from one run to the next."""
    each = [b / n for b, n in zip(rounds[base], rounds[name], strict=True)]
    return statistics.median(each), each


def on_threads(threads: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(k, threads)`` on ``threads`` threads and wait for them all."""
    pool = [threading.Thread(target=work, args=(k, threads)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


class Chunks:
    """The sealed chunks of the volume's one file, for the AES-GCM baselines."""

    def __init__(self, volume: Volume, path: Path, key: bytes, name: str) -> None:
        entry = volume.entry(name)
        header = fmt.unpack_header(path.read_bytes()[: fmt.HEADER_SIZE], "bench")
        self.aead = AESGCM(fmt.derive_keys(key, header.salt).chunk)
        self.salt, self.entry, self.size = header.salt, entry, volume.chunk_size
        self.fd = os.open(path, os.O_RDONLY)
        with open(path, "rb") as f:
            f.seek(entry.offset)
            self.sealed = f.read(fmt.sealed_length(entry.size, self.size))

    def span(self, chunk: int) -> tuple[int, int]:
        start = chunk * (self.size + fmt.TAG_SIZE)
        plain = min(self.size, self.entry.size - chunk * self.size)
        return start, plain

    def decrypt(self, chunk: int, data: memoryview, out: memoryview) -> None:
        last = chunk == self.entry.chunks - 1
        aad = fmt.chunk_aad(self.salt, 0, self.entry.path, chunk, last)
        self.aead.decrypt_into(fmt.chunk_nonce(0, chunk), data, aad, out)

    def from_memory(self, k: int, threads: int) -> None:
        out, sealed = memoryview(bytearray(self.size)), memoryview(self.sealed)
        for chunk in range(k, self.entry.chunks, threads):
            start, plain = self.span(chunk)
            self.decrypt(chunk, sealed[start : start + plain + fmt.TAG_SIZE], out[:plain])

    def from_memory_into(self, k: int, threads: int, out: memoryview) -> None:
        # One contiguous range of chunks per thread, each written to its place in ``out``
        # (wrapping around when ``out`` is smaller than the file): the plaintext goes to
        # memory as a reader's does, which a chunk-sized output buffer (hot in the
        # cache) never pays.
        sealed, count = memoryview(self.sealed), self.entry.chunks
        per = len(out) // self.size
        for chunk in range(count * k // threads, count * (k + 1) // threads):
            start, plain = self.span(chunk)
            at = (chunk % per) * self.size
            self.decrypt(chunk, sealed[start : start + plain + fmt.TAG_SIZE], out[at : at + plain])

    def in_cache(self, k: int, threads: int) -> None:
        # Each thread decrypts its own copy of chunk 0 over and over (L2-resident).
        sealed = memoryview(bytes(self.sealed[: self.size + fmt.TAG_SIZE]))
        out = memoryview(bytearray(self.size))
        for _ in range(k, self.entry.chunks, threads):
            self.decrypt(0, sealed, out)

    def preadv(self, k: int, threads: int, decrypt: bool = True) -> None:
        scratch, out = (
            memoryview(bytearray(self.size + fmt.TAG_SIZE)),
            memoryview(bytearray(self.size)),
        )
        for chunk in range(k, self.entry.chunks, threads):
            start, plain = self.span(chunk)
            data = scratch[: plain + fmt.TAG_SIZE]
            os.preadv(self.fd, [data], self.entry.offset + start)
            if decrypt:
                self.decrypt(chunk, data, out[:plain])

    def preadv_into(self, k: int, threads: int, out: memoryview) -> None:
        # One contiguous range of chunks per thread, straight into a buffer of the
        # file's size (what a reader of the whole file does, without its bookkeeping).
        scratch, count = memoryview(bytearray(self.size + fmt.TAG_SIZE)), self.entry.chunks
        for chunk in range(count * k // threads, count * (k + 1) // threads):
            start, plain = self.span(chunk)
            data = scratch[: plain + fmt.TAG_SIZE]
            os.preadv(self.fd, [data], self.entry.offset + start)
            at = chunk * self.size
            self.decrypt(chunk, data, out[at : at + plain])


def read_plain(path: Path, block: int) -> int:
    buffer = bytearray(block)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
    return total


def read_volume(volume: Volume, name: str, buffer: bytearray, check_digest: bool) -> int:
    total = 0
    with volume.open_file(name, check_digest=check_digest) as f:
        while n := f.readinto(buffer):
            total += n
    return total


def with_workers(
    count: int, fn: Callable[[], object], read_ahead: bool = False
) -> Callable[[], object]:
    """``fn`` with a pool of ``count`` threads (1: off, the reader decrypts every chunk
    itself; the default is every CPU, without read-ahead; ``SECFL_SHIELD_THREADS=N``
    is N threads with read-ahead)."""

    def run() -> object:
        saved = _threads.WORKERS, _threads.READ_AHEAD
        _threads.WORKERS, _threads.READ_AHEAD = count, read_ahead
        try:
            return fn()
        finally:
            _threads.WORKERS, _threads.READ_AHEAD = saved

    return run


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
    parser.add_argument("--block-kb", type=int, default=1024, help="read size, a chunk at a time")
    parser.add_argument("--big-block-kb", type=int, default=16384, help="read size, streaming")
    parser.add_argument("--repeat", type=int, default=5, help="reads: best of N rounds")
    parser.add_argument("--dir", default=None, help="where to put the test files")
    args = parser.parse_args()
    size, chunk, block = args.size_mb * MIB, args.chunk_kb * 1024, args.block_kb * 1024
    big = args.big_block_kb * 1024
    mb = size / MIB
    cpus = min(len(os.sched_getaffinity(0)), _threads.MAX_WORKERS)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"file {args.size_mb} MiB, chunk {args.chunk_kb} KiB, read sizes {args.block_kb} and "
        f"{args.big_block_kb} KiB, reads best of {args.repeat} rounds; {cpus} threads for the "
        "all-CPU figures"
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
        buffer, whole, big_buffer = bytearray(block), bytearray(size), bytearray(big)
        with Volume.open(vol, key) as volume:
            chunks = Chunks(volume, vol, key, "blob.bin")
            read_volume(volume, "blob.bin", buffer, False)  # warm the volume file's pages
            s, cpu, rounds = in_turns(
                {
                    "warm": lambda: read_plain(plain, block),
                    "aes": lambda: on_threads(cpus, chunks.from_memory),
                    "aes_hot": lambda: on_threads(cpus, chunks.in_cache),
                    "aes_whole": lambda: on_threads(
                        cpus, lambda k, t: chunks.from_memory_into(k, t, memoryview(whole))
                    ),
                    "aes_big": lambda: on_threads(
                        cpus, lambda k, t: chunks.from_memory_into(k, t, memoryview(big_buffer))
                    ),
                    "pread_aes": lambda: on_threads(cpus, chunks.preadv),
                    "pread_whole": lambda: on_threads(
                        cpus, lambda k, t: chunks.preadv_into(k, t, memoryview(whole))
                    ),
                    "aes_1": lambda: chunks.from_memory(0, 1),
                    "pread_1": lambda: chunks.preadv(0, 1, decrypt=False),
                    "whole": with_workers(
                        cpus, lambda: read_volume(volume, "blob.bin", whole, False)
                    ),
                    "whole_1": with_workers(
                        1, lambda: read_volume(volume, "blob.bin", whole, False)
                    ),
                    "big": with_workers(
                        cpus, lambda: read_volume(volume, "blob.bin", big_buffer, False)
                    ),
                    "big_1": with_workers(
                        1, lambda: read_volume(volume, "blob.bin", big_buffer, False)
                    ),
                    "seq": with_workers(1, lambda: read_volume(volume, "blob.bin", buffer, False)),
                    "ahead": with_workers(
                        cpus, lambda: read_volume(volume, "blob.bin", buffer, False), True
                    ),
                    "digest": with_workers(
                        1, lambda: read_volume(volume, "blob.bin", buffer, True)
                    ),
                },
                args.repeat,
            )
            os.close(chunks.fd)

    def line(label: str, seconds: float, base: float | None = None, what: str = "") -> None:
        ratio = f"   {base / seconds:6.1%} of {what}" if base else ""
        print(f"  {label:<58} {mb / seconds:8.0f} MB/s{ratio}")

    def cost(name: str) -> str:
        return f"{size / cpu[name] / 1e9:.1f}"

    aes = s["aes"]
    print("write")
    line("plain copy (shutil.copyfile + fsync)", copy_s)
    line("encrypt_directory", enc_s)
    print("read")
    line("plain read, first", cold_s)
    line("plain read, warm (page cache: a memcpy)", s["warm"])
    print(f"AES-256-GCM decrypt_into ({chunk // 1024} KiB chunks), {cpus} threads")
    line("over the volume's chunks in memory (baseline)", aes)
    line("over one chunk per thread, hot in cache (cipher alone)", s["aes_hot"])
    line("over the volume's chunks, into a buffer of the file's size", s["aes_whole"], aes,
         "baseline")  # fmt: skip
    line(f"over the volume's chunks, into a buffer of {big // 1024} KiB", s["aes_big"], aes,
         "baseline")  # fmt: skip
    line("preadv from the page cache, then decrypt (any reader)", s["pread_aes"], aes, "baseline")
    line("the same into one buffer of the file's size", s["pread_whole"], aes, "baseline")
    print("Volume.open_file")
    line(f"one readinto of the whole file, {cpus} threads (default)", s["whole"], aes, "baseline")
    line("one readinto of the whole file, 1 thread", s["whole_1"], aes, "baseline")
    line(f"{big // 1024} KiB reads, {cpus} threads (default)", s["big"], aes, "baseline")
    line(f"{big // 1024} KiB reads, 1 thread", s["big_1"], aes, "baseline")
    line(f"{block // 1024} KiB reads, 1 thread (default)", s["seq"], aes, "baseline")
    line(
        f"{block // 1024} KiB reads, {cpus} threads decrypting ahead (SECFL_SHIELD_THREADS)",
        s["ahead"],
        aes,
        "baseline",
    )
    line(f"{block // 1024} KiB reads, 1 thread, check_digest=True", s["digest"], aes, "baseline")
    aes_1, pread_1 = s["aes_1"] / size * 1e12, s["pread_1"] / size * 1e12
    print(
        f"one thread, per GB: preadv {pread_1:.0f} ms + decrypt {aes_1:.0f} ms; "
        f"warm plain read {mb / s['warm']:.0f} MB/s"
    )
    print(
        f"shield read / AES-GCM on all CPUs (target >= 0.8): whole file {aes / s['whole']:.2f}, "
        f"{big // 1024} KiB reads {aes / s['big']:.2f}, {block // 1024} KiB reads "
        f"{aes / min(s['seq'], s['ahead']):.2f}; preadv + AES-GCM (the floor of any reader) "
        f"{aes / s['pread_aes']:.2f}, into one buffer {aes / s['pread_whole']:.2f}"
    )
    whole_paired, whole_each = paired(rounds, "aes", "whole")
    big_paired, big_each = paired(rounds, "aes", "big")
    print(
        f"the same, paired (median over {args.repeat} rounds of the two run in the same round): "
        f"whole file {whole_paired:.2f} (each round: {', '.join(f'{r:.2f}' for r in whole_each)}), "
        f"{big // 1024} KiB reads {big_paired:.2f} "
        f"(each round: {', '.join(f'{r:.2f}' for r in big_each)})"
    )
    print(
        "shield read / AES-GCM writing its plaintext to a buffer of the read's size (the "
        f"same output, in memory on both sides): whole file {s['aes_whole'] / s['whole']:.2f}, "
        f"{big // 1024} KiB reads {s['aes_big'] / s['big']:.2f}"
    )
    print(
        "GB per CPU-second (less sensitive to other load than MB/s): "
        f"AES-GCM {cost('aes')}, cipher alone {cost('aes_hot')}, preadv + AES-GCM "
        f"{cost('pread_aes')}, into one buffer {cost('pread_whole')}; shield whole file "
        f"{cpus} threads {cost('whole')}, 1 thread "
        f"{cost('whole_1')}; {big // 1024} KiB reads {cost('big')}; {block // 1024} KiB reads "
        f"1 thread {cost('seq')}, decrypting ahead {cost('ahead')}"
    )
    print(f"encrypt / plain copy: {copy_s / enc_s:.1%}")


if __name__ == "__main__":
    main()
