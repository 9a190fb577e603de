"""The names of checkpoint files, and of the SPM increments that commit them.

A checkpoint's file name says its round and counter
(``checkpoint-r<round:08d>-c<counter:010d>-<request[:16]>.secfl``, without
``-<request>`` as written before requests were named); opening it checks the name
against the authenticated header (:mod:`secfl.fl._checkpoint`).

``request`` names the SPM compare-and-increment that commits the checkpoint (128
random bits, hex; the SPM remembers the name of the increment that took the counter
to its value). Two aggregators forked from one state both write a checkpoint at
``c + 1``, and only one of them commits it: the name tells which, so the loser's file
neither replaces the winner's nor passes for committed (:mod:`secfl.fl._runs`).
"""

from __future__ import annotations

import hashlib
import re
import secrets

__all__ = [
    "REQUEST",
    "checkpoint_name",
    "drawn_here",
    "may_commit",
    "new_request",
    "parse_checkpoint_name",
    "request_in_name",
]

_NAME = re.compile(r"checkpoint-r([0-9]{8,})-c([0-9]{10,})(?:-([0-9a-f]{16}))?\.secfl")
#: A compare-and-increment's name (secfl.spm._increment).
REQUEST = re.compile(r"[0-9a-f]{32}")
_REQUEST_LABEL = b"secfl/checkpoint-request/v1\n"


def new_request() -> str:
    """A name for the increment that commits a checkpoint: 64 random bits and a check of
    them, so that a name this code drew can be told (but for 2^-64) from the random
    names of the code before it, whose checkpoints carried none."""
    nonce = secrets.token_hex(8)
    return nonce + hashlib.sha256(_REQUEST_LABEL + nonce.encode()).hexdigest()[:16]


def drawn_here(request: str) -> bool:
    """Whether ``request`` is a name :func:`new_request` drew (a checkpoint names it)."""
    nonce, check = request[:16], request[16:]
    return check == hashlib.sha256(_REQUEST_LABEL + nonce.encode()).hexdigest()[:16]


def may_commit(named: str | None, request: str | None) -> bool:
    """Whether a checkpoint naming ``named`` (None: written before names) can be the
    one the SPM's increment ``request`` (None: the SPM names none) committed."""
    if named is not None:
        return named == request
    return request is None or not drawn_here(request)


def checkpoint_name(round: int, counter: int, request: str | None = None) -> str:
    """The file name of the checkpoint of ``round`` at SPM counter value ``counter``,
    committed by the increment named ``request``."""
    named = f"-{request[:16]}" if request else ""
    return f"checkpoint-r{round:08d}-c{counter:010d}{named}.secfl"


def parse_checkpoint_name(name: str) -> tuple[int, int] | None:
    """``(round, counter)`` as a checkpoint's file name says, or None for another name."""
    match = _NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def request_in_name(name: str) -> str | None:
    """The ``request[:16]`` a checkpoint's file name carries, or None."""
    match = _NAME.fullmatch(name)
    return match.group(3) if match else None
