"""Found by a hostile review: with no validation or test data the objective is read
from the participants' own training metrics, and one participant set it. Its
``loss: -1e300``, sent with a single sample (1/1260 of the weight), made the round's
``train_loss`` about -8e296, and so named an untrained round 1 the best for the rest
of the run; under Krum it did so even though Krum left its update out. A round's
training metrics now come from the updates the rule kept, and under a robust rule
they are those updates' median. Real aggregator, real TLS, real digits sites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secfl.fl import _messages as msg
from secfl.fl._tensors import to_bytes
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Background, Federation, RawClient, site

pytestmark = pytest.mark.timeout(300)


def _liar(raw: RawClient, rounds: int, far: bool, omit: bool) -> list[str]:
    """Joins, then each round sends a valid update (far from the others' if ``far``,
    else the model it was sent, which Krum may well choose) with one sample, claiming a
    training loss of -1e300 in round 1, and after it 1.0 (or, with ``omit``, none)."""
    raw.join()
    kinds = []
    for _ in range(rounds):
        header, params, _ = raw.train()
        if far:  # an update Krum will not select
            params = {k: (v + 50).astype(v.dtype) if v.dtype.kind == "f" else v
                      for k, v in params.items()}  # fmt: skip
        head = {
            "kind": "update", "round": header["round"], "attempt": header["attempt"],
            "epoch": raw.epoch, "samples": 1,
            "metrics": {"loss": -1e300} if header["round"] == 1 else {} if omit else {"loss": 1.0},
        }  # fmt: skip
        reply = raw.client.upload(msg.SUBMIT, msg.stream(head, to_bytes(params)))
        kinds.append(msg.decode(reply)[0]["kind"])
    return kinds


@pytest.mark.parametrize(
    ("rule", "far", "omit"),
    [("krum", True, False), ("krum", False, False), ("median", False, False),
     ("median", False, True)],
    ids=["krum-left-out", "krum-chosen", "median", "median-omits-later"],
)  # fmt: skip
def test_one_participant_cannot_set_the_objective(
    tmp_path: Path, rule: str, far: bool, omit: bool
) -> None:
    """A second review: under Krum the chosen update alone set the metrics (Krum keeps
    one), and a participant that left its loss out of later rounds took them out of
    the objective, so its round 1 stayed the best."""
    honest = [0, 1, 2, 3]
    report = split("digits", len(honest), seed=1, out=tmp_path / "shards")
    fed = Federation(get_task("digits"), report)
    settings: dict[str, Any] = {
        "rounds": 3, "min_clients": 5, "quorum": 5, "heartbeat": 0.5, "dead_after": 5.0,
        "round_timeout": 60, "join_timeout": 60, "seed": 4, "strategy": rule,
    }  # fmt: skip
    if rule == "krum":
        settings["strategy_settings"] = {"f": 1}
    agg = fed.aggregator(settings, services=[*(site(i) for i in honest), "evil"], start=False)
    agg.validation = None  # no validation data: the objective is the training loss
    agg.start()
    raw = RawClient(fed, agg.port, "evil")
    liar = Background(lambda: _liar(raw, 3, far=far, omit=omit), "evil")
    liar.start()
    try:
        fed.run(agg, honest, joined=5)
        assert liar.outcome() == ["accepted"] * 3
    finally:
        raw.close()
    first, last = agg.history[0], agg.history[-1]
    assert last["objective_metric"] == "train_loss"
    assert 0 < first["train_loss"] < 10, first["train_loss"]  # the honest sites' losses
    assert last["best_round"] == 3  # training lowered the loss, and round 3 is the best
