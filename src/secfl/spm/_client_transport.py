"""The pinned connection to one SPM, and one JSON request over it.

:class:`SpmTransport` is what every :class:`~secfl.spm.client.SpmClient` call goes
through: it fetches the SPM's certificate, refuses it unless its key is the pinned
one, and then sends each request over TLS that trusts exactly that certificate. The
connection is made once for all threads, and made again (fetched and pinned again)
after the SPM restarted; a request whose answer was lost is sent again only when
that is harmless. A refusal is :class:`~secfl.errors.SpmRefused` with the SPM's own
words, on one line.
"""

from __future__ import annotations

import json
import ssl
import threading
from typing import Any, Self
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from secfl._internal.canonical import canonical_json
from secfl._internal.values import one_line
from secfl.errors import SpmError, SpmRefused
from secfl.spm._client_tls import fetch_certificate, spm_address
from secfl.spm._https import AnswerLost, ConnectFailed, PinnedHttps, RequestFailed
from secfl.spm._report_data import spki_sha256

__all__ = ["SpmTransport"]


class SpmTransport:
    """Requests to one SPM bound by the SHA-256 of its TLS key (``pin``)."""

    def __init__(self, url: str, *, pin: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.pin = pin.lower()
        self.timeout = timeout
        self._http: PinnedHttps | None = None
        self._key: ec.EllipticCurvePublicKey | None = None
        # the aggregator's overlapped commit calls from its own thread while the main
        # thread may call too: the certificate fetched (and pinned) once
        self._lock = threading.Lock()

    # --- connection -----------------------------------------------------------------------

    def _connect(self) -> PinnedHttps:
        with self._lock:
            return self._connect_locked()

    def _connect_locked(self) -> PinnedHttps:
        if self._http is None:
            pem, cert = fetch_certificate(self.url, self.timeout)
            presented = spki_sha256(cert.public_key())
            if presented != self.pin:
                raise SpmError(
                    f"spm: the SPM at {self.url} presents key {presented}, not the pinned "
                    f"{self.pin}; refusing to talk to it"
                )
            key = cert.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise SpmError("spm: the SPM's TLS key is not an EC key")
            self._key = key
            context = ssl.create_default_context(cadata=pem)
            context.keylog_filename = None  # type: ignore[assignment]  # never SSLKEYLOGFILE
            prefix = urlsplit(self.url).path.rstrip("/")  # an SPM behind a path, if any
            self._http = PinnedHttps(*spm_address(self.url), context, self.timeout, prefix=prefix)
        return self._http

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The SPM's pinned TLS key: what imported secrets are sealed to."""
        self._connect()
        assert self._key is not None
        return self._key

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _drop(self, http: PinnedHttps) -> None:
        """Forget ``http`` (unless another thread already made a new one)."""
        with self._lock:
            if self._http is http:
                self._http = None
        http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        resend: bool = False,
    ) -> Any:
        """``method path``'s JSON answer. A failure to connect is tried once more on a
        fresh connection (the SPM may have restarted with a new certificate: it is
        fetched and pinned again); a request whose answer was lost is sent again only
        if that is harmless: a read, or ``resend`` (a named compare-and-increment)."""
        try:
            body = None if json is None else canonical_json(json)
        except (TypeError, ValueError) as exc:  # NaN, say: JSON cannot carry it
            raise SpmError(f"spm: {method} {path}: the request is not JSON: {exc}") from None
        for attempt in (1, 2):
            http = self._connect()
            try:
                reply = http.request(method, path, body=body, headers=headers, params=params)
                break
            except ConnectFailed as exc:
                self._drop(http)  # the SPM restarted with a new certificate: fetch, re-pin
                lost = isinstance(exc, AnswerLost) and method != "GET" and not resend
                if lost:
                    exc = AnswerLost(f"{exc}; not sent again: the SPM may have acted on it")
                if attempt == 2 or lost:
                    raise SpmError(f"spm: {method} {path} failed: {exc}") from None
            except RequestFailed as exc:
                raise SpmError(f"spm: {method} {path} failed: {exc}") from None
        try:
            doc = _json_loads(reply.body)
        except ValueError:
            doc = {}
        if reply.status >= 400:
            message = doc.get("error") if isinstance(doc, dict) else None
            if not isinstance(message, str) or not message:
                message = f"spm: HTTP {reply.status} for {path}"
            # the server's own words, on one line with nothing a terminal would act on:
            # before the pin is checked, the server may be anyone's
            raise SpmRefused(one_line(message), reply.status)
        return doc


def _json_loads(body: bytes) -> Any:
    return json.loads(body) if body else {}
