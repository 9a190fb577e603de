"""The audit anchor: the last head an SPM wrote, kept in its data folder outside the
database (see :mod:`secfl.spm._integrity`), so that a database rolled back as a whole
is refused."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import threading
from pathlib import Path

from secfl._internal import files
from secfl.errors import IntegrityError

__all__ = ["ANCHOR_FILE", "Anchor"]

_ANCHOR_LABEL = b"secfl/spm-anchor/v1\n"
ANCHOR_FILE = "audit.anchor"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Anchor:
    """The last audit head this SPM wrote, kept outside the database (MAC'd file).

    The file holds two fixed-size slots, written in turn (slot ``seq % 2``) in place
    through one open descriptor: a write is one ``pwrite`` on the hot path of every
    commit (a rename per commit cost ~0.3 ms), and a write torn by a crash spoils
    only one slot, while the other still holds the head before it. The reader takes
    the valid slot with the higher seq.
    """

    SLOT = 256

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._key = bytes(key)
        self._lock = threading.Lock()
        self._written = -1
        self._fd: int | None = None

    def _mac(self, seq: int, head_hash: str) -> str:
        message = _ANCHOR_LABEL + f"{seq}\n{head_hash}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _slot(self, raw: bytes) -> tuple[int, str] | None:
        """A slot's (seq, hash) if it parses and its MAC verifies, else None."""
        try:
            doc = json.loads(raw.strip(b" \0\n") or b"null")
            seq, head_hash, mac = doc["seq"], doc["hash"], doc["mac"]
        except (ValueError, KeyError, TypeError, RecursionError):
            return None
        if not (_is_int(seq) and 0 <= seq < 2**62 and isinstance(head_hash, str)):
            return None
        if not isinstance(mac, str) or not hmac.compare_digest(self._mac(seq, head_hash), mac):
            return None
        return seq, head_hash

    def read(self) -> tuple[int, str] | None:
        """The anchored (seq, hash), None if there is no anchor yet."""
        try:  # the host's folder: a regular file, not through a link, two slots at most
            raw = files.read_bounded(self.path, 2 * self.SLOT, untrusted=True)
        except FileNotFoundError:
            return None
        except files.TooLarge:
            raw = b""  # not an anchor of this SPM
        except OSError as exc:
            why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
            raise IntegrityError(f"integrity: cannot read {self.path}: {why}") from None
        slots = [raw[i : i + self.SLOT] for i in range(0, max(len(raw), 1), self.SLOT)]
        valid = [v for v in (self._slot(s) for s in slots[:2]) if v is not None]
        if not valid:
            raise IntegrityError(
                f"integrity: {self.path} is not an anchor of this SPM (corrupt, written by "
                "another SPM, or modified): restore the data folder with the database from one "
                "backup (or, were it truly lost, remove it and start once with "
                "`secfl spm serve --new-anchor`, which the audit log records)"
            )
        return max(valid)

    def write(self, seq: int, head_hash: str) -> None:
        """Record the head (0600). Synced to disk with its folder at the first write of
        a start only (a missing anchor is refused: see :mod:`secfl.spm._state`); not
        after every commit, where it runs: an anchor that lags after a power loss only
        weakens detection, it never refuses a good database."""
        with self._lock:
            if seq <= self._written:
                return
            doc = json.dumps({"seq": seq, "hash": head_hash, "mac": self._mac(seq, head_hash)})
            record = doc.encode().ljust(self.SLOT - 1) + b"\n"
            if len(record) != self.SLOT:
                raise IntegrityError("integrity: an anchor record does not fit its slot")
            if self._fd is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                try:
                    self._fd = files.open_regular_fd(self.path, flags)
                except OSError as exc:
                    why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
                    raise IntegrityError(f"integrity: cannot write {self.path}: {why}") from None
            first = self._written < 0
            os.pwrite(self._fd, record, (seq % 2) * self.SLOT)
            if first:  # once a start: a power loss must not leave the SPM without one
                os.fsync(self._fd)
                files.fsync_directory(self.path.parent)
            self._written = seq

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
