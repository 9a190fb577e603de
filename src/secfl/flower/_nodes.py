"""The SuperLink's node registry, held to the policy's attested SuperNode keys.

The policy releases to the ``superlink`` service the public halves of the sites' node
keys (``/flower/nodes.pem``); the wrapper registers exactly those through Flower's
loopback Control API, and ``--enable-supernode-auth`` activates no other key. That
Control API authenticates nobody, though: whatever reaches the SuperLink's loopback
can register a key of its own, and Flower would let it join the run. Two checks stop
that. The gate forwards only Fleet calls whose key is the policy's
(:mod:`secfl.flower._gate`), and :class:`NodeWatch` reads the registry every few
seconds while the run lasts, unregisters any other key it finds and writes
``fl.flower.node-foreign`` to the SPM's audit log. The watch is what catches a key
used on loopback directly, past the gate; until it runs, such a key may take part
(which is why loopback must lie inside the TEE: docs/flower.md). More than
:data:`MAX_FOREIGN` such keys in one run is an attack under way, not a stray
registration, and one that could outpace the watch: it writes
``fl.flower.node-flood`` and stops the run (fail closed).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from secfl._internal.files import TooLarge, read_bounded
from secfl._internal.values import quoted
from secfl.errors import FlowerError
from secfl.flower._audit import SpmAudit
from secfl.policy._fields import NAME

__all__ = [
    "MAX_FAILURES",
    "MAX_FOREIGN",
    "SERVICE_LABEL",
    "WATCH_EVERY",
    "NodeWatch",
    "load_node_keys",
    "register",
]

#: Seconds between two reads of the registry while the run lasts.
WATCH_EVERY = 2.0
#: Foreign keys a run survives (each unregistered and audited); one more stops it.
MAX_FOREIGN = 8
#: Reads of the registry that may fail in a row (a busy SuperLink) before the run stops.
MAX_FAILURES = 5


#: The line before each key in ``nodes.pem`` that names the site it belongs to.
SERVICE_LABEL = "service: "


def load_node_keys(path: Path, *, named: bool = False) -> dict[bytes, str | None]:
    """The SuperNode public keys (PEM, concatenated), as Flower compares them (SPKI
    PEM), each with the service (site) it belongs to: the ``service: NAME`` line just
    before its PEM block (``secfl flower policy`` writes one per site), or None for a
    key without one. ``named`` refuses such a key: with mutual TLS the gate holds each
    key to the certificate of its own site."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        text = read_bounded(path, 1 << 20).decode("ascii")
    except (OSError, UnicodeDecodeError, TooLarge) as exc:
        raise FlowerError(f"flower: cannot read the node keys {path.name}: {exc}") from None
    begin, marker = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
    blocks = [b for b in text.split(marker) if begin in b]
    if not blocks:
        raise FlowerError(
            f"flower: {path.name} holds no public key: the policy injects each site's "
            "$$SECFL::NAME:pub$$ there"
        )
    keys: dict[bytes, str | None] = {}
    services: set[str] = set()
    for i, block in enumerate(blocks, 1):
        before, _, body = block.partition(begin)
        service = _service_label(before, path.name, i)
        if service is None and named:
            raise FlowerError(
                f"flower: {path.name}: key {i} names no site (a `{SERVICE_LABEL}NAME` line "
                "before it): with --mutual-tls each key is held to its site's certificate; "
                "make the policy again with `secfl flower policy`"
            )
        try:
            key = serialization.load_pem_public_key((begin + body + marker).encode())
        except ValueError:
            raise FlowerError(f"flower: {path.name} holds a key that is not PEM") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise FlowerError(f"flower: {path.name} holds a key that is not an EC key")
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if pem in keys:
            raise FlowerError(f"flower: {path.name} names a node key twice")
        if service is not None:
            if service in services:
                raise FlowerError(f"flower: {path.name} names site {quoted(service)} twice")
            services.add(service)
        keys[pem] = service
    return keys


def _service_label(before: str, name: str, i: int) -> str | None:
    """The service a ``service: NAME`` line right before key ``i`` names, if any."""
    lines = [line.strip() for line in before.splitlines() if line.strip()]
    if not lines or not lines[-1].startswith(SERVICE_LABEL):
        return None
    service = lines[-1].removeprefix(SERVICE_LABEL).strip()
    if not re.fullmatch(NAME, service):
        raise FlowerError(f"flower: {name}: key {i} names a site that is not a service name")
    return service


def register(control: Any, keys: Mapping[bytes, str | None]) -> list[int]:
    """Registers ``keys`` on the Control API ``control``, each under its site's name
    (``site-N`` for a key without one); their node IDs, in order."""
    from flwr.proto.control_pb2 import RegisterNodeRequest

    ids = []
    for i, (key, service) in enumerate(keys.items(), 1):
        name = service or f"site-{i}"
        reply = control.RegisterNode(RegisterNodeRequest(public_key=key, name=name))
        if not reply.node_id:
            raise FlowerError(f"flower: the SuperLink did not register node key {i}")
        ids.append(int(reply.node_id))
    return ids


class NodeWatch:
    """Unregisters, and audits, every registered node whose key is not the policy's;
    stops the run (:class:`FlowerError`) past :data:`MAX_FOREIGN` of them."""

    def __init__(
        self, control: Any, keys: Sequence[bytes], audit: SpmAudit, every: float = WATCH_EVERY
    ) -> None:
        self.control = control
        self.keys = frozenset(keys)
        self.audit = audit
        self.every = every
        self.removed = 0  # foreign nodes unregistered so far
        self._seen: set[int] = set()
        self._failures = 0
        self._last = float("-inf")

    def due(self) -> None:
        """:meth:`check`, if :attr:`every` seconds passed since the last. A registry that
        cannot be read is tried again next time, :data:`MAX_FAILURES` times in a row."""
        if time.monotonic() - self._last < self.every:
            return
        try:
            self.check()
        except (httpx.HTTPError, ValueError) as exc:  # unreachable, or a malformed reply
            self._failures += 1
            if self._failures >= MAX_FAILURES:
                raise FlowerError(
                    f"flower: the SuperLink's node registry could not be read {MAX_FAILURES} "
                    f"times in a row ({type(exc).__name__}): the run is stopped, since no "
                    "foreign key could be caught"
                ) from None
            return
        self._failures = 0

    def check(self) -> int:
        """Reads the registry now; returns how many foreign nodes it unregistered."""
        from flwr.proto.control_pb2 import ListNodesRequest, UnregisterNodeRequest
        from flwr.supercore.constant import NodeStatus

        self._last = time.monotonic()
        foreign = [
            info
            for info in self.control.ListNodes(ListNodesRequest()).nodes_info
            if info.public_key not in self.keys and info.status != NodeStatus.UNREGISTERED
        ]
        fresh = [info for info in foreign if int(info.node_id) not in self._seen]
        if len(self._seen) + len(fresh) > MAX_FOREIGN:
            # a flood: unregistering them one by one would let the newest outpace the watch
            self.audit.report(
                "node-flood",
                {"foreign": len(self._seen) + len(fresh), "registered_now": len(foreign)},
            )
            raise FlowerError(
                f"flower: {len(self._seen) + len(fresh)} node keys not in the policy were "
                "registered on the SuperLink's loopback Control API (more than "
                f"{MAX_FOREIGN}): the run is stopped; see fl.flower.node-foreign and "
                "fl.flower.node-flood in the audit log"
            )
        removed = 0
        for info in foreign:
            node_id = int(info.node_id)
            try:
                self.control.UnregisterNode(UnregisterNodeRequest(node_id=node_id))
            except httpx.HTTPStatusError:
                continue  # unregistered meanwhile, by whoever registered it
            removed += 1
            self.removed += 1
            if node_id in self._seen:
                continue
            self._seen.add(node_id)
            digest = hashlib.sha256(bytes(info.public_key)).hexdigest()
            self.audit.report(
                "node-foreign",
                {"node_id": str(node_id), "key_sha256": digest, "name": quoted(info.name)},
            )
            print(
                f"secfl: unregistered node {node_id} (key sha256 {digest[:16]}...): its key is "
                "not one of the policy's attested SuperNodes",
                flush=True,
            )
        return removed
