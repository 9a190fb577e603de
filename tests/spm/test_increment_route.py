"""The increment's fast path (:mod:`secfl.spm._increment_route`) answers every request
exactly as the FastAPI route does, and hands FastAPI what it does not answer, body
and all. (The SPM process tests, over real TLS, go through it on every increment.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from secfl.spm._api_models import MAX_BODY
from secfl.spm._app import create_app
from secfl.spm._increment_route import IncrementRoute
from secfl.spm._server import open_spm
from secfl.spm._service import Spm
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, make_sim, policy_document
from tests.spm.test_service import LocalClient, submit

PATH = "/v1/policies/p/counters/round/increment"
JSON = {"content-type": "application/json"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Spm, str]]:
    root = make_sim(tmp_path / "sim")
    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=tmp_path / "sim")
    board = Board.create()
    submit(spm, board, policy_document("p", board, root))
    platform = simulated.SimulatedPlatform(tmp_path / "sim")
    enrolled = enroll(LocalClient(spm), platform, "p", "aggregator", measurement=AGGREGATOR_MR)
    yield spm, enrolled.session_token
    spm.group.close()
    spm.store.close()


Answer = tuple[int, Any, str | None]


def answers(app: Any, requests: list[dict[str, Any]]) -> list[Answer]:
    """Each request POSTed to ``app`` in turn: (status, JSON body, Retry-After)."""

    async def run() -> list[Answer]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://spm") as client:
            out = []
            for request in requests:
                reply = await client.post(request.pop("path", PATH), **request)
                out.append((reply.status_code, reply.json(), reply.headers.get("retry-after")))
            return out

    return asyncio.run(run())


def both(spm: Spm, requests: list[dict[str, Any]]) -> tuple[list[Answer], list[Answer]]:
    fast = create_app(spm)
    slow = create_app(spm)
    slow.front = None  # FastAPI alone, as before the fast path
    return answers(fast, [dict(r) for r in requests]), answers(slow, [dict(r) for r in requests])


def test_refusals_are_fastapis_own(served: tuple[Spm, str]) -> None:
    """Every malformed or refused increment: the same status and the same one line,
    and the counter untouched."""
    spm, token = served
    auth = {"authorization": f"Bearer {token}", **JSON}
    at = spm.counter("p", "round")
    good = {"expect": at, "request": "ab" * 16}
    twice = [("authorization", "Bearer nope"), ("authorization", f"Bearer {token}"), *JSON.items()]
    plain = {"authorization": f"Bearer {token}", "content-type": "text/plain"}
    requests: list[dict[str, Any]] = [
        {"content": b"{", "headers": auth},  # not JSON
        {"json": {**good, "extra": 1}, "headers": auth},  # unknown field
        {"json": {**good, "expect": str(at)}, "headers": auth},  # strict int
        {"json": {**good, "expect": -1}, "headers": auth},
        {"json": {**good, "expect": True}, "headers": auth},
        {"content": b'{"expect": 1' + b"0" * 400 + b"}", "headers": auth},  # 10**400
        {"content": b'{"expect": 1e400}', "headers": auth},  # inf
        {"json": {**good, "request": "xyz"}, "headers": auth},
        {"json": [good], "headers": auth},  # not an object
        {"json": good, "headers": JSON},  # no Authorization
        {"json": good, "headers": {"authorization": "Bearer  ", **JSON}},  # no token
        {"json": good, "headers": {"authorization": "Bearer " + "a" * 300, **JSON}},  # too long
        {"json": good, "headers": {"authorization": "Bearer nope", **JSON}},  # unknown token
        {"json": good, "headers": twice},  # the first Authorization counts
        {"content": json.dumps(good).encode(), "headers": plain},  # not JSON's content type
        {"json": good, "headers": auth, "path": "/v1/policies/BAD!/counters/round/increment"},
        {"json": good, "headers": auth, "path": "/v1/policies/q/counters/round/increment"},
        {"json": good, "headers": auth, "path": "/v1/policies/p/counters/other/increment"},
        {"json": {**good, "expect": at + 5}, "headers": auth},  # 409: not at that value
        {"json": {**good, "round": {"round": "x"}}, "headers": auth},  # a bad fl.round
        {"content": b'{"expect": 0, "pad": "' + b"x" * MAX_BODY + b'"}', "headers": auth},  # 413
        {"content": b"[" * 100_000, "headers": auth},  # RecursionError in json.loads
        {"content": b'{"round": ' + b"[" * 100_000 + b"}", "headers": auth},
        {"content": json.dumps(good).encode(), "headers": {**auth, "content-length": "2000000"}},
        {"json": {**good, "expect": at + 7}, "headers": {**auth, "content-length": b"\xb2"}},
    ]
    fast, slow = both(spm, requests)
    assert fast == slow
    statuses = [status for status, _, _ in fast]
    assert all(status >= 400 for status in statuses), statuses
    assert {400, 401, 403, 409, 413, 422} <= set(statuses)
    assert all(set(body) == {"error"} for _, body, _ in fast)
    assert spm.counter("p", "round") == at


def test_an_increment_is_answered_alike(served: tuple[Spm, str]) -> None:
    """A compare-and-increment with its round: the same answer (at the next value),
    and the same answer again when sent again after its answer was lost."""
    spm, token = served
    auth = {"authorization": f"Bearer {token}", **JSON}
    event = {"round": 1, "attempt": 1, "participants": 2, "dropped": 0, "excluded": 0}
    at = spm.counter("p", "round")
    fast_app, slow_app = create_app(spm), create_app(spm)
    slow_app.front = None
    for app, value in ((fast_app, at), (slow_app, at + 1)):
        round = {**event, "counter": value + 1}
        body = {"expect": value, "request": f"{value:032x}", "round": round}
        first, again = answers(app, [{"json": body, "headers": auth}] * 2)
        assert first == again == (200, {"counter": "round", "value": value + 1}, None)
    assert spm.counter("p", "round") == at + 2


def test_well_formed_is_answered_in_front_and_the_rest_replayed(served: tuple[Spm, str]) -> None:
    """The layer answers a well-formed increment without FastAPI; FastAPI gets every
    other request with its body whole, also one streamed in pieces past the limit."""
    spm, token = served
    seen: list[tuple[str, bytes]] = []

    async def behind(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    layer = IncrementRoute(behind, spm, max_body=64)
    auth = {"authorization": f"Bearer {token}", **JSON}
    at = spm.counter("p", "round")
    big = b'{"expect": 0, "x": "' + b"y" * 200 + b'"}'

    def pieces() -> Iterator[bytes]:
        yield from (big[i : i + 50] for i in range(0, len(big), 50))

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=layer)
        async with httpx.AsyncClient(transport=transport, base_url="https://spm") as client:
            replies = [
                await client.post(PATH, json={"expect": at}, headers=auth),
                await client.post(PATH, content=b"{", headers=auth),
                await client.post(PATH, content=_stream(pieces()), headers=auth),
                await client.get(PATH, headers=auth),
                await client.post("/v1/policies/p/events", json={}, headers=auth),
            ]
        return [r.status_code for r in replies]

    assert asyncio.run(run()) == [200, 418, 418, 418, 418]
    assert spm.counter("p", "round") == at + 1
    assert seen == [(PATH, b"{"), (PATH, big), (PATH, b""), ("/v1/policies/p/events", b"{}")]


class _stream(httpx.AsyncByteStream):
    def __init__(self, parts: Iterator[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self) -> Any:
        for part in self.parts:
            yield part


def test_a_deeply_nested_body_over_a_real_spm_is_one_line(tmp_path: Path) -> None:
    """Over `secfl spm serve` and TLS: a body nested 100,000 deep (json.loads raises
    RecursionError) is FastAPI's 400 in one JSON line, logs no traceback, and the next
    increment goes through. (The fast path let the RecursionError out: a plain-text 500
    and a traceback in the SPM's log for each such request.)"""
    from secfl.spm.client import SpmClient
    from tests.spm.harness import raw_http, spm_with_policy

    sim = (tmp_path / "sim", make_sim(tmp_path / "sim"))
    with spm_with_policy(tmp_path / "data", sim, Board.create(), "aggregator") as (proc, got):
        token = got["aggregator"].session_token
        path = "/v1/policies/fed/counters/round/increment"
        auth = {"authorization": f"Bearer {token}", **JSON}
        with SpmClient(proc.url, pin=proc.pin) as client, raw_http(client) as http:
            deep = http.post(path, content=b"[" * 100_000, headers=auth)
            after = http.post(path, json={"expect": 0}, headers=auth)
        assert (deep.status_code, deep.json()) == (
            400, {"error": "http: There was an error parsing the body"}
        )  # fmt: skip
        assert (after.status_code, after.json()) == (200, {"counter": "round", "value": 1})
        assert proc.log is not None and "Traceback" not in proc.log.read_text()
