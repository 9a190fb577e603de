"""Whole federations in one process: an aggregator and collaborators on threads,
talking gRPC over mutual TLS on loopback, training the digits task on real shards.

Rounds survive what goes wrong in them (a collaborator dying mid-round, refused
updates, a missed quorum), a collaborator refuses replayed models, a restarted
aggregator resumes from its sealed checkpoint but never from a rolled-back one,
and the secure transport changes nothing in the model it trains.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from secfl.errors import FlError
from secfl.fl import _messages as msg
from secfl.fl._aggregator import Signer
from secfl.fl._collaborator import ModelGate
from secfl.fl._commit import MemoryLedger
from secfl.fl._envelope import SignedModel, read_unverified
from secfl.fl._rounds import BEAT
from secfl.fl._tensors import state_dict_arrays, to_bytes
from secfl.fl._transport import Peer, TransportError, join
from secfl.fl.strategies._base import Params
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import (
    DIGEST,
    LIMIT,
    Background,
    Federation,
    RawClient,
    identity,
    site,
    wait_for,
)

HONEST = [0, 1, 2]
ALL_SITES = [site(i) for i in range(4)]
#: Small liveness settings: a silent collaborator is dropped within about a second.
QUICK = {"heartbeat": 0.2, "dead_after": 1.0, "round_timeout": 30, "join_timeout": 30}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 4, seed=1, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


def initial_params(fed: Federation) -> Params:
    return state_dict_arrays(fed.task.build_model(0))


def assert_finite(params: Params) -> None:
    for name, array in params.items():
        assert np.isfinite(array).all(), name


# --- 1. the secure transport changes nothing -------------------------------------------


def test_secure_and_insecure_federations_train_the_same_model(fed: Federation) -> None:
    settings = {"rounds": 10, "min_clients": 4, "train": {"epochs": 1}, "seed": 3}
    models, histories = {}, {}
    for secure in (True, False):
        agg = fed.aggregator(settings, secure=secure)
        models[secure] = fed.run(agg, range(4), secure=secure)
        histories[secure] = agg.history
    secure, insecure = models[True], models[False]
    assert sorted(secure) == sorted(insecure)
    for name in secure:
        assert secure[name].dtype == insecure[name].dtype, name
        assert np.array_equal(secure[name], insecure[name]), name
    for history in histories.values():
        assert [e["round"] for e in history] == list(range(1, 11))
        assert all(e["attempt"] == 1 and e["participants"] == ALL_SITES for e in history)
        assert history[-1]["val_accuracy"] >= 0.9
    accuracies = [[e["val_accuracy"] for e in h] for h in histories.values()]
    assert accuracies[0] == accuracies[1]


# --- 2. a collaborator dying mid-round -------------------------------------------------


def test_a_collaborator_that_dies_mid_round_is_dropped(fed: Federation) -> None:
    agg = fed.aggregator({"rounds": 2, "min_clients": 3, **QUICK})
    dying = RawClient(fed, agg.port, site(3))
    dying.join()
    fetched = Background(dying.train, "dying")  # takes the model, then never calls again
    fetched.start()
    try:
        params = fed.run(agg, HONEST, joined=4)
        header, _, envelope = fetched.outcome()
    finally:
        dying.close()
    assert (header["round"], header["attempt"], envelope.round) == (1, 1, 0)
    first, second = agg.history
    assert first["attempt"] == 1  # not retried: the quorum came from the others
    assert first["dropped"] == [site(3)]
    assert first["participants"] == ALL_SITES[:3]
    assert first["refused"] == []
    # dropped after dead_after (1 s), long before the 30 s deadline
    assert first["duration_s"] >= 1.0 and first["duration_s"] < 10
    assert second["attempt"] == 1 and second["participants"] == ALL_SITES[:3]
    assert second["dropped"] == []
    assert_finite(params)


# --- 3. quorum ---------------------------------------------------------------------------


def nan_update(params: Params) -> bytes:
    bad = {k: v.copy() for k, v in params.items()}
    name = next(k for k, v in bad.items() if v.dtype.kind == "f")
    bad[name].reshape(-1)[0] = np.nan
    return to_bytes(bad)


def test_a_round_below_quorum_is_retried(fed: Federation) -> None:
    agg = fed.aggregator({"rounds": 1, "min_clients": 4, "quorum": 4, **QUICK})
    flaky = RawClient(fed, agg.port, site(3))
    flaky.join()

    def behave() -> list[Any]:
        header, params, _ = flaky.train()
        with pytest.raises(TransportError, match="holds NaN or Inf"):
            flaky.submit(1, header["attempt"], nan_update(params))
        again, params, _ = flaky.train()
        reply = flaky.submit(1, again["attempt"], to_bytes(params))
        return [header["attempt"], again["attempt"], reply["kind"]]

    worker = Background(behave, "flaky")
    worker.start()
    try:
        fed.run(agg, HONEST, joined=4)
        assert worker.outcome() == [1, 2, "accepted"]
    finally:
        flaky.close()
    (entry,) = agg.history
    assert entry["attempt"] == 2
    assert entry["participants"] == ALL_SITES and entry["updates"] == 4


def test_the_aggregator_gives_up_after_max_attempts(fed: Federation) -> None:
    agg = fed.aggregator({"rounds": 1, "min_clients": 4, "quorum": 4, "max_attempts": 2, **QUICK})
    bad = RawClient(fed, agg.port, site(3))
    bad.join()

    def misbehave() -> list[int]:
        attempts = []
        for _ in range(2):
            header, params, _ = bad.train()
            attempts.append(header["attempt"])
            with pytest.raises(TransportError, match="holds NaN or Inf"):
                bad.submit(1, header["attempt"], nan_update(params))
        return attempts

    worker = Background(misbehave, "bad")
    worker.start()
    try:
        with pytest.raises(
            FlError, match=r"round 1: quorum of 4 updates not reached in 2 attempts"
        ):
            fed.run(agg, HONEST, joined=4)
        assert worker.outcome() == [1, 2]
    finally:
        bad.close()
    assert agg.history == []


# --- 4. refused updates ------------------------------------------------------------------

BAD = {
    "nan": r"INVALID_ARGUMENT: aggregate: the update from 'nan': tensor '.+' holds NaN or Inf",
    "shape": r"INVALID_ARGUMENT: aggregate: the update from 'shape': tensor '.+' has shape",
    "dtype": r"INVALID_ARGUMENT: .*'dtype': tensor '.+' has dtype float64, the model has float32",
    "extra": r"INVALID_ARGUMENT: .*'extra': unexpected tensor 'extra\.weight'",
    "malformed": r"INVALID_ARGUMENT: tensors: malformed",
    "oversized": r"INVALID_ARGUMENT: message: tensors: the stream passes its limit of \d+ bytes",
}


def bad_payload(kind: str, params: Params, limit: int) -> bytes:
    changed = {k: v.copy() for k, v in params.items()}
    weight = next(k for k, v in changed.items() if v.dtype == np.float32 and v.ndim == 2)
    if kind == "nan":
        return nan_update(params)
    if kind == "shape":
        changed[weight] = np.zeros(changed[weight].size + 1, np.float32)
    elif kind == "dtype":
        changed[weight] = changed[weight].astype(np.float64)
    elif kind == "extra":
        changed["extra.weight"] = np.zeros(3, np.float32)
    elif kind == "malformed":
        return b"\xff" * 64 + to_bytes(params)[8:]
    elif kind == "oversized":  # a well-formed update with more bytes after it
        blob = to_bytes(changed)
        return blob + bytes(limit + 1 - len(blob))
    return to_bytes(changed)


def test_bad_updates_are_refused_and_the_round_completes(fed: Federation) -> None:
    raw_names = [*BAD, "stale", "outsider"]
    agg = fed.aggregator(
        {"rounds": 1, "min_clients": 10, "quorum": 4, "heartbeat": 0.5, "dead_after": 5.0,
         "round_timeout": 30, "join_timeout": 30},
        services=[*ALL_SITES[:3], *raw_names],
    )  # fmt: skip
    raws = {name: RawClient(fed, agg.port, name) for name in raw_names}
    limit = agg.rounds.max_update_bytes + msg.MAX_HEADER + 4
    stale_trained, outsider_done = threading.Event(), threading.Event()

    def refused(kind: str) -> str:
        header, params, _ = raws[kind].train()
        with pytest.raises(TransportError, match=BAD[kind]) as caught:
            raws[kind].submit(header["round"], header["attempt"], bad_payload(kind, params, limit))
        return str(caught.value)

    def stale() -> str:
        header, params, _ = raws["stale"].train()
        stale_trained.set()
        with pytest.raises(TransportError, match=r"protocol: no open round 7 attempt 1"):
            raws["stale"].submit(7, header["attempt"], to_bytes(params))
        assert outsider_done.wait(30)
        return raws["stale"].submit(1, header["attempt"], to_bytes(params))["kind"]

    def outsider() -> None:
        assert stale_trained.wait(30)  # the attempt is open, its sample drawn
        raws["outsider"].join()
        params = initial_params(fed)
        try:
            with pytest.raises(
                TransportError, match=r"protocol: 'outsider' was not sampled for round 1"
            ):
                raws["outsider"].submit(1, 1, to_bytes(params), epoch=raws["stale"].epoch)
        finally:
            outsider_done.set()

    for name in [*BAD, "stale"]:
        raws[name].join()
    workers = [Background(lambda k=k: refused(k), k) for k in BAD]
    workers += [Background(stale, "stale"), Background(outsider, "outsider")]
    for worker in workers:
        worker.start()
    try:
        params = fed.run(agg, HONEST, joined=10)
        outcomes = [worker.outcome() for worker in workers]
    finally:
        for raw in raws.values():
            raw.close()
    assert outcomes[-2:] == ["accepted", None]
    (entry,) = agg.history
    assert entry["attempt"] == 1
    assert entry["participants"] == sorted([*ALL_SITES[:3], "stale"])
    assert entry["refused"] == sorted(BAD)
    assert entry["dropped"] == []
    assert_finite(params)
    assert entry["val_accuracy"] > 0.5


# --- 5. freshness of the global model ----------------------------------------------------


def test_the_model_gate_refuses_replays_other_keys_and_other_policies(fed: Federation) -> None:
    blob = to_bytes(initial_params(fed))
    signer = Signer(DIGEST, fed.key)
    gate = fed.gate()
    current = signer.seal(blob, 2, 3).to_bytes()
    payload, envelope = gate.accept(current)
    assert payload == blob and (envelope.round, envelope.counter) == (2, 3)
    for round, counter in [(1, 2), (2, 2), (3, 3), (1, 4), (2, 4)]:
        with pytest.raises(FlError, match=r"^freshness:"):
            gate.accept(signer.seal(blob, round, counter).to_bytes())
    assert gate.accept(current)[1] == envelope  # the same model, resent
    assert gate.accept(signer.seal(blob, 2, 3).to_bytes())[1].counter == 3  # and resealed
    other_key = Signer(DIGEST, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(FlError, match=r"^signature:"):
        gate.accept(other_key.seal(blob, 3, 4).to_bytes())
    with pytest.raises(FlError, match=r"^policy:"):
        gate.accept(Signer("e" * 64, fed.key).seal(blob, 3, 4).to_bytes())
    assert (gate.last.round, gate.last.counter) == (2, 3)  # nothing refused was kept
    assert gate.accept(signer.seal(blob, 3, 4).to_bytes())[1].round == 3


def test_a_restarted_collaborator_refuses_models_older_than_the_spm_counter(
    fed: Federation,
) -> None:
    """It has forgotten the last model it accepted; the SPM's counter, read at start,
    is the floor (``services.build_collaborator`` reads it)."""
    blob = to_bytes(initial_params(fed))
    signer = Signer(DIGEST, fed.key)
    gate = ModelGate(fed.key.public_key(), DIGEST, floor=5)
    with pytest.raises(FlError, match=r"^freshness:.*counter 4"):
        gate.accept(signer.seal(blob, 9, 4).to_bytes())
    assert gate.last is None
    assert gate.accept(signer.seal(blob, 4, 5).to_bytes())[1].counter == 5  # the newest
    with pytest.raises(FlError, match=r"^freshness:"):
        gate.accept(signer.seal(blob, 3, 4).to_bytes())


def test_a_replaying_aggregator_stops_the_collaborator(fed: Federation) -> None:
    """A malicious aggregator with the genuine key serves a newer model, then an
    older one it signed earlier: the collaborator stops instead of training on it."""
    blob = to_bytes(initial_params(fed))
    signer = Signer(DIGEST, fed.key)
    older, newer = signer.seal(blob, 1, 2), signer.seal(blob, 2, 3)
    served = [newer, older]
    submitted: list[str] = []
    lock = threading.Lock()

    def next_(request: bytes, peer: Peer) -> list[bytes]:
        with lock:
            if not served:
                return [msg.encode({"kind": msg.DONE})]
            model = served.pop(0)
        head = {"kind": msg.TRAIN, "round": model_round(model) + 1, "attempt": 1, "epoch": "e1",
                "config": {"epochs": 1, "seed": 5}, "deadline_s": 30.0}  # fmt: skip
        return [msg.header_bytes(head), model.to_bytes()]

    def submit(pieces: Any, peer: Peer) -> bytes:
        header, _ = msg.decode(join(pieces, 64 << 20), "update")
        submitted.append(f"{peer.service}/{header['round']}")
        return msg.encode({"kind": "accepted", "round": header["round"]})

    welcome = {"kind": "welcome", "participant": site(0), "rounds": 5, "heartbeat": 0.5}
    server = fed.server([site(0)])
    server.unary(msg.JOIN, lambda request, peer: msg.encode(welcome))
    server.unary(BEAT, lambda request, peer: msg.encode({"kind": "ok"}))
    server.download(msg.NEXT, next_)
    server.upload(msg.SUBMIT, submit)
    server.exchange(msg.SUBMIT_NEXT, lambda pieces, peer: [submit(pieces, peer), *next_(b"", peer)])
    port = server.start()
    collaborator = fed.collaborator(port, 0)
    try:
        with pytest.raises(
            FlError, match=r"^freshness: .*counter 2 is not newer than the last accepted 3"
        ):
            collaborator.run()
    finally:
        server.stop(None)
    assert submitted == [f"{site(0)}/3"]  # trained on the newer model only
    assert [t["round"] for t in collaborator.trained] == [3]
    assert not served


def test_the_name_an_aggregator_gives_is_logged_on_one_line(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    """The welcome's participant name is the aggregator's: a newline in it forges no
    line of the collaborator's log."""
    forged = site(0) + "\nCRITICAL secfl: forged"
    welcome = {"kind": "welcome", "participant": forged, "rounds": 1, "heartbeat": 0.5}
    server = fed.server([site(0)])
    server.unary(msg.JOIN, lambda request, peer: msg.encode(welcome))
    server.download(msg.NEXT, lambda request, peer: [msg.encode({"kind": msg.DONE})])
    port = server.start()
    try:
        with caplog.at_level("INFO", logger="secfl"):
            fed.collaborator(port, 0).run()
    finally:
        server.stop(None)
    joined = [r.getMessage() for r in caplog.records if r.getMessage().startswith("joined")]
    assert joined == [f"joined as {forged!r}"]


def model_round(model: SignedModel) -> int:
    return read_unverified(model.to_bytes())[1].round


# --- 6. resume and rollback --------------------------------------------------------------


def test_an_aggregator_resumes_from_its_checkpoint_but_never_a_rolled_back_one(
    fed: Federation, tmp_path: Path
) -> None:
    directory = tmp_path / "checkpoints"
    ledger = MemoryLedger()
    gates = [fed.gate() for _ in range(4)]  # the collaborators outlive the aggregator
    settings = {"rounds": 3, "min_clients": 4}
    first = fed.aggregator(settings, ledger=ledger, directory=directory)
    params = fed.run(first, range(4), gates=gates)
    assert [e["round"] for e in first.history] == [1, 2, 3]
    assert ledger.value == 4  # the initial model, then one commit per round

    settings["rounds"] = 5
    resumed = fed.aggregator(settings, ledger=MemoryLedger(*ledger.committed()),
                             directory=directory)  # fmt: skip
    assert resumed._start == 4
    for name, array in params.items():
        assert np.array_equal(resumed._params[name], array), name
    fed.run(resumed, range(4), gates=gates)
    assert [(e["round"], e["counter"]) for e in resumed.history] == [(4, 5), (5, 6)]
    assert resumed.history[-1]["val_accuracy"] >= 0.85
    assert all(g.last is not None and (g.last.round, g.last.counter) == (4, 5) for g in gates)

    ahead = fed.aggregator(settings, ledger=MemoryLedger(7), directory=directory, start=False)
    with pytest.raises(FlError, match=r"^rollback: .*counter 6.*counter is 7"):
        ahead.start()
    newest = max(directory.glob("checkpoint-*"))
    assert "-c0000000006-" in newest.name  # checkpoint-rR-cC-REQUEST.secfl
    newest.unlink()  # the newest checkpoint lost (or withheld by the host)
    lost = fed.aggregator(settings, ledger=MemoryLedger(6), directory=directory, start=False)
    with pytest.raises(FlError, match=r"^rollback: .*counter 5.*counter is 6"):
        lost.start()


# --- 7. other aggregation orders and strategies ------------------------------------------


@pytest.mark.parametrize(
    ("settings", "accuracy"),
    [
        ({"rounds": 10, "aggregation_order": "arrival"}, 0.85),
        ({"rounds": 3, "strategy": "fedprox", "strategy_settings": {"mu": 0.01}}, 0.5),
        ({"rounds": 3, "strategy": "fedadam"}, None),
    ],
    ids=["arrival", "fedprox", "fedadam"],
)
def test_other_orders_and_strategies_train(
    fed: Federation, settings: dict[str, Any], accuracy: float | None
) -> None:
    agg = fed.aggregator({"min_clients": 4, **settings})
    params = fed.run(agg, range(4))
    assert [e["round"] for e in agg.history] == list(range(1, settings["rounds"] + 1))
    assert all(e["updates"] == 4 and e["attempt"] == 1 for e in agg.history)
    assert_finite(params)
    initial = initial_params(fed)
    assert any(not np.array_equal(params[k], initial[k]) for k in initial)
    if accuracy is not None:
        assert agg.history[-1]["val_accuracy"] >= accuracy


# --- 8. certificates expire on open connections ------------------------------------------


def test_a_certificate_that_expires_on_an_open_connection_is_refused(fed: Federation) -> None:
    agg = fed.aggregator({"rounds": 1, "min_clients": 1})
    creds = identity(fed.authority, site(0), now=datetime.now(UTC) - timedelta(seconds=58),
                     ttl=60)  # fmt: skip
    expires = x509.load_pem_x509_certificate(creds.cert_pem).not_valid_after_utc
    client = fed.client(agg.port, site(0), creds=creds)
    request = msg.encode({"kind": "join", "samples": 1})
    try:
        welcome, _ = msg.decode(client.unary(msg.JOIN, request), "welcome")
        assert welcome["participant"] == site(0)
        wait_for(lambda: datetime.now(UTC) > expires + timedelta(seconds=0.2), "expiry", 10)
        with pytest.raises(
            TransportError, match=r"PERMISSION_DENIED: peer: certificate .* expired"
        ):
            client.unary(msg.JOIN, request)
    finally:
        client.close()
        agg.server.stop(None)


# --- 9. the clone audit inside the real aggregator ----------------------------------------


class _Poisoner:
    """The genuine task, but the trained model is replaced by a wrecked one."""

    def __init__(self, task: Any) -> None:
        self._task = task
        self.name = task.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._task, attr)

    def train(self, model: Any, data: Any, config: Any) -> dict[str, float]:
        metrics = self._task.train(model, data, config)
        for p in model.parameters():
            p.data.mul_(-5.0)
        return metrics


def test_the_clone_audit_leaves_out_a_poisoner_and_reports_it(fed: Federation) -> None:
    agg = fed.aggregator(
        {"rounds": 3, "min_clients": 4, "strategy": "clone-audit", "train": {"epochs": 3}},
        start=False,
    )
    found: list[dict[str, Any]] = []
    agg.on_exclusion = found.append
    agg.start()
    bad = fed.collaborator(agg.port, 3)
    bad.task = _Poisoner(fed.task)
    thread = Background(bad.run, site(3))
    thread.start()
    try:
        fed.run(agg, range(3), joined=4)
    finally:
        thread.join(LIMIT)
    excluded = [e["excluded"] for e in agg.history]
    assert all(e["audit"]["clones"] == 30 for e in agg.history)
    assert [site(3)] in excluded and all(x in ([], [site(3)]) for x in excluded)
    assert found and found[0]["excluded"] == [site(3)] and site(3) in found[0]["serials"]
    assert agg.history[-1]["val_accuracy"] >= 0.8
