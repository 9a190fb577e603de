"""Revocation lists are ordered by their sequence number, not by when they were asked for.

Found by a review: the aggregator kept the list of the read it *sent* last, but the SPM
may answer an earlier request from newer data (its cached answer is dropped by a
revocation; another SPM sharing the database answers from its own cache). The newer
list, answered to the earlier request, was set aside and the older one kept: a site
revoked in between was accepted until the next read (10 s). Now the SPM numbers each
list by the audit head it was read at (authenticated: the head's MAC, this SPM's
floor), the client bounds that number, and a list never replaces one of a higher
number. Real processes: `secfl spm serve` over HTTPS, a relay that holds a request."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from secfl.errors import SpmError, SpmRefused
from secfl.fl._peers import PeerPolicy
from secfl.flower._attested import AttestedTls
from secfl.policy._signatures import sign_statement
from secfl.spm._client_tls import fetch_certificate
from secfl.spm._report_data import spki_sha256
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm.client import SpmClient
from tests.spm.harness import Board, spm_with_policy, sql

from .fedkit import Background
from .refresh_kit import secure_aggregator

pytestmark = pytest.mark.timeout(120)

REVOKED = {"kind": "certificate", "subject": "abc", "reason": "key leaked"}


class HeldRelay:
    """TCP on loopback to ``port``: every connection is accepted at once (``accepted``
    is set) and passed on only once :meth:`release` is called, so what is sent
    through it reaches the SPM late, asked before what is sent directly."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.accepted, self._released = threading.Event(), threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted.set()
            threading.Thread(target=self._pass_on, args=(conn,), daemon=True).start()

    def _pass_on(self, conn: socket.socket) -> None:
        self._released.wait(60)
        far = socket.create_connection(("127.0.0.1", self.upstream))
        for a, b in ((conn, far), (far, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Balanced:
    """The SPM as the workload reaches it: its first read of the list through
    ``first``, the others through ``then`` (both real SPM clients of policy ``fed``)."""

    def __init__(self, first: SpmClient, then: SpmClient, digest: str) -> None:
        self.clients, self.digest, self.reads = [first, then], digest, 0

    def _next(self) -> SpmClient:
        self.reads += 1
        return self.clients[0] if self.reads == 1 else self.clients[1]

    def policy(self, name: str) -> dict[str, Any]:
        return {"digest": self.digest}

    def revocation_list(self, policy: str) -> tuple[int, list[dict[str, Any]]]:
        return self._next().revocation_list("fed")

    def revocations(self, policy: str) -> list[dict[str, Any]]:  # as the code before it read
        return self._next().revocations("fed")


def _signed(board: Board, statement: dict[str, str]) -> list[Any]:
    digest = revocation_digest(revocation_doc("fed", statement))
    return [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]


def test_a_list_asked_for_first_but_read_from_newer_data_wins(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reading thread asks first (its request held on the way), the round path asks
    next and is answered at once, without the revocation; the board revokes; the
    thread's request reaches the SPM then, and is answered with the revocation. The
    aggregator keeps that list: its number is higher."""
    agg, ident, _ = secure_aggregator(tmp_path, monkeypatch)
    with spm_with_policy(tmp_path / "data", sim, board) as (proc, _):
        port = int(proc.url.rsplit(":", 1)[1])
        relay = HeldRelay(port)
        try:
            with (
                SpmClient(f"https://127.0.0.1:{relay.port}", pin=proc.pin) as held,
                SpmClient(proc.url, pin=proc.pin) as direct,
            ):
                ident._spm = Balanced(held, direct, ident.policy_digest)  # type: ignore[assignment]
                assert agg.reread is not None
                thread = Background(agg.reread, "reading thread")
                thread.start()
                assert relay.accepted.wait(30)  # the thread's request is on its way
                agg.reread()  # the round path's, asked after it: nothing revoked yet
                peers = agg.server.peers
                assert peers.revoked == set()
                direct.revoke("fed", REVOKED, _signed(board, REVOKED))
                relay.release()
                thread.outcome()
                assert peers.revoked == {"abc"}, "the older list was kept"
        finally:
            relay.close()


def test_the_number_moves_with_the_list_and_is_authenticated(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """An answer from the SPM's cache keeps the number it was read at; a revocation
    gives a higher one; a database host that moves the head on (to make an old list
    look new) has the read refused."""
    with (
        spm_with_policy(tmp_path / "data", sim, board) as (proc, _),
        SpmClient(proc.url, pin=proc.pin) as client,
    ):
        first, rows = client.revocation_list("fed")
        assert rows == [] and client.revocation_list("fed")[0] == first
        client.revoke("fed", REVOKED, _signed(board, REVOKED))
        revoked, rows = client.revocation_list("fed")
        assert revoked > first and [r["subject"] for r in rows] == ["abc"]
        sql(proc.data, "UPDATE audit_head SET seq = seq + 1000")
        time.sleep(2.5)  # the answer cached before is not what is asked about here
        with pytest.raises(SpmRefused, match="integrity") as refused:
            client.revocation_list("fed")
        assert "\n" not in str(refused.value)


def test_a_list_of_a_lower_number_never_replaces_one_of_a_higher() -> None:
    """The rule, whichever order the reads were sent and answered in."""
    peers = PeerPolicy("p", {"site-1"})
    assert peers.apply_list({"abc"}, sent=5.0, sequence=10)
    assert not peers.apply_list(set(), sent=9.0, sequence=9)  # asked later, older data
    assert peers.revoked == {"abc"} and peers.read_at == 5.0
    assert peers.apply_list({"abc", "def"}, sent=1.0, sequence=11)  # asked before, newer
    assert peers.revoked == {"abc", "def"} and peers.read_at == 5.0  # as fresh as before
    assert peers.apply_list(set(), sent=7.0, sequence=11)  # the same number: both hold
    assert peers.revoked == {"abc", "def"} and peers.read_at == 7.0


def test_two_lists_of_the_same_number_are_both_in_force() -> None:
    """Found by a hostile review: the same number was taken to mean the same list, and
    the first kept. SPMs sharing a database answer from their floors as far as each has
    read the log, and the database's host may delete a revocation's row meanwhile: an
    SPM that had not yet read the revocation another SPM committed answered at the new
    head without it. That list stayed in force until the head moved on (the next
    round's commit), the revoked site accepted with it; a later answer holding the
    revocation at the same number was set aside. Now their union is in force."""
    peers = PeerPolicy("p", {"site-1"})
    assert peers.apply_list({"abc"}, sent=1.0, sequence=11)
    assert peers.apply_list({"abc", "service:site-1"}, sent=2.0, sequence=11)
    assert peers.revoked == {"abc", "service:site-1"}


def test_a_workload_reading_the_list_in_turn_keeps_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One reader (a Flower workload's gate, a collaborator's pin) asking one SPM after
    another: the second answered from its cache, older than the first's answer. The
    newer list stays, and the older answer is not a fresh read (else a host answering
    with old lists only would keep it fresh)."""
    _, ident, spm = secure_aggregator(tmp_path, monkeypatch)
    site = [{"kind": "service", "subject": "site-1", "serial": ""}]
    answers = {1: (7, site), 2: (6, []), 3: (5, site), 4: (7, [])}
    spm.revocations_of = lambda n: answers[n]
    tls: Any = SimpleNamespace(ident=ident, peers=PeerPolicy("p", {"site-1"}), checked=0.0)
    AttestedTls.read_revocations(tls)
    first = tls.checked
    AttestedTls.read_revocations(tls)
    assert tls.peers.revoked == {"service:site-1"} and tls.checked == first
    with pytest.raises(SpmError, match="^spm: the SPM answered with an older revocation list"):
        ident.revoked()  # as a collaborator's pin reads it: a failed read
    assert ident.revoked() == {"service:site-1"}  # the same number again: both lists


def _lying_spm(tmp_path: Path, answers: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp_path / "port"
    script = Path(__file__).parents[1] / "spm" / "impostor_server.py"
    server = subprocess.Popen(
        [sys.executable, str(script), str(port_file), json.dumps(answers), "--answers"]
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        assert time.monotonic() < deadline and server.poll() is None
        time.sleep(0.05)
    return server, f"https://127.0.0.1:{port_file.read_text()}"


BAD = {
    "huge": '{"sequence": 1' + "0" * 400 + ', "revocations": []}',
    "negative": '{"sequence": -1, "revocations": []}',
    "past64": '{"sequence": 9223372036854775808, "revocations": []}',
    "text": '{"sequence": "5", "revocations": []}',
    "boolean": '{"sequence": true, "revocations": []}',
    "fraction": '{"sequence": 1.5, "revocations": []}',
    "missing": '{"revocations": []}',
    "digits": '{"sequence": 1' + "0" * 5000 + ', "revocations": []}',
}


def test_a_number_out_of_bounds_is_a_one_line_refusal(tmp_path: Path) -> None:
    server, url = _lying_spm(tmp_path, {**BAD, "good": '{"sequence": 3, "revocations": []}'})
    try:
        _, cert = fetch_certificate(url, 10)
        with SpmClient(url, pin=spki_sha256(cert.public_key())) as client:
            assert client.revocation_list("good") == (3, [])
            for name in BAD:
                with pytest.raises(SpmError) as refused:
                    client.revocation_list(name)
                text = str(refused.value)
                assert text.startswith("spm: the SPM's "), (name, text)
                assert "\n" not in text and len(text) < 300, (name, text)
    finally:
        server.terminate()
        server.wait(timeout=10)
