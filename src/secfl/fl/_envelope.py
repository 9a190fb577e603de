"""Freshness of global models: a signed envelope binding a model to its policy, round
and SPM counter value.

The aggregator seals every global model it sends (:func:`seal_model`) with its key
(from the SPM, certified by the policy's CA); a collaborator opens it
(:func:`open_model`) with the aggregator's public key or certificate and refuses a
model that is not signed by that key, is for another policy, whose round or counter
is not newer than the last one it accepted (a replayed old model), or whose payload
is not the one signed. Each refusal is one line that starts with the check's name:
``format:``, ``signature:``, ``policy:``, ``freshness:`` or ``digest:``.

Wire format (version 1), one byte string::

    magic     8 bytes   b"SECFLMDL"
    hlen      4 bytes   big-endian length of the header (at most 64 KiB)
    header    hlen      canonical JSON (sorted keys, no spaces, UTF-8), see below
    slen      2 bytes   big-endian length of the signature (at most 512)
    signature slen      over SIGNING_CONTEXT || header
    payload   rest      the model as safetensors bytes

    header = {"format": "secfl-model/v1", "alg": "ed25519" | "ecdsa-p256-sha256",
              "policy_digest": str, "round": int, "counter": int,
              "params_sha256": hex SHA-256 of the payload, "params_size": int,
              "created_at": ISO-8601 UTC}

Ed25519 signs ``SIGNING_CONTEXT || header`` directly; ECDSA P-256 signs it with
SHA-256 (DER signature). The header names the algorithm and it must match the key
type, so a signature cannot be reinterpreted under another algorithm. A transport
may send :meth:`SignedModel.prefix` (everything before the payload) in its first
message and stream the payload after it, never building the concatenation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secfl._internal.buffers import Frozen, frozen
from secfl._internal.canonical import canonical_json
from secfl.errors import FlError

__all__ = [
    "ALG_ECDSA_P256",
    "ALG_ED25519",
    "FORMAT",
    "MAGIC",
    "MAX_HEADER",
    "MAX_SIGNATURE",
    "SIGNING_CONTEXT",
    "ModelEnvelope",
    "PrivateKey",
    "PublicKey",
    "SignedModel",
    "open_model",
    "read_unverified",
    "seal_model",
]

MAGIC = b"SECFLMDL"
FORMAT = "secfl-model/v1"
SIGNING_CONTEXT = b"secfl/model-envelope/v1\n"
MAX_HEADER = 64 << 10
MAX_SIGNATURE = 512
ALG_ED25519 = "ed25519"
ALG_ECDSA_P256 = "ecdsa-p256-sha256"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class ModelEnvelope:
    """What the aggregator's signature says about a global model."""

    policy_digest: str
    round: int
    counter: int
    params_sha256: str
    params_size: int
    created_at: str
    alg: str


@dataclass(frozen=True)
class SignedModel:
    """A sealed global model: the signed header, the signature and the payload."""

    header: bytes
    signature: bytes
    payload: Frozen  # bytes, or a read-only view of a model nothing writes (no copy)

    def prefix(self) -> bytes:
        """Everything before the payload (magic, header, signature, with lengths)."""
        return (
            MAGIC
            + struct.pack(">I", len(self.header))
            + self.header
            + struct.pack(">H", len(self.signature))
            + self.signature
        )

    def to_bytes(self) -> bytes:
        """The whole wire form (see the module docstring)."""
        return self.prefix() + self.payload

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> SignedModel:
        """Split the wire form; ``format:`` :class:`FlError` when it is malformed."""
        view = memoryview(blob).cast("B")
        if len(view) < len(MAGIC) + 4 or bytes(view[: len(MAGIC)]) != MAGIC:
            raise FlError("format: not a secfl signed model (bad magic)")
        at = len(MAGIC)
        (hlen,) = struct.unpack_from(">I", view, at)
        at += 4
        if hlen > MAX_HEADER or at + hlen + 2 > len(view):
            raise FlError(f"format: header length {hlen} does not fit")
        header = bytes(view[at : at + hlen])
        at += hlen
        (slen,) = struct.unpack_from(">H", view, at)
        at += 2
        if slen > MAX_SIGNATURE or at + slen > len(view):
            raise FlError(f"format: signature length {slen} does not fit")
        signature = bytes(view[at : at + slen])
        return cls(header=header, signature=signature, payload=bytes(view[at + slen :]))


def _alg_of(key: Any) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ALG_ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return ALG_ECDSA_P256
    raise FlError(f"signature: unsupported key type {type(key).__name__} (use Ed25519 or P-256)")


def _canonical(document: dict[str, Any]) -> bytes:
    return canonical_json(document)


def _counter(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise FlError(f"format: {what} must be a non-negative integer, not {value!r}")
    return value


def seal_model(
    params_bytes: bytes | bytearray | memoryview,
    *,
    policy_digest: str,
    round: int,
    counter: int,
    key: PrivateKey,
    created_at: datetime | None = None,
) -> SignedModel:
    """Sign ``params_bytes`` (safetensors) for ``policy_digest``, ``round`` and the SPM
    ``counter`` value with the aggregator's Ed25519 or ECDSA P-256 private ``key``."""
    alg = _alg_of(key)
    if not isinstance(policy_digest, str) or not policy_digest:
        raise FlError("format: the policy digest must be a non-empty string")
    when = (created_at or datetime.now(UTC)).astimezone(UTC)
    header = _canonical(
        {
            "format": FORMAT,
            "alg": alg,
            "policy_digest": policy_digest,
            "round": _counter(round, "the round"),
            "counter": _counter(counter, "the counter"),
            "params_sha256": hashlib.sha256(params_bytes).hexdigest(),
            "params_size": len(params_bytes),
            "created_at": when.isoformat().replace("+00:00", "Z"),
        }
    )
    message = SIGNING_CONTEXT + header
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(message)
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    return SignedModel(header=header, signature=signature, payload=frozen(params_bytes))


def read_unverified(blob: bytes | bytearray | memoryview) -> tuple[bytes, ModelEnvelope]:
    """The payload and envelope without a signature check: --insecure mode only."""
    signed = SignedModel.from_bytes(blob)
    envelope = _parse_header(signed.header)
    if hashlib.sha256(signed.payload).hexdigest() != envelope.params_sha256:
        raise FlError("digest: the payload's SHA-256 is not the one in the header")
    return bytes(signed.payload), envelope  # (received: bytes already, no copy)


def _public_key(key: PublicKey | x509.Certificate) -> PublicKey:
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    if isinstance(public, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise FlError(
            "signature: give the aggregator's public key or certificate, not its private key"
        )
    _alg_of(public)
    assert isinstance(public, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)
    return public


def _parse_header(header: bytes) -> ModelEnvelope:
    try:
        doc = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FlError("format: the header is not UTF-8 JSON") from None
    fields = {
        "format",
        "alg",
        "policy_digest",
        "round",
        "counter",
        "params_sha256",
        "params_size",
        "created_at",
    }
    if not isinstance(doc, dict) or set(doc) != fields:
        raise FlError("format: the header does not have the secfl-model/v1 fields")
    if doc["format"] != FORMAT:
        raise FlError(f"format: unknown format {doc['format']!r}")
    for name in ("alg", "policy_digest", "params_sha256", "created_at"):
        if not isinstance(doc[name], str):
            raise FlError(f"format: header field {name!r} is not a string")
    return ModelEnvelope(
        policy_digest=doc["policy_digest"],
        round=_counter(doc["round"], "the round"),
        counter=_counter(doc["counter"], "the counter"),
        params_sha256=doc["params_sha256"],
        params_size=_counter(doc["params_size"], "the payload size"),
        created_at=doc["created_at"],
        alg=doc["alg"],
    )


def open_model(
    blob: bytes | bytearray | memoryview | SignedModel,
    *,
    public_key: PublicKey | x509.Certificate,
    policy_digest: str,
    last_round: int | None,
    last_counter: int | None,
    allow_same_round: bool = False,
    resend_of: ModelEnvelope | None = None,
) -> tuple[bytes, ModelEnvelope]:
    """The payload and envelope of a sealed model, after every check passes.

    Checks, in order: the wire format; the signature, with ``public_key`` (the
    aggregator's key, or its certificate, whose chain the TLS layer has checked);
    the policy; freshness: the counter must be greater than ``last_counter`` and the
    round greater than ``last_round`` (``None``: nothing accepted yet; with
    ``allow_same_round`` a resend of the same round under a newer counter, e.g. a
    round retried after a missed quorum, is accepted), except that the very model
    accepted last (``resend_of``: same policy, round, counter and payload digest) may
    come again, as when a round is retried or a restarted aggregator resends it;
    the payload's size and SHA-256.
    """
    signed = blob if isinstance(blob, SignedModel) else SignedModel.from_bytes(blob)
    public = _public_key(public_key)
    alg = _alg_of(public)
    message = SIGNING_CONTEXT + signed.header
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signed.signature, message)
        else:
            public.verify(signed.signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise FlError(
            "signature: the model is not signed by the aggregator's key "
            "(another key, or a modified header)"
        ) from None
    envelope = _parse_header(signed.header)
    if envelope.alg != alg:
        raise FlError(f"signature: the header names {envelope.alg}, the key is {alg}")
    if envelope.policy_digest != policy_digest:
        raise FlError(
            f"policy: the model is for policy {envelope.policy_digest[:16]}..., "
            f"not {policy_digest[:16]}..."
        )
    same = resend_of is not None and (
        (resend_of.policy_digest, resend_of.round, resend_of.counter, resend_of.params_sha256)
        == (envelope.policy_digest, envelope.round, envelope.counter, envelope.params_sha256)
    )
    if same:
        last_counter = last_round = None
    if last_counter is not None and envelope.counter <= last_counter:
        raise FlError(
            f"freshness: the model's counter {envelope.counter} is not newer than the last "
            f"accepted {last_counter} (a replayed or old model)"
        )
    if last_round is not None and (
        envelope.round < last_round or (envelope.round == last_round and not allow_same_round)
    ):
        raise FlError(
            f"freshness: the model's round {envelope.round} is not newer than the last "
            f"accepted round {last_round} (a replayed or old model)"
        )
    if len(signed.payload) != envelope.params_size:
        raise FlError(
            f"digest: the payload has {len(signed.payload)} bytes, "
            f"the envelope signs {envelope.params_size}"
        )
    digest = hashlib.sha256(signed.payload).hexdigest()
    if not hmac.compare_digest(digest, envelope.params_sha256):
        raise FlError("digest: the payload's SHA-256 is not the one the aggregator signed")
    return bytes(signed.payload), envelope  # (received: bytes already, no copy)
