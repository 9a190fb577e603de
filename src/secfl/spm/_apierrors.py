"""Every refusal of the SPM's HTTP API is ``{"error": "<check>: <why>"}``, and none
echoes what the client sent.

FastAPI's own refusals are not: a failed validation is a 422 list of pydantic
errors that repeats each input (an ``Authorization`` header included), and
Starlette's body limit answers 413 in plain text (and so does its 500). Here:

- :func:`validation_message` turns pydantic's errors into one line naming the
  fields (``header.authorization: String should have at most 256 characters``),
  never their values;
- :class:`SpmApi` is FastAPI with an outer ASGI layer (:class:`JsonRefusals`)
  that rewrites any error response that is not JSON, whichever layer produced it,
  and with an OpenAPI document whose 422 answers are ``Problem`` objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "PROBLEM_SCHEMA",
    "JsonRefusals",
    "SpmApi",
    "http_refusal",
    "refusal_message",
    "validation_message",
]

#: Location parts shown as they are; anything else (a dict key, say) is ``*``.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")
_SHOWN = 3
_CHECK = re.compile(r"^[a-z][a-z0-9_.-]{0,63}: ")
PROBLEM_SCHEMA = {
    "title": "Problem",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "title": "Error"}},
}


def _part(part: Any) -> str:
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)
    return part if isinstance(part, str) and _NAME.fullmatch(part) else "*"


def validation_message(errors: Sequence[Any]) -> str:
    """One line naming the invalid fields and why, without their values."""
    parts = []
    for error in errors[:_SHOWN]:
        where = ".".join(_part(p) for p in tuple(error.get("loc", ()))[:6]) or "request"
        why = " ".join(str(error.get("msg", "invalid")).split())[:160]
        sent = error.get("input")
        if isinstance(sent, str | bytes) and len(sent) >= 4:
            text = sent if isinstance(sent, str) else sent.decode("latin-1")
            if text in why:
                why = str(error.get("type", "invalid"))[:64]
        parts.append(f"{where}: {why}")
    more = f" (and {len(errors) - _SHOWN} more)" if len(errors) > _SHOWN else ""
    return ("; ".join(parts) or "request: invalid") + more


def refusal_message(status: int, max_body: int | None) -> str:
    """The line for a refusal whose own text is not ours (Starlette's, say)."""
    if status == 413:
        limit = f" of {max_body} bytes" if max_body is not None else ""
        return f"body: larger than the limit{limit}"
    if status >= 500:
        return "internal: the SPM could not answer this request; its log has the cause"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    return f"http: {phrase}"


def http_refusal(status: int, detail: Any, max_body: int | None) -> str:
    """The line for an ``HTTPException``: its detail if it already names its check
    (``name: why``), else ``http: <detail>`` (Starlette's "Not Found", FastAPI's
    "There was an error parsing the body"); 413 and 5xx as :func:`refusal_message`."""
    text = " ".join(detail.split())[:300] if isinstance(detail, str) else ""
    if status == 413 or status >= 500 or not text:
        return refusal_message(status, max_body)
    return text if _CHECK.match(text) else f"http: {text}"


class JsonRefusals:
    """ASGI wrapper: an error response (status >= 400) that is not JSON is replaced
    by ``{"error": ...}`` with the same status."""

    def __init__(self, app: ASGIApp, max_body: int | None) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def send_json(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                status = int(message["status"])
                kind = next(
                    (v for k, v in message.get("headers", ()) if k.lower() == b"content-type"),
                    b"",
                )
                if status >= 400 and not bytes(kind).startswith(b"application/json"):
                    replaced = True
                    body = json.dumps({"error": refusal_message(status, self.max_body)}).encode()
                    headers = [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ]
                    start = {"type": "http.response.start", "status": status, "headers": headers}
                    await send(start)
                    await send({"type": "http.response.body", "body": body})
                    return
            elif replaced:
                return  # the replaced response's own body
            await send(message)

        await self.app(scope, receive, send_json)


class SpmApi(FastAPI):
    """FastAPI whose refusals are all ``{"error": ...}`` (module docstring).

    ``front``, if set, wraps the application inside :class:`JsonRefusals`: a layer
    that answers some requests itself (:mod:`secfl.spm._increment_route`)."""

    front: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        if self.front is not None:
            app = self.front(app)
        return JsonRefusals(app, self.max_body_size)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "422" in responses:
                    responses["422"] = {
                        "description": "Invalid request: the fields named, never their values",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                        },
                    }
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components.setdefault("Problem", PROBLEM_SCHEMA)
        self.openapi_schema = schema
        return schema
