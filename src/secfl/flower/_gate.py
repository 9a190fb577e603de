"""The SuperLink's gate: the only part of a Flower SuperLink the network reaches.

Flower 1.41 serves its Fleet API (SuperNodes), Control API (``flwr run``, node
registration, logs, artifacts) and Runtime API (the ServerApp's own connection) on
one HTTP port, and its open-source Control API authenticates nobody: whoever reaches
that port can register a SuperNode key of their own, submit any app, read the logs
or take the ServerApp's task. Under secfl the SuperLink listens on loopback inside
its TEE, and this gate, in the same TEE and with the same certificate, forwards to
it exactly the Fleet API's calls (``POST /v1/fleet/<call>`` for the calls a SuperNode
makes); everything else is answered 404 in one line and never reaches Flower.

A Fleet call passes only if the SuperNode key it names (Flower's ``flwr-public-key``
header) is one of the policy's attested nodes, and with mutual TLS only if it is the
key of the site whose certificate the connection presented (``nodes.pem`` names each
key's site): a key taken from one site's TEE does not pass through another's
attested relay. Any other is answered 403 here. Flower
then checks the header's signature and that the key is registered. The gate's own
check matters because registration is not the gate's: whoever reaches the
SuperLink's loopback Control API can register a key of their own, and Flower would
let that key join the run (the wrapper also watches the registry and removes such
keys, :mod:`secfl.flower._superlink`).

Requests are bounded (:data:`MAX_BODY` each, :data:`MAX_BUFFERED` together), no
redirect is followed, and hop-by-hop headers are dropped; the SuperNodes'
authentication headers (a signed timestamp) pass through untouched. The hop to
Flower is TLS on loopback, verified against the policy's Flower CA. How the gate is
served, and the headers it reads and writes: :mod:`secfl.flower._gate_http`.
"""

from __future__ import annotations

import hashlib
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Mapping

import httpx

from secfl._internal.httpparser import PEER_CERT
from secfl._internal.values import quoted
from secfl.errors import StaleRevocations, TransportError
from secfl.fl._peers import Peer
from secfl.flower._gate_http import (
    _HOP,
    _OWN,
    NODE_KEY_HEADER,
    Receive,
    Scope,
    Send,
    _answer,
    _declared_length,
    _node_key,
    serve,
    server_context,
)

__all__ = [
    "FLEET_CALLS",
    "MAX_BODY",
    "NODE_KEY_HEADER",
    "STALL_BYTES",
    "STALL_SECONDS",
    "FleetGate",
    "serve",
    "server_context",
]

#: The Fleet API calls of flwr 1.41 (``flwr.superlink.routers.fleet.router``).
FLEET_CALLS = frozenset({
    "register-node", "activate-node", "deactivate-node", "unregister-node",
    "send-node-heartbeat", "pull-messages", "push-messages", "get-run", "get-fab",
    "push-object", "pull-object", "confirm-message-received",
})  # fmt: skip
#: The largest request the gate forwards: Flower sends models in object chunks of
#: 5 MB (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``); the rest of the Fleet API is small.
MAX_BODY = 16 << 20
#: The most request bytes the gate holds at once, all connections together. A node's
#: key is public (the policy lists it), so anyone who reaches the gate can send bodies
#: that name one: 256 connections of MAX_BODY each held 4 GiB in the SuperLink's TEE.
#: Past the budget a request is answered 503 (Flower's SuperNodes retry), and what it
#: held goes at once. 64 requests of the largest size, 12 of Flower's 5 MB chunks each.
MAX_BUFFERED = 1 << 30
#: The first bytes of each request, which the budget does not count: uploads that
#: stall to hold the budget cannot keep a SuperNode's small calls (heartbeats, pulls)
#: out, and the connection cap bounds what they hold (256 of them: 256 MiB).
FREE_BYTES = 1 << 20
#: A request that has not taken in :data:`STALL_BYTES` more of its body for this long
#: (seconds) is stalled: when the budget is short, the longest stalled requests are
#: dropped (503 if they go on) to make room, so uploads that stall holding the budget
#: delay nobody's large push. Progress is counted in bytes, not messages: a request
#: that trickles a byte a second is as stalled as one that sends nothing (the review
#: of the first rule held the budget that way, and the rule dropped honest uploads
#: that paused instead). To hold the budget, an upload must keep moving at 512 KiB/s,
#: and then it ends within MAX_BODY's 32 s.
STALL_SECONDS = 2.0
STALL_BYTES = 1 << 20
#: What :meth:`FleetGate._peer` gives for a request it refused (and answered).
_REFUSED = object()
#: Refused keys the gate names in its log, each once (a flood of fresh keys adds no lines).
_NAMED_REFUSALS = 64


class _Held:
    """A request's body as it comes in, and what of it the budget counts."""

    __slots__ = ("counted", "dropped", "last", "mark", "pieces")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.counted = 0
        self.dropped = False
        #: When the body last moved on by STALL_BYTES, and its size then.
        self.last, self.mark = time.monotonic(), 0

    def progress(self, size: int) -> None:
        if size - self.mark >= STALL_BYTES:
            self.last, self.mark = time.monotonic(), size


class FleetGate:
    """An ASGI app forwarding the Fleet API to ``upstream`` (``https://127.0.0.1:PORT``)."""

    def __init__(
        self,
        upstream: str,
        context: ssl.SSLContext,
        nodes: Mapping[bytes, str | None] | Iterable[bytes],
        *,
        max_buffered: int = MAX_BUFFERED,
        peers: Callable[[bytes | None], object] | None = None,
    ) -> None:
        # the loopback hop inside the TEE: ``context`` checks the SuperLink's
        # certificate against the policy's Flower CA and its service name
        # (secfl.flower._tls.loopback_context)
        self.upstream = upstream.rstrip("/")
        self.context = context
        #: The attested SuperNodes' keys (SPKI PEM), each with the service (site) whose
        #: certificate alone may present it, where the policy names one (nodes.pem).
        self.nodes: dict[bytes, str | None] = (
            dict(nodes) if isinstance(nodes, Mapping) else dict.fromkeys(nodes)
        )
        #: With mutual TLS, the check of the certificate a request's connection
        #: presented (secfl.flower._attested.AttestedTls.check), on every request.
        self.peers = peers
        self.client: httpx.AsyncClient | None = None
        self.forwarded = 0
        self.refused = 0
        self.named: set[str] = set()
        self._reported = (0, time.monotonic())  # refusals counted by the last report
        self.max_buffered = max_buffered
        #: Request bytes held now, all connections together (the event loop's thread
        #: alone changes it).
        self.buffered = 0
        #: The requests whose bodies are coming in now (the event loop's thread alone).
        self._held: set[_Held] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        peer = await self._peer(scope, send)
        if peer is _REFUSED:
            return
        path = str(scope.get("path", ""))
        call = path.removeprefix("/v1/fleet/")
        if (
            scope.get("method") != "POST"
            or not path.startswith("/v1/fleet/")
            or call not in FLEET_CALLS
            or scope.get("query_string")
        ):
            self.refused += 1
            await _answer(
                send,
                404,
                "gate: only the Fleet API is served here; the Control and Runtime APIs stay "
                "inside the SuperLink's TEE",
            )
            return
        # the headers as they stand now, checked and forwarded alike: uvicorn appends a
        # chunked request's trailers to the same list once the body has been read
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in _HOP]
        key = _node_key(headers)
        if key is None or key not in self.nodes:
            self.refused += 1
            self._name(key)
            await _answer(
                send,
                403,
                "gate: the request's SuperNode key is not one of the policy's attested nodes",
            )
            return
        site = self.nodes[key]
        if site is not None and isinstance(peer, Peer) and peer.service != site:
            # a key stolen from one site's TEE (say one the board revoked) must not
            # pass on the attested connection of another
            self.refused += 1
            why = (f"the SuperNode key of {quoted(site)} came on a connection of "
                   f"{quoted(peer.service)}: a site signs with its own node key only")  # fmt: skip
            self._say(why)
            await _answer(send, 403, f"gate: {why}", close=True)
            return
        held = _Held()
        self._held.add(held)
        declared = _declared_length(scope.get("headers", []))
        size = 0  # the body's bytes so far
        try:
            while True:
                message = await receive()
                if message.get("type") != "http.request":  # the client went away mid-body:
                    return  # a truncated request is never forwarded as if it were whole
                if held.dropped:
                    self.refused += 1
                    await _answer(send, 503, "gate: this request stalled and was dropped to "
                                  "make room for others; try again", retry=True)  # fmt: skip
                    return
                piece = bytes(message.get("body", b""))
                if size + len(piece) > MAX_BODY:
                    await _answer(send, 413, f"gate: request larger than {MAX_BODY} bytes")
                    return
                size += len(piece)
                held.progress(size)
                more = max(0, size - FREE_BYTES) - held.counted
                if self.buffered + more > self.max_buffered:
                    # room for the rest of a body of declared length, not only this
                    # piece: else the stalled would be dropped for a request refused later
                    rest = (
                        more if declared is None else max(0, declared - FREE_BYTES) - held.counted
                    )
                    self._drop_stalled(
                        self.buffered + max(more, rest) - self.max_buffered, keep=held
                    )
                if self.buffered + more > self.max_buffered:
                    self.refused += 1
                    await _answer(
                        send, 503, "gate: too many requests under way; try again", retry=True
                    )
                    return
                held.pieces.append(piece)
                held.counted += more
                self.buffered += more
                if not message.get("more_body"):
                    break
            self._held.discard(held)  # whole: never dropped now
            if await self._peer(scope, send) is _REFUSED:  # again: revoked while it uploaded?
                return
            body = b"".join(held.pieces)  # one copy, then the pieces go
            held.pieces.clear()
            await self._forward(path, body, headers, send)
        finally:
            self._held.discard(held)
            held.pieces.clear()
            self.buffered -= held.counted
            held.counted = 0

    async def _peer(self, scope: Scope, send: Send) -> object:
        """With mutual TLS, the peer whose certificate the request's connection
        presented, or :data:`_REFUSED` if it is refused now (then answered 403, and the
        connection closed: a client polling on
        it, as Flower does after a 403, would never come back with a renewed one). While
        the revocation list is stale nobody is accepted, with 503 and Retry-After:
        Flower's SuperNodes retry that, whereas a 403 reads to them as a run no longer
        running, and they dropped the replies they were pushing (found by a review)."""
        if self.peers is None:
            return None
        try:
            return self.peers(scope.get(PEER_CERT))
        except StaleRevocations as exc:
            self.refused += 1
            self._say(str(exc))
            await _answer(send, 503, f"gate: {exc}", retry=True, close=True)
            return _REFUSED
        except TransportError as exc:
            self.refused += 1
            self._say(str(exc))
            await _answer(send, 403, f"gate: {exc}", close=True)
            return _REFUSED

    def _drop_stalled(self, need: int, *, keep: _Held) -> None:
        """Let go of the bodies of requests stalled longest (:data:`STALL_SECONDS`)
        until ``need`` bytes of the budget are free; none if the stalled ones together
        hold less (dropping them would admit nothing). Each is answered 503 if it goes
        on; the guard's body deadline closes it if not. ``keep``, the request asking,
        is never one of them (a slow one dropped itself, then forwarded what was left
        of its body as if it were whole: found by a review)."""
        stalled_before = time.monotonic() - STALL_SECONDS
        stalled = sorted(
            (h for h in self._held if h is not keep and h.last < stalled_before and h.counted),
            key=lambda h: h.last,
        )
        if sum(h.counted for h in stalled) < need:
            return
        for victim in stalled:
            if need <= 0:
                return
            self._held.discard(victim)
            victim.dropped = True
            victim.pieces.clear()
            self.buffered -= victim.counted
            need -= victim.counted
            victim.counted = 0

    async def _forward(
        self, path: str, body: bytes, headers: list[tuple[bytes, bytes]], send: Send
    ) -> None:
        client = self._client()
        try:
            reply = await client.post(self.upstream + path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            await _answer(send, 502, f"gate: the SuperLink did not answer: {type(exc).__name__}")
            return
        self.forwarded += 1
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in reply.headers.multi_items()
            if k.lower().encode("latin-1") not in _HOP | _OWN
        ]
        content = reply.content
        out.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": reply.status_code, "headers": out})
        await send({"type": "http.response.body", "body": content})

    def report(self, every: float = 60.0) -> None:
        """Logs how many calls the gate refused since the last report, at most once every
        ``every`` seconds (the first refused keys are named as they come, a flood of
        fresh ones is only counted)."""
        count, at = self._reported
        if self.refused > count and time.monotonic() - at >= every:
            print(f"secfl: gate: refused {self.refused - count} calls in the last "
                  f"{time.monotonic() - at:.0f} s ({self.refused} in all)",
                  file=sys.stderr, flush=True)  # fmt: skip
            self._reported = (self.refused, time.monotonic())

    def _name(self, key: bytes | None) -> None:
        digest = "none" if key is None else hashlib.sha256(key).hexdigest()
        self._say(f"refused a SuperNode key not in the policy (sha256 {digest})")

    def _say(self, line: str) -> None:
        """Log a refusal, each reason once (a flood of fresh ones is only counted)."""
        if line not in self.named and len(self.named) < _NAMED_REFUSALS:
            self.named.add(line)
            print(f"secfl: gate: {line}", file=sys.stderr, flush=True)

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(
                verify=self.context,
                timeout=httpx.Timeout(300.0, connect=10.0),
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        return self.client

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
