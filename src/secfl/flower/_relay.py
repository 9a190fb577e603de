"""The SuperNode's relay: Flower's connections to its SuperLink, pinned to the attested one.

flower-supernode checks its SuperLink against one root file and a host name, and
gets no say in which certificate the far end holds. So under secfl it dials this
relay, on loopback inside its own TEE, over TLS with a certificate the wrapper made
for that hop (trusted by nothing else, its key in the wrapper's private RAM folder),
and the relay makes each connection to the SuperLink's gate with mutual TLS
(:mod:`secfl.flower._attested`):

- it presents this site's attested certificate: the gate admits only the policy's
  sites;
- it accepts only a certificate of the policy's identity CA for the ``superlink``
  service, unexpired, and not on the board's revocation list; every open connection
  is checked again each second, and closed once its SuperLink's certificate is
  revoked, has expired, or the list has not been read for too long.

A site whose host sends its traffic through an HTTP proxy (``https_proxy``,
``no_proxy``) still reaches its SuperLink through it: the relay asks the proxy for a
tunnel (``CONNECT``) and makes the TLS connection through it, end to end. Refusals
are logged once per reason; Flower, which sees the connection closed, tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from secfl._internal.values import quoted
from secfl.errors import FlowerError, TransportError
from secfl.flower._attested import SUPERLINK, AttestedTls

__all__ = ["Relay"]

log = logging.getLogger("secfl.flower")

#: How long a connection to the gate (TCP, proxy tunnel, TLS) may take (seconds).
CONNECT_TIMEOUT = 30.0
#: How often open connections are checked against the revocation list (seconds).
WATCH_EVERY = 1.0
#: The most connections relayed at once (Flower's SuperNode keeps a few open; each
#: takes one of the gate's 256, which all the sites share).
MAX_CONNECTIONS = 32
#: The most bytes read at once on either side.
_READ = 1 << 16
#: The largest answer head a proxy may send to CONNECT.
_PROXY_HEAD = 16 << 10


def _proxy_for(host: str) -> tuple[str, int] | None:
    """The HTTP proxy this host's environment names for ``host`` (None: direct)."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get("https") or proxies.get("all")
    if not url or urllib.request.proxy_bypass(host):
        return None
    wrong = f"flower: relay: the proxy {quoted(url)} is not http://HOST:PORT (a CONNECT proxy)"
    try:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        port = parsed.port or 80
    except ValueError:  # a port out of range or not a number, a broken IPv6 address
        raise FlowerError(wrong) from None
    if parsed.scheme != "http" or not parsed.hostname:
        raise FlowerError(wrong)
    try:  # a name DNS cannot carry failed each connection with a traceback
        parsed.hostname.encode("idna")
    except UnicodeError:
        raise FlowerError(f"{wrong}: its host name is not a valid DNS name") from None
    return parsed.hostname, port


@dataclass(eq=False)
class _Pair:
    """One relayed connection: Flower's side, the gate's side, the gate's certificate."""

    inner: asyncio.StreamWriter
    outer: asyncio.StreamWriter
    #: the gate's certificate (DER) and this site's (PEM) on this connection
    der: bytes
    mine: bytes

    def close(self) -> None:
        for writer in (self.inner, self.outer):
            if not writer.transport.is_closing():  # else closing cleanly: let it flush
                writer.transport.abort()


@dataclass
class Relay:
    """Relays loopback TLS connections to ``host:port`` over attested mutual TLS."""

    tls: AttestedTls
    host: str
    port: int
    #: Flower's side: the loopback certificate the wrapper made.
    inner: ssl.SSLContext
    service: str = SUPERLINK
    live: set[_Pair] = field(default_factory=set)
    said: set[str] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _open: int = 0  # connections being made or relayed (the event loop's thread alone)
    _proxy: tuple[str, int] | None = None

    def start(self) -> int:
        """Listen on a loopback port, in a thread of its own; returns the port."""
        self._proxy = _proxy_for(self.host)
        ready: list[int] = []
        started = threading.Event()
        loop = self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            server = await asyncio.start_server(
                self._handle, "127.0.0.1", 0, ssl=self.inner, ssl_handshake_timeout=10.0
            )
            ready.append(server.sockets[0].getsockname()[1])
            started.set()
            watch = loop.create_task(self._watch())
            try:
                async with server:
                    await server.serve_forever()
            finally:
                watch.cancel()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(serve())
            finally:  # every connection's task ends before the loop does
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="secfl-relay", daemon=True)
        self._thread.start()
        if not started.wait(30) or not ready:
            raise FlowerError("flower: relay: could not listen on loopback")
        return ready[0]

    def stop(self) -> None:
        """Close every connection and stop listening."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        def cancel() -> None:
            for pair in list(self.live):  # the pipes end as for a closed connection
                self.live.discard(pair)
                pair.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()

        with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
            loop.call_soon_threadsafe(cancel)
        thread.join(10)

    def _refuse(self, why: str) -> None:
        if why not in self.said and len(self.said) < 64:
            self.said.add(why)
            log.warning("secfl: relay: refused the SuperLink at %s:%s: %s", self.host, self.port,
                        why)  # fmt: skip

    async def _connect(
        self, context: ssl.SSLContext
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._proxy is None:
            return await asyncio.open_connection(
                self.host, self.port, ssl=context, server_hostname=self.service,
                ssl_handshake_timeout=CONNECT_TIMEOUT, limit=_READ,
            )  # fmt: skip
        sock = await self._tunnel(*self._proxy)
        try:
            return await asyncio.open_connection(
                sock=sock, ssl=context, server_hostname=self.service,
                ssl_handshake_timeout=CONNECT_TIMEOUT, limit=_READ,
            )  # fmt: skip
        except BaseException:
            sock.close()
            raise

    async def _tunnel(self, proxy_host: str, proxy_port: int) -> socket.socket:
        """A socket through the proxy to the gate (``CONNECT``), read up to the end of
        the proxy's answer and not one byte further: whatever follows is the gate's TLS
        and nothing else. (Read through a buffered stream, bytes the proxy sent after
        its answer were passed to Flower as if the attested SuperLink had sent them:
        found by a review.)"""
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (
            await loop.getaddrinfo(proxy_host, proxy_port, type=socket.SOCK_STREAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            target = f"[{self.host}]" if ":" in self.host else self.host
            await loop.sock_sendall(sock, f"CONNECT {target}:{self.port} HTTP/1.1\r\nHost: "
                                    f"{target}:{self.port}\r\n\r\n".encode("ascii"))  # fmt: skip
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                if len(head) >= _PROXY_HEAD:
                    raise TransportError("the proxy's answer to CONNECT is too long")
                byte = await loop.sock_recv(sock, 1)
                if not byte:
                    raise TransportError("the proxy closed the tunnel before answering")
                head += byte
            line = bytes(head).split(b"\r\n", 1)[0]
            status = line.split(b" ")
            if len(status) < 2 or status[1] != b"200":
                text = line[:80].decode("ascii", "replace")
                raise TransportError(f"the proxy refused the tunnel: {text}")
        except BaseException:
            sock.close()
            raise
        return sock

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:  # the relay stops: the connection ends with it
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:  # Flower keeps a few: the rest is a flood
            self._refuse(f"more than {MAX_CONNECTIONS} connections from loopback at once")
            writer.transport.abort()
            return
        self._open += 1
        try:
            await self._connected(reader, writer)
        finally:
            self._open -= 1

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # the current certificate (renewals replace it), and the one it presents
        context, mine = self.tls.client_with_cert
        try:
            outer_reader, outer = await asyncio.wait_for(
                self._connect(context), CONNECT_TIMEOUT * 2
            )
        except (OSError, ssl.SSLError, TimeoutError, TransportError) as exc:
            self._refuse(f"{type(exc).__name__}: {exc}"[:300])
            writer.transport.abort()
            return
        ssl_object = outer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            self.tls.check(der)
        except TransportError as exc:
            self._refuse(str(exc))
            outer.transport.abort()
            writer.transport.abort()
            return
        pair = _Pair(writer, outer, der or b"", mine)
        self.live.add(pair)
        try:
            await asyncio.gather(_pipe(reader, outer), _pipe(outer_reader, writer))
        finally:
            self.live.discard(pair)
            pair.close()

    async def _watch(self) -> None:
        """Close every connection whose SuperLink is no longer accepted, and every one
        made with a certificate of this site's that has since been renewed: the gate
        would refuse it once it expires, and Flower, polling on a connection it keeps
        open, would never make a new one (found by a review)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            current = self.tls.client_with_cert[1]
            for pair in list(self.live):
                try:
                    self.tls.check(pair.der)
                except TransportError as exc:
                    self._refuse(f"{exc}: connection closed")
                    self.live.discard(pair)
                    pair.close()
                    continue
                if pair.mine != current:  # renewed: Flower connects again with the new one
                    self.live.discard(pair)
                    pair.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends (then ``dst`` is closed once what it
    holds is sent) or either fails (then ``dst`` is dropped)."""
    try:
        while data := await src.read(_READ):
            dst.write(data)
            await dst.drain()
    except (OSError, ssl.SSLError):
        dst.transport.abort()
        return
    dst.close()
