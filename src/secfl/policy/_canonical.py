"""The canonical form of a policy and its digest: what the board signs.

A policy travels as YAML, which can say the same thing in many ways (comments,
key order, quoting, block or flow style, defaults written out or left implicit).
The board must approve *content*, not text, so signatures are over the digest
of a canonical form computed from the validated model:

    canonical_bytes(p) = UTF-8 of json.dumps(p.model_dump(mode="json"),
                                            sort_keys=True, separators=(",", ":"),
                                            ensure_ascii=False)
    digest(p)          = SHA-256(canonical_bytes(p)), lowercase hex

Properties:

- Same content, same digest: the dump holds every field, defaults included,
  with mapping keys sorted, so formatting, comments, key order and explicitly
  written defaults do not matter. Validation also normalises values whose
  spelling carries no meaning: PEM keys and certificates are re-encoded,
  measurements and volume tags are lowercased.
- Any semantic change, a different digest: every field is in the dump, lists
  keep their order (the order of services, secrets and board members is part
  of the document), and JSON keeps types apart (``1`` vs ``"1"`` vs ``true``).
- It is independent of transport: the YAML text, a JSON body or a database
  row all give the same bytes once validated.

The form is tied to the schema: a future field with a default appears in the
dump, so a digest is meaningful only for the schema version that computed it.
Stores keep the digest they accepted next to the document.
"""

from __future__ import annotations

import hashlib

from secfl._internal.canonical import canonical_json
from secfl.policy._model import Policy

__all__ = [
    "canonical_bytes",
    "digest",
]


def canonical_bytes(policy: Policy) -> bytes:
    """The canonical JSON encoding of ``policy`` (sorted keys, no spaces, UTF-8)."""
    return canonical_json(policy.model_dump(mode="json"))


def digest(policy: Policy) -> str:
    """SHA-256 of :func:`canonical_bytes`, as 64 lowercase hex digits."""
    return hashlib.sha256(canonical_bytes(policy)).hexdigest()
