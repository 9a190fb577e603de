"""The aggregator's events and `secfl status` / `secfl revocations` against a real
`secfl spm serve`: what an aggregator may post is bounded and typed, only an
aggregator's session may post it, and a clone-audit revocation request is listed
with the commands that act on it, which the board then runs as printed."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from secfl.spm._events import MAX_DEPTH, MAX_DETAIL_BYTES
from secfl.spm.client import SpmClient, SpmRefused
from tests.clirun import secfl
from tests.spm.harness import Board, SpmProcess, raw_http, spm_with_policy

pytestmark = pytest.mark.timeout(120)

ROUND = {
    "round": 3, "counter": 4, "attempt": 1, "participants": 2, "dropped": 0, "excluded": 1,
    "run": 1, "policy_version": 1, "duration_s": 1.5,
    "objective": {"metric": "loss", "mode": "min", "value": 0.25},
}  # fmt: skip


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes], board: Board
) -> Iterator[dict[str, Any]]:
    """An SPM with policy `fed`, an attested aggregator and an attested collaborator."""
    data = tmp_path_factory.mktemp("spm") / "data"
    with spm_with_policy(data, sim, board, "aggregator", "collaborator") as (proc, enrolled):
        yield {"spm": proc, **enrolled}


def post(world: dict[str, Any], event: str, detail: Any, who: str = "aggregator") -> int:
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client:
        return client.report("fed", event, detail, world[who].session_token)


def commit(world: dict[str, Any], round: dict[str, Any]) -> int:
    """The aggregator's round logged as it is in production: with its counter's increment
    (``fl.round`` at the value the increment gives); the counter's new value."""
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client:
        return client.increment("fed", "round", world["aggregator"].session_token, round=round)


def counter(world: dict[str, Any]) -> int:
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client:
        return client.counter("fed", "round")


FINDING = {"round": 3, "excluded": ["collaborator"], "serials": {"collaborator": "1a2b"},
           "suspicion": {"collaborator": 5.0}}  # fmt: skip


@pytest.mark.parametrize(
    ("detail", "message"),
    [
        ({**ROUND, "round": "3"}, "event: round: round: "),
        ({**ROUND, "round": 10**400}, "event: round: round: "),
        ({**ROUND, "attempt": 0}, "event: round: attempt: "),
        ({**ROUND, "participants": True}, "event: round: participants: "),
        ({**ROUND, "weights": [1, 2]}, "event: round: weights: "),
        (
            {**ROUND, "objective": {"metric": "loss", "mode": "up", "value": 1}},
            "event: round: objective.mode: ",
        ),
        ({k: v for k, v in ROUND.items() if k != "participants"}, "event: round: participants: "),
        ({**ROUND, "service": "site-1"}, "event: 'service' is set by the SPM"),
    ],
)
def test_a_round_has_one_shape(world: dict[str, Any], detail: dict[str, Any], message: str) -> None:
    before = counter(world)
    with pytest.raises(SpmRefused, match=f"^{message}") as refused:
        commit(world, detail)
    assert refused.value.status == 400
    assert counter(world) == before  # refused whole: the counter did not move


def test_a_round_is_logged_only_with_its_counter(world: dict[str, Any]) -> None:
    """Found by a review: ``POST /events`` logged ``fl.round`` at whatever counter the
    poster wrote (`secfl status` showed round 999 at counter 999 with the counter at 1)."""
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client:
        head = client.audit(since=2**62)["head_seq"]
        with pytest.raises(SpmRefused, match="^event: round: a round is logged with its coun"):
            post(world, "round", {**ROUND, "round": 999, "counter": 999})
        assert client.audit(since=2**62)["head_seq"] == head  # nothing logged
    value = commit(world, {**ROUND, "counter": 999})
    entries = client_entries(world, head)
    (logged,) = [e for e in entries if e["event"] == "fl.round"]
    assert logged["detail"]["counter"] == value == counter(world)  # the SPM's, not the poster's


def client_entries(world: dict[str, Any], since: int) -> list[dict[str, Any]]:
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client:
        return list(client.audit(since, 1000)["entries"])


@pytest.mark.parametrize(
    ("event", "detail", "message"),
    [
        ("audit.excluded", {**FINDING, "round": 10**400}, "event: audit.excluded: round: "),
        ("audit.excluded", {**FINDING, "round": "3"}, "event: audit.excluded: round: "),
        ("audit.excluded", {"who": "x"}, "event: audit.excluded: round: "),
        ("audit.excluded", {**FINDING, "excluded": ["a b"]}, "event: audit.excluded: excluded.0: "),
        ("audit.excluded", {**FINDING, "excluded": "collaborator"}, "event: audit.excluded: exc"),
        (
            "audit.revocation-requested",
            {**FINDING, "serials": {"collaborator": "zz"}},
            "event: audit.revocation-requested: serials.collaborator: ",
        ),
        (
            "audit.revocation-requested",
            {**FINDING, "serials": {"aggregator": "1a"}},
            "event: audit.revocation-requested: detail: Value error, serials of services the "
            "finding does not exclude: \\['aggregator'\\]",
        ),
        ("model", {"tag": "ab" * 32, "run": 1, "rounds": 3}, "event: model: counter: "),
        ("model", {"tag": "AB", "run": 1, "rounds": 3, "counter": 4}, "event: model: tag: "),
        (
            "model",
            {"tag": "ab" * 32, "run": 1, "rounds": 3, "counter": 4, "x": 1},
            "event: model: x: ",
        ),
    ],
)
def test_what_the_board_and_a_model_owner_read_has_one_shape(
    world: dict[str, Any], event: str, detail: dict[str, Any], message: str
) -> None:
    """Found by a review: a finding with a 4,000-digit round (or none at all) was logged,
    and `secfl status`/`secfl revocations` turned it into the board's commands."""
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client:
        head = client.audit(since=2**62)["head_seq"]
    with pytest.raises(SpmRefused, match=f"^{message}") as refused:
        post(world, event, detail)
    assert refused.value.status == 400
    assert client_entries(world, head) == []


def test_any_event_is_bounded(world: dict[str, Any]) -> None:
    nested: Any = 1
    for _ in range(MAX_DEPTH + 1):
        nested = [nested]
    with pytest.raises(SpmRefused, match="^event: the detail nests"):
        post(world, "audit.excluded", {"x": nested})
    with pytest.raises(SpmRefused, match="^event: the detail is .* bytes, at most"):
        post(world, "audit.excluded", {"x": "a" * MAX_DETAIL_BYTES})
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client:
        # NaN is not JSON: a client that sends it anyway is refused, nothing logged.
        head = client.audit(since=2**62)["head_seq"]
        with raw_http(client) as http:
            raw = http.post(
            "/v1/policies/fed/events",
                content=b'{"event": "audit.excluded", "detail": {"score": NaN}}',
                headers={"Authorization": f"Bearer {world['aggregator'].session_token}",
                         "Content-Type": "application/json"},
            )  # fmt: skip
        assert raw.status_code == 400, raw.text
        assert raw.json()["error"].startswith("event: the detail is not JSON"), raw.text
        assert client.audit(since=2**62)["head_seq"] == head


def test_only_an_aggregators_session_may_post(world: dict[str, Any]) -> None:
    with pytest.raises(SpmRefused, match="^report: service 'collaborator' is not an aggregator"):
        post(world, "audit.excluded", FINDING, who="collaborator")
    spm: SpmProcess = world["spm"]
    with SpmClient(spm.url, pin=spm.pin) as client, raw_http(client) as http:
        reply = http.post(
            "/v1/policies/fed/events", json={"event": "audit.excluded", "detail": FINDING}
        )
    assert reply.status_code == 401 and reply.json()["error"].startswith("session: ")


def test_status_and_a_revocation_request_the_board_acts_on(
    world: dict[str, Any], board: Board, tmp_path: Path
) -> None:
    spm: SpmProcess = world["spm"]
    remote = ("--spm", spm.url, "--spm-pin", spm.pin)
    commit(world, {**ROUND, "round": 2})
    value = commit(world, ROUND)
    cert = x509.load_pem_x509_certificate(world["collaborator"].certificate.encode())
    serial = format(cert.serial_number, "x")
    request = {"round": 3, "excluded": ["collaborator"], "serials": {"collaborator": serial},
               "suspicion": {"collaborator": 5.0}}  # fmt: skip
    seq = post(world, "audit.revocation-requested", request)

    done = secfl("status", *remote, "--policy", "fed")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "policy fed: version 1 (digest " in text and "by alice, bob" in text
    assert f"round: 3 committed at counter {value}, 2 participant(s), 1 excluded by the " \
           "audit, loss 0.25 (min)" in text  # fmt: skip
    services = {line.split()[0]: line.split() for line in text.splitlines() if line}
    assert services["aggregator"][1] == "aggregator" and services["aggregator"][4] == "1"
    assert services["collaborator"][1] == "collaborator"
    assert "3      collaborator" in text and "pending" in text

    done = secfl("revocations", *remote, "--policy", "fed")
    assert done.returncode == 0, done.stderr
    assert "no revocations in policy fed" in done.stdout
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("3 ")]
    assert row.split() == ["3", "collaborator", "collaborator", serial, *row.split()[4:6],
                           "aggregator", "pending"]  # fmt: skip
    sign, submit = [shlex.split(line) for line in done.stdout.splitlines()
                    if line.startswith("  secfl ")]  # fmt: skip
    assert sign[:3] == ["secfl", "policy", "sign-revocation"] and submit[:2] == ["secfl", "revoke"]
    assert f"clone audit: round 3, audit entry {seq}" in sign
    # the statement expires a week after the request, the same date for every member
    assert sign[sign.index("--expires") + 1] == submit[submit.index("--expires") + 1]

    # The board runs exactly what was printed: two members sign, one submits.
    for member in ("alice", "bob"):
        key = tmp_path / f"{member}.key"
        key.write_bytes(board.keys[member])
        key.chmod(0o600)
        argv = [a.replace("MEMBER", member) for a in sign[1:]]
        argv = [str(tmp_path / a) if a.endswith((".key", ".sig")) else a for a in argv]
        assert secfl(*argv).returncode == 0
    argv = [str(tmp_path / a) if a.endswith(".sig") else a for a in submit[1:]]
    done = secfl(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "revoked: service collaborator of policy fed"

    done = secfl("revocations", *remote, "--policy", "fed")
    assert done.returncode == 0, done.stderr
    assert "clone audit: round 3" in done.stdout  # the board's row, with its reason
    assert "to act on a pending request" not in done.stdout
    doc = json.loads(secfl("status", *remote, "--policy", "fed", "--json").stdout)
    (finding,) = doc["findings"]
    assert finding["state"] == "revoked" and finding["seq"] == seq
    assert doc["revocations"] == 1
    live = {s["name"]: s["live_sessions"] for s in doc["services"]}
    assert live == {"aggregator": 1, "collaborator": 0}  # a revoked service's: none (review)


def test_status_shows_the_newest_round_and_refuses_an_unknown_policy(world: dict[str, Any]) -> None:
    spm: SpmProcess = world["spm"]
    remote = ("--spm", spm.url, "--spm-pin", spm.pin)
    value = commit(world, {**ROUND, "round": 5})
    doc = json.loads(secfl("status", *remote, "--policy", "fed", "--json").stdout)
    assert doc["round"]["round"] == 5  # the newest entry is the round just reported
    assert doc["round"]["counter"] == value
    assert doc["policy"]["approvers"] == ["alice", "bob"]  # from the signatures, not the log
    done = secfl("status", *remote, "--policy", "fed")
    assert done.returncode == 0, done.stderr
    assert f"as of audit entry {doc['head_seq']} " in done.stdout
    done = secfl("status", *remote, "--policy", "nope")
    assert done.returncode == 1 and done.stderr.startswith("error: policy: no policy named")


def test_a_request_naming_nobody_is_not_shown_as_acted_on() -> None:
    """A request whose exclusions are empty (only an aggregator's session can post one)
    was shown as `revoked`: nothing the board did (review)."""
    from secfl.spm._status import request_state
    from secfl.spm._status_index import Finding

    empty = Finding({"excluded": [], "serials": {}})
    assert request_state(empty, set()) == "pending"
    named = Finding({"excluded": ["site-1"], "serials": {}})
    assert request_state(named, {("service", "site-1")}) == "revoked"
