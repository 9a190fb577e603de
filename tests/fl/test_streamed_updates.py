"""Attacks on the exact, streamed aggregation (issue 17's hostile review): a silent
stream, concurrent folds, honest values at the range's edge, overstated counts, huge
values, sites queued behind others. Each failed on the code before its fix."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from torch import nn

from secfl.errors import FlError, TransportError
from secfl.fl import _messages as msg
from secfl.fl._rounds import BEAT
from secfl.fl._tensors import to_bytes
from secfl.fl.strategies import FedAvg, Params, Update
from secfl.fl.strategies._exact import ExactSum, fraction_bits
from secfl.tasks import get_task
from secfl.tasks._digits import DigitsTask
from secfl.tasks._split import split

from .fedkit import Background, Federation, RawClient, serving, site, wait_for


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 2, seed=1, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


# --- 1. one silent stream holds the only receive buffer ------------------------------------


def test_a_silent_stream_from_a_peer_not_sampled_does_not_block_the_round(
    fed: Federation,
) -> None:
    """Receiver.receive takes the buffer before a single byte (let alone the header
    that says who sends what for which round) is read, and keeps it until the round
    closes. Any peer allowed to call (here: one that never joined, so is never
    sampled) opens Submit, sends nothing, and every sampled update waits for the
    buffer until the deadline: the round fails for want of a quorum."""
    settings = {"rounds": 1, "min_clients": 1, "quorum": 1, "max_attempts": 1,
                "round_timeout": 6, "heartbeat": 0.5, "dead_after": 5.0,
                "join_timeout": 30, "seed": 3}  # fmt: skip
    agg = fed.aggregator(settings, services=[site(0), "outsider"])
    honest = RawClient(fed, agg.port, site(0))
    outsider = RawClient(fed, agg.port, "outsider")
    release = threading.Event()

    def silent() -> Iterator[bytes]:
        release.wait(30)
        yield b"\x00\x00"

    try:
        honest.join()
        run = Background(agg.run, "aggregator")
        run.start()
        header, params, _ = honest.train()  # the attempt is open
        hog = Background(lambda: outsider.client.upload(msg.SUBMIT, silent()), "outsider")
        hog.start()
        # the outsider's call is in (a receiver that vets first never hands it the buffer)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: agg.rounds.receiver._owner is not None, "the outsider", timeout=3)
        try:
            reply = honest.submit(header["round"], header["attempt"], to_bytes(params))
        except TransportError as exc:
            pytest.fail(f"the sampled update was not taken: {exc}")
        assert reply["kind"] == "accepted"
        release.set()
        run.outcome()
    finally:
        release.set()
        agg.rounds.finish(0)
        agg.server.stop(None)
        honest.close()
        outsider.close()


def test_a_stream_whose_sender_was_dropped_as_silent_is_not_counted(fed: Federation) -> None:
    """Found by a hostile review: a sampled site that went silent mid-stream past
    ``dead_after`` was dropped, then finished its stream, and its update was folded
    into the round's model: the round counted it as a participant and as dropped."""
    settings = {"rounds": 1, "min_clients": 2, "quorum": 1, "heartbeat": 0.5,
                "dead_after": 2.0, "round_timeout": 30, "join_timeout": 30, "max_attempts": 1,
                "seed": 1}  # fmt: skip
    agg = fed.aggregator(settings, services=[site(0), "quiet"])
    honest, quiet = RawClient(fed, agg.port, site(0)), RawClient(fed, agg.port, "quiet")
    stop = threading.Event()
    try:
        honest.join()
        quiet.join()
        run = Background(agg.run, "aggregator")
        run.start()
        honest_head, honest_params, _ = honest.train()
        head, params, _ = quiet.train()

        def beat() -> None:  # the honest site is alive all along
            while not stop.is_set():
                honest.client.unary(BEAT, msg.encode({"kind": "beat"}))
                time.sleep(0.3)

        threading.Thread(target=beat, daemon=True).start()
        payload = to_bytes(params)
        update = {"kind": "update", "round": head["round"], "attempt": head["attempt"],
                  "epoch": head["epoch"], "samples": 10, "metrics": {"loss": 1.0}}  # fmt: skip

        def pieces() -> Iterator[bytes]:
            yield msg.header_bytes(update) + payload[:1000]
            wait_for(lambda: "quiet" in agg.rounds.attempt.dropped, "the drop", timeout=20)
            yield payload[1000:]

        late = Background(lambda: quiet.client.upload(msg.SUBMIT, pieces()), "quiet")
        late.start()
        with pytest.raises((FlError, TransportError), match="has no pending update"):
            late.outcome()
        stop.set()
        reply = honest.submit(honest_head["round"], honest_head["attempt"], to_bytes(honest_params))
        assert reply["kind"] == "accepted"
        run.outcome()
        entry = agg.history[-1]
        assert entry["dropped"] == ["quiet"]
        assert entry["participants"] == [site(0)] and entry["updates"] == 1
    finally:
        stop.set()
        agg.rounds.finish(0)
        agg.server.stop(None)
        honest.close()
        quiet.close()


# --- 2. add() does not hold the accumulator while it folds ---------------------------------


def test_a_stream_cannot_start_folding_while_a_whole_update_is_being_added() -> None:
    """``FedAvgAccumulator.add`` never sets ``busy``, so ``incoming()`` (a streamed
    update) starts while ``add`` is half-way: two threads read-modify-write the same
    int64 sums. Reachable on the wire: a Submit stream begun while no attempt is open
    is routed to ``Rounds._submit`` (which ``add``s), then vetted against the attempt
    open when it ends, while other updates stream through the receiver."""
    size = 1 << 16
    global_params = {"w": np.zeros(size, np.float32)}
    acc = FedAvg(threads=1).accumulator(1, global_params, weight_bound=100)
    inside, resume = threading.Event(), threading.Event()
    original = acc.exact.fold

    def slow_fold(*args: Any, **kwargs: Any) -> None:  # only timing: the real fold runs
        inside.set()
        resume.wait(10)
        original(*args, **kwargs)

    acc.exact.fold = slow_fold  # type: ignore[method-assign]
    adder = Background(lambda: acc.add(Update("a", {"w": np.ones(size, np.float32)}, 1)), "add")
    adder.start()
    assert inside.wait(10)
    try:
        with pytest.raises(FlError, match="another update is being folded"):
            acc.incoming("b", 1)
    finally:
        resume.set()
        adder.outcome()


# --- 3. honest values refused by the fixed-point range -------------------------------------


def test_a_batch_counter_past_65536_in_the_first_round_is_averaged_not_refused() -> None:
    """BatchNorm's ``num_batches_tracked`` starts at 0, so its range is ±65536: a site
    that trains more than 65536 batches in round 1 (one epoch of ~1M images at batch
    size 16) is refused as hostile. Before the change any finite value was averaged.
    (``FedAvg.aggregate`` now widens the range to the round's values; the streamed
    accumulator, which the aggregator uses for FedAvg/FedProx/FedAdam, cannot.)"""
    global_params: Params = {
        "w": np.zeros(4, np.float32),
        "bn.num_batches_tracked": np.array(0, dtype=np.int64),
    }
    updates = [
        Update(f"s{i}", {"w": np.full(4, 0.5, np.float32),
                         "bn.num_batches_tracked": np.array(batches, dtype=np.int64)}, 100)
        for i, batches in enumerate([70_000, 90_000])
    ]  # fmt: skip
    # the aggregator's path: an accumulator sized from the sampled sites' join counts
    acc = FedAvg(threads=1).accumulator(1, global_params, weight_bound=200)
    for update in updates:
        acc.add(update)
    assert int(acc.finish()["bn.num_batches_tracked"]) == 80_000


# --- 4. precision depends on counts a peer claims at Join ----------------------------------


def test_a_peer_that_overstates_its_count_costs_precision_only_within_the_stated_bound() -> None:
    """The grid is sized from ``_weight_bound``: a sampled peer that joined without
    ``samples`` or claimed ``max_samples`` counts 10**9, which coarsens every tensor's
    grid by ~24 bits (median relative error ~3.5e-7 on values ~1, a few float32
    half-ulps). That is documented (``_exact``, architecture.md) and bounded: the error
    never exceeds ``K / (2 N 2**F)`` plus float32's own rounding."""
    rng = np.random.default_rng(0)
    global_params = {"w": rng.standard_normal(10_000).astype(np.float32)}
    updates = [
        Update(f"s{i}", {"w": (global_params["w"] + rng.standard_normal(10_000) * 0.01)
                         .astype(np.float32)}, 30)
        for i in range(3)
    ]  # fmt: skip
    bound = 3 * 30 + 10**9  # three honest counts and one peer that gave none at Join
    acc = FedAvg(threads=1).accumulator(1, global_params, weight_bound=bound)
    for update in updates:
        acc.add(update)
    got = acc.finish()["w"].astype(np.float64)
    exact = sum(u.params["w"].astype(np.float64) * 30 for u in updates) / 90
    f, _ = fraction_bits(global_params["w"], bound)
    half_ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64) / 2
    assert (np.abs(got - exact) <= 3 / (2 * 90 * 2.0**f) + half_ulp * (1 + 1e-9)).all()
    relative = float(np.median(np.abs(got - exact) / np.abs(exact)))
    assert relative > 2.0**-24  # the cost is real (why max_samples should be realistic)


# --- 5. ranges of a float64 model near its top ---------------------------------------------


def test_a_huge_float64_value_fails_closed_with_an_flerror() -> None:
    """``fraction_bits`` calls ``math.ldexp(1.0, E + 16)``, which raises OverflowError
    (not FlError) for a float64 global tensor beyond 2**1007: every rule's aggregation
    dies with a traceback instead of refusing. A hostile site with a huge sample count
    may move a float64 tensor 2**16 further each round, so ~63 rounds get it there.
    (A round's extent was capped with MAX_EXTENT while this was written; the global
    model's own exponent is not.)"""
    global_params = {"w": np.array([1.0, 2.0], np.float64)}
    updates = [
        Update("honest", {"w": np.array([1.0, 2.0], np.float64)}, 10),
        Update("hostile", {"w": np.array([1e308, 0.0], np.float64)}, 1),
    ]
    with contextlib.suppress(FlError):  # scored or refused: either fails closed
        FedAvg(threads=1).aggregate(1, global_params, updates)
    with pytest.raises(FlError):
        ExactSum({"w": np.array([2.0**1010], np.float64)}, weight_bound=4)


# --- 6. waiting for the buffer counts as silence -------------------------------------------


class WideDigits(DigitsTask):
    """Digits with an 18 MB model: an upload larger than gRPC's flow-control window,
    so a sender waiting at the aggregator really waits (a small one is buffered)."""

    def _network(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 1024), nn.ReLU(),
                             nn.Linear(1024, 10))  # fmt: skip


def slow_upload(raw: RawClient, header: dict[str, Any], params: Any, seconds: float) -> Any:
    """An honest update, streamed at a steady pace over ``seconds`` (a slow uplink)."""
    head = {"kind": "update", "round": header["round"], "attempt": header["attempt"],
            "epoch": header["epoch"], "samples": 10, "metrics": {"loss": 1.0}}  # fmt: skip
    data = to_bytes(params)
    parts = [data[at : at + (1 << 20)] for at in range(0, len(data), 1 << 20)]

    def pieces() -> Iterator[bytes]:
        yield msg.header_bytes(head)
        for part in parts:
            time.sleep(seconds / len(parts))
            yield part

    return msg.decode(raw.client.upload(msg.SUBMIT, pieces()))[0]


def test_sites_queued_behind_other_uploads_are_not_dropped_as_silent(fed: Federation) -> None:
    """Streams are now received one at a time, and a site waiting for the receive
    buffer is not "seen" (``_seen`` runs only once its headers are read; a real
    collaborator's ahead-``Next`` keeps it alive only POLL_SECONDS more). Four honest
    sites whose uploads each take 60% of ``dead_after``, all at once: the last ones
    wait longer than ``dead_after``, are dropped, and their updates then refused
    ("has no pending update"). Received concurrently (as ``canonical`` did before the
    change), none waits. Real collaborators: dropped once a site waits behind others
    for more than POLL_SECONDS + dead_after (15 s by default), e.g. the 2nd of two
    sites each uploading a 100 MB model over a 50 Mbit/s uplink."""
    settings = {"rounds": 1, "min_clients": 4, "quorum": 4, "max_attempts": 1,
                "round_timeout": 30, "heartbeat": 0.5, "dead_after": 2.0,
                "join_timeout": 30, "seed": 3}  # fmt: skip
    wide = Federation(WideDigits(), fed.shards, fed.authority, fed.key)
    names = [site(i) for i in range(4)]
    agg = wide.aggregator(settings, services=names)
    raws = [RawClient(wide, agg.port, name) for name in names]
    with serving(agg, *raws) as run:
        trained = [raw.train() for raw in raws]
        for raw in raws:  # every site heard from just now: only the wait can count
            raw.client.unary(BEAT, msg.encode({"kind": "beat"}))
        uploads = [
            Background(functools.partial(slow_upload, raw, t[0], t[1], 1.2), raw.name)
            for raw, t in zip(raws, trained, strict=True)
        ]
        for upload in uploads:
            upload.start()
        assert [u.outcome()["kind"] for u in uploads] == ["accepted"] * 4
        run.outcome()


def test_a_site_uploading_longer_than_dead_after_is_not_dropped_in_canonical_order(
    fed: Federation,
) -> None:
    """Found by a hostile review: a whole update (canonical order, a robust rule) marked
    its sender seen once, at its header; a site whose upload took longer than
    ``dead_after`` was dropped as silent while its bytes kept arriving, its update then
    refused, in every attempt (a large model on a slow link: no attacker needed)."""
    settings = {"rounds": 1, "min_clients": 2, "quorum": 2, "max_attempts": 1,
                "round_timeout": 30, "heartbeat": 0.5, "dead_after": 2.0,
                "join_timeout": 30, "seed": 3, "strategy": "median",
                "aggregation_order": "canonical"}  # fmt: skip
    wide = Federation(WideDigits(), fed.shards, fed.authority, fed.key)
    names = [site(0), site(1)]
    agg = wide.aggregator(settings, services=names)
    raws = [RawClient(wide, agg.port, name) for name in names]
    with serving(agg, *raws) as run:
        trained = [raw.train() for raw in raws]
        for raw in raws:  # heard from just now: only the upload's length can count
            raw.client.unary(BEAT, msg.encode({"kind": "beat"}))
        quick = Background(functools.partial(slow_upload, raws[0], *trained[0][:2], 0.1), "q")
        slow = Background(functools.partial(slow_upload, raws[1], *trained[1][:2], 5.0), "s")
        quick.start()
        slow.start()
        assert [quick.outcome()["kind"], slow.outcome()["kind"]] == ["accepted"] * 2
        run.outcome()
        entry = agg.history[-1]
        assert sorted(entry["participants"]) == names and entry["dropped"] == []
