"""pydantic's validation errors as one line a policy's author reads: the field's path
as written in the document (``services[1].inject.env.KEY``), the first error that
says most, and how many more there are."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, JsonValue, ValidationError
from pydantic.fields import FieldInfo

from secfl.policy._references import key_path

__all__ = ["squeezed", "validation_message"]


def validation_message(exc: ValidationError, root: type[BaseModel], prefix: str) -> str:
    """One line for a pydantic error: ``prefix: field.path: what is wrong``.

    The first error is reported (others are counted): after fixing it the
    author runs the check again. pydantic's ``loc`` tuples are rewritten into
    the path syntax people read — ``services[1].inject.env.KEY`` — dropping the
    union tags pydantic inserts (``aes-256`` in ``secrets[0].aes-256.size``,
    ``str`` or ``dict[...]`` for plain unions) by walking ``root``'s types
    along the location.
    """
    # An unknown field first: a misspelt field is also reported as a missing
    # one, and the misspelling is what the author needs to see. A value of a
    # union (``str | dict``) fails once per member: the member it was meant as
    # (the error that is not a type mismatch, else the deepest) says most.
    errors = sorted(exc.errors(include_url=False), key=_importance)
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return f"{prefix}: invalid"
    lines = [_describe(error, root) for error in errors]
    path, message = lines[0]
    seen = {path}
    if errors[0]["type"] == "extra_forbidden" and "(did you mean '" in message:
        # The misspelt field's "missing" twin is explained by the suggestion.
        suggested = message.split("(did you mean '")[1].split("'")[0]
        seen.add(path[: len(path) - len(key_path(str(errors[0]["loc"][-1])))] + key_path(suggested))
    extra = len({p for p, _ in lines} - {p.removeprefix(".") for p in seen})
    more = f" (and {extra} more error{'s' if extra > 1 else ''})" if extra else ""
    where = f"{path}: " if path else ""
    return f"{prefix}: {where}{message}{more}"


def _importance(error: Any) -> tuple[bool, bool, int]:
    kind = str(error.get("type", ""))
    mismatch = kind.endswith("_type") and len(error.get("loc", ())) > 0
    return kind != "extra_forbidden", mismatch, -len(error.get("loc", ())) if mismatch else 0


def _describe(error: Any, root: type[BaseModel]) -> tuple[str, str]:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    is_key = bool(loc) and loc[-1] == "[key]"
    path, parent = _path(loc[:-1] if is_key else loc, root)
    message = str(error.get("msg", "invalid"))
    if kind == "extra_forbidden":
        message = "unknown field"
        if isinstance(parent, type) and issubclass(parent, BaseModel) and loc:
            close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
    elif kind == "missing":
        message = "missing required field"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        field = str(ctx.get("discriminator", "kind")).strip("'\"")
        path = f"{path}.{field}" if path else field
        if kind == "union_tag_invalid":
            message = f"'{ctx.get('tag')}' is not one of {ctx.get('expected_tags')}"
        else:
            message = "missing required field"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "invalid-json-value":
        message = "not a JSON value (text, number, boolean, null, list or mapping; quote dates)"
    elif kind == "model_type" or kind == "model_attributes_type":
        message = "must be a mapping of fields"
    elif message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    if is_key or kind == "invalid_key":
        message = f"invalid key: {message}"
    return path, squeezed(message)


def _path(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[str, Any]:
    """``('services', 1, 'inject', 'env', 'KEY')`` -> ``services[1].inject.env.KEY``.

    Also returns the type that holds the last element (a model for a field).
    """
    out: list[str] = []
    tp: Any = root
    parent: Any = None
    i = 0
    while i < len(loc):
        item = loc[i]
        tp, discriminator = _unwrap(tp)
        if tp is JsonValue:
            # pydantic tags each JSON container it descends into: 'dict' or 'list'.
            if isinstance(item, str) and item in ("dict", "list", "str", "int", "float", "bool"):
                tp = {"dict": dict[str, JsonValue], "list": list[JsonValue]}.get(item, Any)
                i += 1
                continue
            tp = Any
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:  # Optional[X]: pydantic adds no tag
                tp = members[0]
                continue
            tp = _union_member(members, item, discriminator)
            i += 1
            continue
        parent = tp
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out.append(key_path(str(item)))
            field = tp.model_fields.get(item) if isinstance(item, str) else None
            tp = _field_type(field) if field is not None else Any
        elif origin is list and isinstance(item, int):
            out.append(f"[{item}]")
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            out.append(key_path(str(item)))
            tp = typing.get_args(tp)[1]
        else:
            out.append(f"[{item}]" if isinstance(item, int) else key_path(str(item)))
            tp = Any
        i += 1
    return "".join(out).removeprefix("."), parent


def _unwrap(tp: Any) -> tuple[Any, str | None]:
    """Strip ``Annotated``; return the type and its discriminator, if any."""
    discriminator = None
    while typing.get_origin(tp) is typing.Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, FieldInfo) and isinstance(meta.discriminator, str):
                discriminator = meta.discriminator
        tp = tp.__origin__
    return tp, discriminator


def _field_type(field: FieldInfo) -> Any:
    if isinstance(field.discriminator, str):
        return typing.Annotated[field.annotation, FieldInfo(discriminator=field.discriminator)]
    return field.annotation


def _union_member(members: list[Any], tag: Any, discriminator: str | None) -> Any:
    """The member of a union that pydantic's ``tag`` (in a ``loc``) stands for."""
    for member in members:
        if discriminator is not None:
            if isinstance(member, type) and issubclass(member, BaseModel):
                field = member.model_fields.get(discriminator)
                if field is not None and tag in typing.get_args(field.annotation):
                    return member
        elif isinstance(tag, str):
            # Constrained members are tagged ``constrained-str`` and the like.
            bare = _unwrap(member)[0]
            name = getattr(typing.get_origin(bare) or bare, "__name__", None)
            plain = tag.removeprefix("constrained-")
            if name and (plain == name or plain.startswith(f"{name}[")):
                return member
    return Any


def squeezed(text: str) -> str:
    """``text`` on one line: every run of whitespace (line breaks too) one space."""
    return " ".join(text.split())
