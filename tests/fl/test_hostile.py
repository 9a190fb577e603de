"""Hostile numbers from collaborators, against the real aggregator over mutual TLS.

A collaborator's update header carries numbers the aggregator computes with: the
sample count (FedAvg's weight) and the metrics. Each one below used to be answered
``accepted`` and then crash ``Aggregator.run()`` (OverflowError), poison the round's
metrics (NaN) or outweigh every honest site (10**300 samples). Each must be refused
with its reason, in one line, while the round completes with the honest updates and
trains exactly the model the honest sites alone would have trained.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl import _messages as msg
from secfl.fl._chunks import chunks
from secfl.fl._config import FederationConfig
from secfl.fl._tensors import to_bytes
from secfl.fl._transport import TransportError
from secfl.fl.strategies._base import Params
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Background, Federation, RawClient, site

HONEST = [0, 1, 2]
#: name -> (the update header's ``samples`` and ``metrics`` as raw JSON text, the
#: reason the aggregator must give). Raw text: json.dumps refuses NaN and ints of
#: more than 4300 digits, so a hostile peer writes them by hand.
HOSTILE = {
    "huge-samples": ("1" + "0" * 400, '{"loss": 1.0}', r"samples: .*401 digits.* 1 to 1000000000"),
    "huge-metric": ("10", '{"loss": 1' + "0" * 400 + "}", r"metrics: 'loss' is not a finite"),
    "outweigh": ("1" + "0" * 300, '{"loss": 1.0}', r"samples: .* 1 to 1000000000"),
    "over-limit": ("1000000001", '{"loss": 1.0}', r"samples: 1000000001 is not an integer from 1"),
    "5000-digits": ("9" * 5000, '{"loss": 1.0}', r"message: the header holds a number of more"),
    "nan-metric": ("10", '{"loss": NaN}', r"message: the header holds NaN or Infinity"),
    "inf-metric": ("10", '{"loss": -Infinity}', r"message: the header holds NaN or Infinity"),
    "bool-samples": ("true", '{"loss": 1.0}', r"samples: a bool is not an integer from 1"),
    "float-samples": ("10.0", '{"loss": 1.0}', r"samples: 10\.0 is not an integer from 1"),
    "zero-samples": ("0", '{"loss": 1.0}', r"samples: 0 is not an integer from 1"),
    "text-metric": ("10", '{"loss": "low"}', r"metrics: 'loss' is not a finite number"),
    "many-metrics": (
        "10",
        json.dumps({f"m{i}": 1.0 for i in range(200)}),
        r"metrics: 200 metrics, at most 64",
    ),
    "long-name": ("10", json.dumps({"x" * 500: 1.0}), r"metrics: a metric name of 500 characters"),
    # joined with 10 (RawClient.join), then claims 1000: the round's weight bound is the
    # sum of the join counts, so this took most of it and the honest sites' updates
    # were refused as "beyond its bound" (the quorum failed, the aggregator stopped)
    "crowd-out": (
        "1000",
        '{"loss": 1.0}',
        r"samples: 'crowd-out' reports 1000 samples, more than the 10 it reported when it "
        r"joined",
    ),
}
SETTINGS = {"rounds": 1, "quorum": 3, "heartbeat": 0.5, "dead_after": 5.0,
            "round_timeout": 60, "join_timeout": 60, "seed": 4}  # fmt: skip


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 3, seed=1, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


def raw_header(round: int, attempt: int, epoch: str, samples: str, metrics: str) -> bytes:
    """An update header written by hand, as a hostile collaborator would."""
    text = (
        f'{{"kind": "update", "round": {round}, "attempt": {attempt}, "epoch": "{epoch}", '
        f'"samples": {samples}, "metrics": {metrics}}}'
    )
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


def submit_hostile(client: RawClient, samples: str, metrics: str) -> str:
    """Train on the global model as sent, then submit it with a hostile header; the
    aggregator's refusal (a TransportError) as text."""
    header, params, _ = client.train()
    head = raw_header(header["round"], header["attempt"], header["epoch"], samples, metrics)
    try:
        reply = client.client.upload(msg.SUBMIT, iter([head, *chunks(to_bytes(params))]))
    except TransportError as exc:
        return str(exc)
    return f"answered {msg.decode(reply)[0]}"


@pytest.mark.parametrize("order", ["canonical", "arrival"])
def test_hostile_numbers_are_refused_and_the_round_trains_the_honest_model(
    fed: Federation, order: str
) -> None:
    names = sorted(HOSTILE)
    settings = {**SETTINGS, "aggregation_order": order}
    agg = fed.aggregator(
        {**settings, "min_clients": len(HONEST) + len(names)},
        services=[*(site(i) for i in HONEST), *names],
    )
    raws = {name: RawClient(fed, agg.port, name) for name in names}
    for raw in raws.values():
        raw.join()
    workers = {
        name: Background(lambda n=name: submit_hostile(raws[n], *HOSTILE[n][:2]), name)
        for name in names
    }
    for worker in workers.values():
        worker.start()
    try:
        params = fed.run(agg, HONEST, joined=len(HONEST) + len(names))
        reasons = {name: worker.outcome() for name, worker in workers.items()}
    finally:
        for raw in raws.values():
            raw.close()
    for name in names:
        assert "INVALID_ARGUMENT: " in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name] and len(reasons[name]) < 300, (name, reasons[name])
        assert _matches(HOSTILE[name][2], reasons[name]), (name, reasons[name])
    (entry,) = agg.history
    assert entry["attempt"] == 1 and entry["refused"] == names
    assert entry["participants"] == [site(i) for i in HONEST]
    assert np.isfinite(entry["train_loss"])
    honest = fed.aggregator({**settings, "min_clients": len(HONEST)})
    expected = fed.run(honest, HONEST)
    _assert_same_model(params, expected, exact=order == "canonical")
    assert entry["val_accuracy"] == honest.history[0]["val_accuracy"] or order == "arrival"


def _matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


def _assert_same_model(got: Params, expected: Params, *, exact: bool) -> None:
    assert sorted(got) == sorted(expected)
    for name in got:
        if exact:
            assert np.array_equal(got[name], expected[name]), name
        else:  # folded in arrival order: the same sum up to float rounding
            assert np.allclose(got[name], expected[name], rtol=1e-5, atol=1e-6), name


def test_a_join_with_a_hostile_sample_count_is_refused(fed: Federation) -> None:
    agg = fed.aggregator({**SETTINGS, "min_clients": 1, "quorum": 1}, services=["joiner"])
    client = fed.client(agg.port, "joiner")
    try:
        for samples, reason in [
            ("1" + "0" * 400, r"samples: .*401 digits"),
            ("true", r"samples: a bool"),
            ("-1", r"samples: -1 is not"),
        ]:
            raw = f'{{"kind": "join", "samples": {samples}}}'.encode()
            with pytest.raises(TransportError, match=reason):
                client.unary(msg.JOIN, struct.pack(">I", len(raw)) + raw)
        assert agg.rounds.participants == {}
        reply = client.unary(msg.JOIN, msg.encode({"kind": "join", "samples": 10}))
        assert msg.decode(reply, "welcome")[0]["participant"] == "joiner"
    finally:
        client.close()
        agg.server.stop(None)


# --- the same checks as library calls ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [(10**400, "an integer of 401 digits"), (True, "a bool"), (2.0, "2.0 is not"), (0, "0 is not"),
     (-5, "-5 is not"), (None, "None is not"), ("7", "a str"), (10**9 + 1, "1000000001 is not")],
    ids=["10**400", "bool", "float", "zero", "negative", "none", "str", "over-limit"],
)  # fmt: skip
def test_sample_counts_are_bounded(value: Any, reason: str) -> None:
    with pytest.raises(FlError, match=f"^samples: {reason}"):
        msg.sample_count({"samples": value}, 10**9)
    assert msg.sample_count({"samples": 10**9}, 10**9) == 10**9


def test_metrics_are_finite_floats() -> None:
    assert msg.metric_values({"metrics": {"loss": 1, "acc": 0.5}}) == {"loss": 1.0, "acc": 0.5}
    assert msg.metric_values({}) == {}
    for bad in [[1.0], {"loss": 10**400}, {"loss": float("nan")}, {"loss": True},
                {"loss": {"deep": 1.0}}]:  # fmt: skip
        with pytest.raises(FlError, match="^metrics: "):
            msg.metric_values({"metrics": bad})


def test_the_sample_limit_is_a_policy_setting() -> None:
    assert FederationConfig.parse({}).max_samples == 10**9
    assert FederationConfig.parse({"max_samples": 5000}).max_samples == 5000
    for bad in (0, True, 2**63, 10**400):
        with pytest.raises(FlError, match=r"^federation: max_samples: "):
            FederationConfig.parse({"max_samples": bad})


def test_headers_with_nan_or_huge_numbers_are_refused_in_one_line() -> None:
    for text, reason in [
        ('{"kind": "update", "x": NaN}', "NaN or Infinity"),
        ('{"kind": "update", "x": Infinity}', "NaN or Infinity"),
        ('{"kind": "update", "x": ' + "1" * 5000 + "}", "a number of more than"),
        ("[" * 30_000 + "]" * 30_000, "nested"),
    ]:
        raw = text.encode()
        with pytest.raises(FlError, match=f"^message: .*{reason}"):
            msg.decode(struct.pack(">I", len(raw)) + raw)


def many_tensors_update(tensors: int) -> bytes:
    """A safetensors buffer of ``tensors`` one-byte tensors: a header of megabytes (a
    sampled peer's), each entry valid, none of them the model's."""
    entries = {f"t{i:07d}": {"dtype": "I8", "shape": [], "data_offsets": [i, i + 1]}
               for i in range(tensors)}  # fmt: skip
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(tensors)


@pytest.mark.parametrize("strategy", ["fedavg", "median"])  # streamed, whole updates
def test_a_header_far_larger_than_the_models_is_refused_before_it_is_parsed(
    fed: Federation, strategy: str
) -> None:
    """Found by a review: a sampled peer's update header could hold 16 MiB of entries
    (~280k tensors), all parsed (1-2 s of the aggregator's CPU, the header held in
    memory) before its names were found not to be the model's; only the update's size
    limit (the model's size) bounded it. The header's length is now bounded by what the
    model's own tensors need, and checked before it is read. Here: 8000 entries, half a
    megabyte, within the digits model's size limit."""
    settings = {**SETTINGS, "strategy": strategy, "min_clients": len(HONEST) + 1}
    agg = fed.aggregator(settings, services=[*(site(i) for i in HONEST), "wide"])
    raw = RawClient(fed, agg.port, "wide")
    raw.join()

    def wide() -> str:
        header, _, _ = raw.train()
        try:
            raw.submit(header["round"], header["attempt"], *chunks(many_tensors_update(8000)))
        except TransportError as exc:
            return str(exc)
        return "accepted"

    worker = Background(wide, "wide")
    worker.start()
    try:
        fed.run(agg, HONEST, joined=len(HONEST) + 1)
        reason = worker.outcome()
    finally:
        raw.close()
    assert re.search(r"tensors: the header's \d+ bytes exceed the \d+ that the model's", reason), (
        reason
    )
    (entry,) = agg.history
    assert entry["refused"] == ["wide"]
    assert entry["participants"] == [site(i) for i in HONEST]
