"""Sealed checkpoints of the aggregator, bound to the SPM's monotonic counter.

After each round the aggregator writes the global model and its strategy's state
(:func:`write_checkpoint`), encrypted and authenticated with a policy secret
(AES-256-GCM through :class:`secfl._internal.aead.AeadKey`, under a sub-key derived
for checkpoints), with the policy digest, the round and the counter value as
associated data. The host can read neither the model nor the state, and any change,
truncation or reordering, another key, or a file moved to another policy, round or
counter, is refused. Given the SPM's counter (:func:`load_checkpoint` with
``expected_counter``), a checkpoint with another counter is a rollback, refused with
``rollback: checkpoint of round R has counter C, the SPM's counter is E``. Which
checkpoint of a folder the aggregator resumes from, and the commit protocol that
decides it, are :mod:`secfl.fl._checkpoint_dir`.

The file's layout, and its header read before anything opens, are
:mod:`secfl.fl._checkpoint_format`; the names of the files, and of the increments
that commit them, :mod:`secfl.fl._checkpoint_names`.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from secfl._internal import interrupts
from secfl._internal.canonical import canonical_json
from secfl._internal.files import atomic_open, fsync_directory, open_regular
from secfl.errors import FlError
from secfl.fl._checkpoint_format import (
    AEAD_OVERHEAD,
    DEFAULT_CHUNK_SIZE,
    FORMAT,
    MAGIC,
    MAX_CHUNK_SIZE,
    checkpoint_key,
    non_negative,
    read_exact,
    read_header,
    record_aad,
)
from secfl.fl._checkpoint_names import (
    REQUEST,
    checkpoint_name,
    parse_checkpoint_name,
    request_in_name,
)
from secfl.fl._tensors import from_bytes, to_bytes

if TYPE_CHECKING:
    from secfl._internal.worker import Worker

__all__ = [
    "Checkpoint",
    "SyncInBackground",
    "load_checkpoint",
    "reset_hint",
    "sync_checkpoint",
    "write_checkpoint",
]


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint: the model (safetensors bytes) and the strategy state."""

    path: Path
    policy_digest: str
    round: int
    counter: int
    created_at: str
    params_bytes: bytes
    state: dict[str, Any]
    #: The name of the increment that commits it (None: written before names).
    request: str | None = None


def reset_hint(directory: Path | str | None, counter: int) -> str:
    """The next step after a refused resume, for the end of its one-line message."""
    target = Path(directory) / "reset.json" if directory is not None else "reset.json"
    return (
        "restore the newest checkpoint, or have board members (the policy's threshold) "
        f"approve a reset: secfl policy sign-reset --policy POLICY.yaml --value {counter} "
        f"--key KEY --member NAME -o {target}, then start the aggregator again"
    )


def _split_state(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not isinstance(state, Mapping):
        raise FlError(f"checkpoint: the state must be a mapping, not {type(state).__name__}")
    arrays: dict[str, np.ndarray] = {}
    values: dict[str, Any] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not name:
            raise FlError(f"checkpoint: invalid state key {name!r}")
        if isinstance(value, np.ndarray):
            arrays[name] = value
        else:
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise FlError(
                    f"checkpoint: state value {name!r} is neither a numpy array nor JSON"
                ) from None
            values[name] = value
    return arrays, values


def _pieces(parts: list[bytes | memoryview], size: int) -> Iterator[bytes]:
    """The concatenation of ``parts`` in pieces of ``size`` bytes, without building it."""
    buffer = bytearray()
    for part in parts:
        view = memoryview(part).cast("B")
        at = 0
        while at < len(view):
            take = min(size - len(buffer), len(view) - at)
            buffer += view[at : at + take]
            at += take
            if len(buffer) == size:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


def write_checkpoint(
    directory: Path | str,
    *,
    key: bytes,
    policy_digest: str,
    round: int,
    counter: int,
    params_bytes: bytes | memoryview,
    state: Mapping[str, Any],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    created_at: datetime | None = None,
    durable: bool = True,
    request: str | None = None,
) -> Path:
    """Seal and write a checkpoint atomically; returns its path (the layout:
    :mod:`secfl.fl._checkpoint_format`).

    ``state`` is a strategy's :meth:`~secfl.fl.strategies.Strategy.state`: a flat map of
    numpy arrays and JSON values. ``durable=False`` leaves out the fsyncs (the file is
    whole under its name for every process from the rename on, durable across a power
    loss only after :func:`sync_checkpoint`): the commit runs them beside the SPM call.
    ``request``: the name of the increment that will commit it.
    """
    aead = checkpoint_key(key)
    if not isinstance(policy_digest, str) or not policy_digest:
        raise FlError("checkpoint: the policy digest must be a non-empty string")
    non_negative(round, "the round")
    non_negative(counter, "the counter")
    if request is not None and (not isinstance(request, str) or not REQUEST.fullmatch(request)):
        raise FlError("checkpoint: the request name must be 32 lowercase hex digits")
    if type(chunk_size) is not int or not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise FlError(f"checkpoint: invalid chunk size {chunk_size!r}")
    arrays, values = _split_state(state)
    state_bytes = to_bytes(arrays) if arrays else b""
    inner = canonical_json(
        {
            "params_size": len(params_bytes),
            "state_arrays_size": len(state_bytes),
            "state": values,
        }
    )
    parts = [struct.pack(">I", len(inner)), inner, params_bytes, state_bytes]
    size = sum(len(p) for p in parts)
    count = -(-size // chunk_size)
    when = (created_at or datetime.now(UTC)).astimezone(UTC)
    header = canonical_json(
        {
            "format": FORMAT,
            "policy_digest": policy_digest,
            "round": round,
            "counter": counter,
            **({} if request is None else {"request": request}),
            "created_at": when.isoformat().replace("+00:00", "Z"),
            "size": size,
            "chunk_size": chunk_size,
            "chunks": count,
        }
    )
    directory = Path(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise FlError(f"checkpoint: cannot create {directory}: {exc.strerror}") from None
    path = directory / checkpoint_name(round, counter, request)
    try:  # private from the first byte, fsynced, renamed into place, the folder fsynced
        with atomic_open(path, mode=0o600, fsync=durable) as fh:
            fh.write(MAGIC + struct.pack(">I", len(header)) + header)
            for index, piece in enumerate(_pieces(parts, chunk_size)):
                sealed = aead.seal(piece, record_aad(header, index, index == count - 1))
                fh.write(struct.pack(">I", len(sealed)))
                fh.write(sealed)
    except OSError as exc:
        raise FlError(f"checkpoint: cannot write {path}: {exc.strerror or exc}") from None
    return path


def sync_checkpoint(path: Path) -> None:
    """Make a checkpoint written with ``durable=False`` durable: its file, then its
    folder (the rename), fsynced."""
    try:
        with open_regular(path) as fh:  # a FIFO renamed over it is refused, not waited on
            os.fsync(fh.fileno())
        fsync_directory(path.parent)
    except OSError as exc:
        raise FlError(f"checkpoint: cannot sync {path}: {exc.strerror or exc}") from None


def load_checkpoint(
    path: Path | str,
    *,
    key: bytes,
    policy_digest: str,
    expected_counter: int | None,
) -> Checkpoint:
    """Open and check one checkpoint.

    Refuses (:class:`FlError`, one line naming the check): a file that is not a
    checkpoint (``format:``), one for another policy (``policy:``), a tampered or
    truncated one or the wrong key (``integrity:``), and, when ``expected_counter``
    (the SPM's counter value) is given, any other counter (``rollback:``).
    """
    aead = checkpoint_key(key)
    path = Path(path)
    try:
        fh = open_regular(path)  # a FIFO planted after the listing is no hang
    except OSError as exc:
        raise FlError(f"checkpoint: cannot open {path}: {exc.strerror}") from None
    try:
        file_size = os.fstat(fh.fileno()).st_size
        header, doc = read_header(fh, path)
        if doc["policy_digest"] != policy_digest:
            raise FlError(
                f"policy: checkpoint {path.name} is for policy {doc['policy_digest'][:16]}..., "
                f"not {policy_digest[:16]}..."
            )
        size, chunk_size, count = doc["size"], doc["chunk_size"], doc["chunks"]
        if size > file_size or count != -(-size // chunk_size):
            raise FlError(f"integrity: checkpoint {path.name} has an inconsistent header")
        # allocated once the first record has opened (its associated data is the header,
        # size included): a planted header naming 4 TiB allocates nothing
        plain = bytearray()
        at = 0
        for index in range(count):
            (length,) = struct.unpack(">I", read_exact(fh, 4, path, f"record {index}"))
            want = min(chunk_size, size - at) + AEAD_OVERHEAD
            if length != want:
                raise FlError(f"integrity: checkpoint {path.name} record {index} has a bad length")
            sealed = read_exact(fh, length, path, f"record {index}")
            try:
                piece = aead.open(sealed, record_aad(header, index, index == count - 1))
            except FlError:
                raise FlError(
                    f"integrity: checkpoint {path.name} does not open (wrong key, or the file "
                    "was modified)"
                ) from None
            if index == 0:
                plain = bytearray(size)
            plain[at : at + len(piece)] = piece
            at += len(piece)
        if fh.read(1):
            raise FlError(f"integrity: checkpoint {path.name} has data after its last record")
    finally:
        fh.close()
    named = parse_checkpoint_name(path.name)
    request = doc.get("request")
    if named is not None and request_in_name(path.name) != (request[:16] if request else None):
        raise FlError(
            f"integrity: checkpoint {path.name} was committed by another request than its name says"
        )
    if named is not None and named != (doc["round"], doc["counter"]):
        raise FlError(
            f"integrity: checkpoint {path.name} holds round {doc['round']} and counter "
            f"{doc['counter']}, not what its name says"
        )
    if expected_counter is not None and doc["counter"] != expected_counter:
        raise FlError(
            f"rollback: checkpoint of round {doc['round']} has counter {doc['counter']}, "
            f"the SPM's counter is {expected_counter}: " + reset_hint(path.parent, expected_counter)
        )
    params_bytes, state = _parse_plaintext(plain, path)
    return Checkpoint(
        path=path,
        policy_digest=doc["policy_digest"],
        round=doc["round"],
        counter=doc["counter"],
        created_at=doc["created_at"],
        params_bytes=params_bytes,
        state=state,
        request=request,
    )


def _parse_plaintext(plain: bytearray, path: Path) -> tuple[bytes, dict[str, Any]]:
    """Split the authenticated plaintext (a mismatch here is a writer's bug, not tampering)."""
    bad = FlError(f"format: checkpoint {path.name} has a malformed body")
    if len(plain) < 4:
        raise bad
    (inner_len,) = struct.unpack_from(">I", plain, 0)
    try:
        inner = json.loads(bytes(plain[4 : 4 + inner_len]).decode("utf-8"))
        params_size = int(inner["params_size"])
        state_size = int(inner["state_arrays_size"])
        values = dict(inner["state"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise bad from None
    start = 4 + inner_len
    if start + params_size + state_size != len(plain):
        raise bad
    params_bytes = bytes(plain[start : start + params_size])
    state: dict[str, Any] = dict(values)
    if state_size:
        arrays, _ = from_bytes(bytes(plain[start + params_size :]))
        state.update(arrays)
    return params_bytes, state


class SyncInBackground:
    """A checkpoint's fsyncs on ``worker``'s thread; :meth:`wait` returns when they
    ended (monotonic) or raises their error."""

    def __init__(self, path: Path, worker: Worker) -> None:
        self._error: BaseException | None = None
        self._ended = 0.0
        self._done = threading.Event()
        worker.submit(lambda: self._run(path))

    def _run(self, path: Path) -> None:
        try:
            sync_checkpoint(path)
        except BaseException as exc:  # any failure fails the commit (fail closed)
            self._error = exc
        finally:
            self._ended = time.monotonic()
            self._done.set()

    def wait(self) -> float:
        interrupts.wait(self._done)
        if self._error is not None:
            raise self._error
        return self._ended
