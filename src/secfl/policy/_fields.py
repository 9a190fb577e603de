"""The policy schema's building blocks: the strict base model, bounded names and texts.

Policies come from anyone who can reach the SPM, so every name, list and text of the
schema (:mod:`secfl.policy._model`) is bounded by the types and limits here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_CLAIM_INT",
    "MAX_FILE_TEXT",
    "MAX_ITEMS",
    "MAX_MEMBERS",
    "MAX_PEM",
    "MAX_TEXT",
    "NAME",
    "Hex",
    "Name",
    "Names",
    "Pem",
    "StrictModel",
]

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME, max_length=128)]
Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]*$", max_length=256)]

#: Bounds of the schema: lists of names, board members, PEM text, injected text.
MAX_ITEMS = 256
MAX_MEMBERS = 64
MAX_PEM = 16384
MAX_TEXT = 65536
#: Injected files may hold whole configuration files.
MAX_FILE_TEXT = 262144
#: A claim field's integer value (SVNs, SNP policy bits): an unsigned 64-bit number.
MAX_CLAIM_INT = 2**64 - 1

Names = Annotated[list[Name], Field(max_length=MAX_ITEMS)]
Pem = Annotated[str, Field(max_length=MAX_PEM)]


class StrictModel(BaseModel):
    """A part of a policy: unknown fields are refused, and it never changes once valid."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
