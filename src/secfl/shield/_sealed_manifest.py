"""Reading a volume's sealed manifest: one buffer of its size, decrypted as it is read.

The header's ``manifest_length`` is authenticated only with the manifest itself, and
the host may set it to the cap (:data:`~secfl.shield._format.MAX_MANIFEST_SIZE`,
256 MiB) in a file of a few KiB: read whole and then decrypted, that cost two buffers
of that size before the refusal (found by a hostile review). Here the manifest is
read piece by piece into one buffer as it is decrypted; nothing in it is used unless
its tag checks out, and a failed one is wiped.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secfl.errors import ShieldError
from secfl.shield import _format as fmt

__all__ = ["open_manifest", "pread_exact"]

#: How much of the sealed manifest is read at a time.
PIECE = 1 << 20


def pread_exact(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes of ``fd`` from ``offset``, fewer only where the file ends."""
    parts, got = [], 0
    while got < n:
        data = os.pread(fd, n - got, offset + got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def open_manifest(fd: int, header: fmt.Header, key: bytes, aad: bytes, where: str) -> bytes:
    """The authenticated plaintext of the manifest ``header`` locates in ``fd``, or
    :class:`ShieldError` (truncated, or failing authentication); ``OSError`` as raised."""
    n = header.manifest_length - fmt.TAG_SIZE
    tag = pread_exact(fd, fmt.TAG_SIZE, header.manifest_offset + n)
    if len(tag) != fmt.TAG_SIZE:
        raise ShieldError(f"shield: {where} is truncated (in its manifest)")
    decryptor = Cipher(algorithms.AES(key), modes.GCM(fmt.MANIFEST_NONCE, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    out = bytearray(n + 15)  # (update_into's room for a block)
    piece = bytearray(min(PIECE, max(n, 1)))
    done = 0
    try:
        while done < n:
            want = min(len(piece), n - done)
            got = os.preadv(fd, [memoryview(piece)[:want]], header.manifest_offset + done)
            if got <= 0:
                raise ShieldError(f"shield: {where} is truncated (in its manifest)")
            decryptor.update_into(memoryview(piece)[:got], memoryview(out)[done : done + got + 15])
            done += got
        decryptor.finalize()
    except InvalidTag:
        _wipe(out)
        raise ShieldError(
            f"shield: {where}: manifest failed authentication (header or manifest tampered)"
        ) from None
    except BaseException:  # truncated, unreadable, interrupted: nothing unchecked stays
        _wipe(out)
        raise
    plaintext = bytes(memoryview(out)[:n])  # authenticated: its size is the key holder's
    _wipe(out)
    return plaintext


def _wipe(buffer: bytearray) -> None:
    """Zero ``buffer`` in place, a piece at a time (no second buffer of its size)."""
    zeros = bytes(min(PIECE, len(buffer)))
    view = memoryview(buffer)
    for at in range(0, len(buffer), len(zeros) or 1):
        part = view[at : at + len(zeros)]
        part[:] = zeros[: len(part)]
