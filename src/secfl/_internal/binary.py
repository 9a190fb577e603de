"""A bounds-checked little-endian reader for binary evidence formats.

Every read names what it reads, so a short or malformed input becomes a
:class:`VerificationError` that says which field at which offset is wrong.
"""

from __future__ import annotations

from secfl.errors import VerificationError


class Reader:
    """Reads fields from ``data`` left to right, failing closed on truncation."""

    def __init__(self, data: bytes, offset: int = 0, *, what: str = "evidence") -> None:
        self.data = data
        self.offset = offset
        self.what = what

    def malformed(self, reason: str, offset: int | None = None) -> VerificationError:
        at = self.offset if offset is None else offset
        return VerificationError(f"malformed {self.what} at offset {at}: {reason}")

    def bytes(self, n: int, field: str) -> bytes:
        if n < 0 or self.offset + n > len(self.data):
            raise self.malformed(
                f"{field} needs {n} bytes, {max(0, len(self.data) - self.offset)} left"
            )
        out = self.data[self.offset : self.offset + n]
        self.offset += n
        return out

    def u8(self, field: str) -> int:
        return self.bytes(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.bytes(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.bytes(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.bytes(8, field), "little")

    def remaining(self) -> int:
        return len(self.data) - self.offset

    def expect_zero_tail(self) -> None:
        """Accept trailing zero padding (as quoting libraries emit it), nothing else."""
        tail = self.data[self.offset :]
        if tail.strip(b"\x00"):
            first = self.offset + next(i for i, b in enumerate(tail) if b)
            raise self.malformed("non-zero bytes after the end of the evidence", first)
