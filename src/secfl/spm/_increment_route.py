"""The counter increment served in front of FastAPI: the SPM's hot path.

An aggregator increments its policy's counter once a round, and with rounds of tens
of milliseconds that request is most of the SPM's work. FastAPI's layers (seven
middlewares, dependency solving, response validation) cost more CPU than the
increment's own checks and write. :class:`IncrementRoute` is an ASGI layer that
answers a well-formed ``POST /v1/policies/{name}/counters/{counter}/increment``
itself, with the same checks and the same answers, and hands everything else to the
FastAPI application, unchanged.

Well-formed means: path names that match ``NAME``, one ``Authorization`` header of at
most 256 characters, one ``Content-Type: application/json`` header, at most one
``Content-Length`` of at most ``max_body`` (a larger one is refused unread), and a body
of at most ``max_body`` bytes that ``json.loads`` reads and :class:`IncrementIn`
accepts (as FastAPI parses and validates it; any exception, a ``RecursionError`` from
deep nesting too, makes it FastAPI's). Any other request, whatever is wrong with it,
goes to FastAPI with its body replayed, so that every refusal of a malformed request
is FastAPI's own (``tests/spm/test_increment_route.py`` compares the two answers).
The increment itself is :meth:`secfl.spm._service.Spm.increment_async`, as the
FastAPI route calls it; its refusals answer ``{"error": ...}`` with their status,
as :func:`secfl.spm._app.create_app`'s handlers do.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from secfl.errors import Refused, SecflError
from secfl.spm._api_models import NAME, IncrementIn
from secfl.spm._apierrors import refusal_message
from secfl.spm._service import Spm

__all__ = ["IncrementRoute"]

log = logging.getLogger("secfl.spm")

_PATH = re.compile(r"/v1/policies/([^/]+)/counters/([^/]+)/increment")
_NAME = re.compile(NAME)
#: FastAPI's ``Header(max_length=256)`` on ``Authorization``.
_MAX_AUTHORIZATION = 256


class IncrementRoute:
    """ASGI layer: a well-formed increment answered here, anything else by ``app``."""

    def __init__(self, app: ASGIApp, spm: Spm, max_body: int) -> None:
        self.app = app
        self.spm = spm
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        if match is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        if not _length_fits(scope, self.max_body):  # FastAPI refuses it before reading
            await self.app(scope, receive, send)
            return
        body, complete = await _read(receive, self.max_body)
        parsed = _parse(match, scope, body) if complete else None
        if parsed is None:  # FastAPI answers it, refusals and all
            await self.app(scope, _replay(body, complete, receive), send)
            return
        name, counter, token, doc = parsed
        try:
            value = await self.spm.increment_async(
                token, name, counter, doc.expect,
                dict(doc.round) if doc.round is not None else None,
                request=doc.request,
            )  # fmt: skip
        except Refused as exc:
            busy = {"Retry-After": "1"} if exc.status == 503 else None
            await _answer(scope, send, exc.status, {"error": str(exc)}, busy)
            return
        except SecflError as exc:
            await _answer(scope, send, 400, {"error": str(exc)})
            return
        except Exception:
            log.exception("internal: the increment of %s/%s failed", name, counter)
            await _answer(scope, send, 500, {"error": refusal_message(500, self.max_body)})
            return
        await _answer(scope, send, 200, {"counter": counter, "value": value})


def _length_fits(scope: Scope, limit: int) -> bool:
    """Whether the request announces no ``Content-Length``, or one valid integer of at
    most ``limit`` bytes (anything else is FastAPI's to refuse, unread)."""
    lengths = [value for key, value in scope["headers"] if key == b"content-length"]
    if not lengths:
        return True
    digits = re.fullmatch(rb"[0-9]{1,12}", lengths[0])  # ASCII digits ("²" is a digit too)
    return len(lengths) == 1 and digits is not None and int(lengths[0]) <= limit


async def _read(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request's body, and whether it is all of it: reading stops past ``limit``
    bytes (FastAPI then refuses the request with its 413) or at a disconnect."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), False
        part = message.get("body", b"")
        size += len(part)
        parts.append(part)
        if size > limit:
            return b"".join(parts), False
        if not message.get("more_body", False):
            return b"".join(parts), True


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """``receive`` for the application: the body read so far, then the rest as it comes."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay


def _parse(
    match: re.Match[str], scope: Scope, body: bytes
) -> tuple[str, str, str, IncrementIn] | None:
    """(policy, counter, session token, body) of a well-formed increment, else None."""
    name, counter = match.group(1), match.group(2)
    if not _NAME.fullmatch(name) or not _NAME.fullmatch(counter):
        return None
    authorization: list[bytes] = []
    content_type: list[bytes] = []
    for key, value in scope["headers"]:
        if key == b"authorization":
            authorization.append(value)
        elif key == b"content-type":
            content_type.append(value)
    if len(authorization) != 1 or content_type != [b"application/json"]:
        return None
    try:
        header = authorization[0].decode("latin-1")
        doc: Any = json.loads(body)
        parsed = IncrementIn.model_validate(doc)
    except Exception:  # ValueError, ValidationError, RecursionError (deep nesting)...
        return None  # ...whatever FastAPI says of it is the answer
    if len(header) > _MAX_AUTHORIZATION:
        return None
    token = header.removeprefix("Bearer ").strip()
    if not token:
        return None
    return name, counter, token, parsed


async def _answer(
    scope: Scope,
    send: Send,
    status: int,
    doc: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    """``doc`` as FastAPI's handlers answer it (Starlette's ``JSONResponse``)."""
    await JSONResponse(doc, status_code=status, headers=headers)(scope, _no_body, send)


async def _no_body() -> Message:  # a response reads nothing (the body was read)
    return {"type": "http.disconnect"}
