"""Reading and authenticating the chunks of an open volume file.

:class:`ChunkSource` is what every reader of a volume's files shares: positional
reads into private memory and the AES-256-GCM check of each chunk, safe to call
from the threads of :mod:`secfl.shield._parallel`. :class:`FileEntry` is one file
as the authenticated manifest describes it (where its chunks start, how many).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secfl.errors import ShieldError
from secfl.shield import _format as fmt

__all__ = [
    "ChunkSource",
    "FileEntry",
]

#: cryptography >= 45 decrypts straight into a buffer; older versions return bytes.
_DECRYPT_INTO = hasattr(AESGCM, "decrypt_into")


@dataclass(frozen=True)
class FileEntry:
    """One file of a volume, as its authenticated manifest describes it."""

    path: str
    mode: int
    size: int
    sha256: str
    chunks: int
    offset: int


class ChunkSource:
    """Reads and authenticates chunks of an open volume file.

    Thread-safe: it only uses positional reads (``os.preadv``, POSIX), into the
    caller's private buffer, so the bytes that are authenticated are the bytes that
    are decrypted, whatever another process does to the file meanwhile. The pool
    of :mod:`secfl.shield._parallel` calls :meth:`open_chunk` from its threads;
    :meth:`close` waits for the reads under way, so the file descriptor is never
    read after the volume closes it (nor, once reused, another file).
    """

    def __init__(
        self,
        fd: int,
        chunk_key: bytes,
        salt: bytes,
        chunk_size: int,
        where: str,
        *,
        files: int = 0,
        reveal_names: bool = True,
    ):
        self.fd = fd
        self.salt = salt
        self.chunk_size = chunk_size
        self.where = where
        self.files = files
        self.reveal_names = reveal_names
        self.closed = False
        self._aead = AESGCM(chunk_key)
        self._lock = threading.Condition()
        self._reading = 0

    def label(self, index: int, entry: FileEntry) -> str:
        """How a refusal names file ``index``: by its path, or, where names are hidden
        (a volume opened in an enclave, whose errors the host reads), by its place in
        the manifest, which is also the order `secfl shield ls` lists the files in."""
        if self.reveal_names:
            return f"file '{entry.path}'"
        return (
            f"file #{index + 1} of {self.files} (names stay in the enclave; "
            "`secfl shield ls` with the key lists the files in this order)"
        )

    def close(self) -> None:
        """Refuse reads from now on, and return once none is under way."""
        with self._lock:
            self.closed = True
            self._lock.wait_for(lambda: self._reading == 0)

    def _read_into(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from ``offset`` with positional reads; fewer bytes only at EOF."""
        with self._lock:
            if self.closed:
                raise ShieldError(f"shield: {self.where} is closed")
            self._reading += 1
        try:
            got = os.preadv(self.fd, [view], offset)
            while 0 < got < len(view):
                n = os.preadv(self.fd, [view[got:]], offset + got)
                if n == 0:
                    break
                got += n
        except OSError as exc:
            raise ShieldError(f"shield: cannot read {self.where}: {exc.strerror or exc}") from None
        finally:
            with self._lock:
                self._reading -= 1
                if self._reading == 0:
                    self._lock.notify_all()
        return got

    def open_chunk(
        self,
        index: int,
        entry: FileEntry,
        chunk: int,
        scratch: bytearray,
        out: memoryview,
    ) -> None:
        """Authenticate chunk ``chunk`` of file ``index`` and decrypt it into ``out``.

        ``out`` must be exactly the chunk's plaintext length. On failure ``out`` is
        zeroed (no unauthenticated plaintext is left behind) and ShieldError names
        the file and chunk.
        """
        n = len(out) + fmt.TAG_SIZE
        view = memoryview(scratch)[:n]
        offset = entry.offset + chunk * (self.chunk_size + fmt.TAG_SIZE)
        if self._read_into(view, offset) != n:
            raise ShieldError(
                f"shield: {self.where} is truncated: {self.label(index, entry)} chunk {chunk} "
                "is cut short"
            )
        last = chunk == entry.chunks - 1
        nonce = fmt.chunk_nonce(index, chunk)
        aad = fmt.chunk_aad(self.salt, index, entry.path, chunk, last)
        try:
            if _DECRYPT_INTO:
                self._aead.decrypt_into(nonce, view, aad, out)
            else:  # pragma: no cover - cryptography < 45
                out[:] = self._aead.decrypt(nonce, bytes(view), aad)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise ShieldError(
                f"shield: {self.where}: {self.label(index, entry)} chunk {chunk} failed "
                "authentication "
                "(tampered, moved, or from another volume)"
            ) from None
