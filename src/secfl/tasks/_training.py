"""The deterministic training and evaluation loop of the built-in tasks.

Reproducibility is a security property here: the paper's claim that a model trained
inside TEEs equals one trained without them is checked tensor for tensor, and the
aggregator's audit replays computations. So the same seed, data and initial weights
give bit-identical weights:

- shuffling draws from a ``torch.Generator`` seeded with ``config["seed"]``, and any
  other randomness from a forked, seeded global RNG (the caller's is untouched);
- ``torch.use_deterministic_algorithms(True)`` while training or evaluating;
- one intra-op thread by default (``config["threads"]``): reductions split over a
  different number of threads round differently, and parties' machines differ.

Both switches are process-wide in torch: they are set on entry and restored on exit,
so two trainings running concurrently in one process may see each other's setting
(harmless: both want the same), and other torch code in that time runs on
``threads`` threads.

FedProx: with ``proximal_mu > 0`` the loss gains ``mu / 2 * ||w - w_global||²``,
where ``w_global`` is ``config["global_params"]`` (a name → tensor mapping, or tensors
in ``model.parameters()`` order) or, when absent, the weights the model had when
training started (what a collaborator just received). At ``mu = 0`` the term is
not computed at all, so training is exactly plain training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from secfl._internal.values import describe
from secfl.errors import DivergedError, TaskError
from secfl.tasks._base import Dataset, _check_seed

__all__ = [
    "EVAL_BATCH",
    "TRAIN_CONFIG_KEYS",
    "LossFn",
    "TrainConfig",
    "deterministic",
    "evaluate_classifier",
    "predict",
    "train_classifier",
    "train_supervised",
]

#: Every key a training configuration may hold.
TRAIN_CONFIG_KEYS = frozenset(
    {
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "seed",
        "proximal_mu",
        "global_params",
        "threads",
    }
)
#: Evaluation batch size: a bound on memory, not a hyperparameter.
EVAL_BATCH = 1024


@dataclass(frozen=True)
class TrainConfig:
    """A validated training configuration (see :data:`TRAIN_CONFIG_KEYS`)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    proximal_mu: float = 0.0
    global_params: Mapping[str, Any] | Sequence[Any] | None = None
    threads: int = 1

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> TrainConfig:
        """Check types and ranges; unknown keys are refused (a typo must not pass)."""
        if not isinstance(config, Mapping):
            raise TaskError(f"training config: expected a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - TRAIN_CONFIG_KEYS)
        if unknown:
            raise TaskError(
                f"training config: unknown keys {unknown} (allowed: {sorted(TRAIN_CONFIG_KEYS)})"
            )
        c = dict(config)
        return cls(
            epochs=_int(c, "epochs", 1, 1),
            batch_size=_int(c, "batch_size", 32, 1),
            lr=_float(c, "lr", 0.05, positive=True),
            momentum=_float(c, "momentum", 0.0, below_one=True),
            weight_decay=_float(c, "weight_decay", 0.0),
            seed=_check_seed(c.get("seed", 0), "training config: seed"),
            proximal_mu=_float(c, "proximal_mu", 0.0),
            global_params=c.get("global_params"),
            threads=_int(c, "threads", 1, 1),
        )


@contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """Deterministic algorithms and ``threads`` intra-op threads, restored afterwards."""
    saved_threads = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved_det, warn_only=saved_warn)
        torch.set_num_threads(saved_threads)


#: A training loss: ``loss(model_output, targets)``, the batch's mean.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_supervised(
    model: nn.Module,
    data: Dataset,
    config: Mapping[str, Any],
    loss_fn: LossFn,
    *,
    hits: Callable[[torch.Tensor, torch.Tensor], int] | None = None,
) -> dict[str, float]:
    """Minibatch SGD on ``loss_fn``, in place; deterministic given ``config["seed"]``.

    Returns ``loss`` (running mean over the last epoch), with ``hits`` (the correct
    predictions of a batch) also ``accuracy``, then ``n`` (samples, what FedAvg
    weights by), ``epochs`` and ``steps``; with FedProx also ``proximal``, the last
    proximal term ``||w - w_global||²``.
    """
    cfg = TrainConfig.parse(config)
    n = len(data)
    if n == 0:
        raise TaskError("training: the shard has no samples")
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = _anchor(model, cfg.global_params) if cfg.proximal_mu > 0 else None
    metrics: dict[str, float] = {}
    was_training = model.training
    with deterministic(cfg.threads), torch.random.fork_rng(devices=[]):
        # the CPU generator only (what fork_rng restores): torch.manual_seed also queues
        # a CUDA seed with a formatted stack trace, milliseconds on a deep stack
        torch.default_generator.manual_seed(cfg.seed)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        model.train()
        steps = 0
        proximal = 0.0
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=shuffle)
            loss_sum, correct = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                index = order[start : start + cfg.batch_size]
                xb, yb = data.x[index], data.y[index]
                optimizer.zero_grad(set_to_none=True)
                output = model(xb)
                loss = loss_fn(output, yb)
                total = loss
                if anchor is not None:
                    term = torch.stack(
                        [((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True)]
                    ).sum()
                    total = loss + (cfg.proximal_mu / 2.0) * term
                    proximal = float(term.detach())
                if not torch.isfinite(total.detach()):
                    raise DivergedError(
                        f"training diverged at step {steps} (loss is not finite); lower lr"
                    )
                total.backward()
                optimizer.step()
                steps += 1
                loss_sum += float(loss.detach()) * len(index)
                if hits is not None:
                    correct += hits(output.detach(), yb)
        metrics = {"loss": loss_sum / n}
        if hits is not None:
            metrics["accuracy"] = correct / n
        metrics.update({"n": float(n), "epochs": float(cfg.epochs), "steps": float(steps)})
        if anchor is not None:
            metrics["proximal"] = proximal
    model.train(was_training)
    return metrics


def train_classifier(
    model: nn.Module, data: Dataset, config: Mapping[str, Any]
) -> dict[str, float]:
    """:func:`train_supervised` on cross-entropy, with the running ``accuracy``."""
    return train_supervised(model, data, config, F.cross_entropy, hits=_hits)


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(dim=1) == labels).sum())


def predict(model: nn.Module, data: Dataset, threads: int = 1) -> torch.Tensor:
    """``model``'s outputs for every sample of ``data``, in batches, without gradients."""
    was_training = model.training
    outputs = []
    with deterministic(threads), torch.no_grad():
        model.eval()
        for start in range(0, len(data), EVAL_BATCH):
            outputs.append(model(data.x[start : start + EVAL_BATCH]))
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def evaluate_classifier(model: nn.Module, data: Dataset, threads: int = 1) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy`` and ``n`` of ``model`` on ``data``."""
    n = len(data)
    if n == 0:
        raise TaskError("evaluation: the shard has no samples")
    was_training = model.training
    loss_sum, correct = 0.0, 0
    with deterministic(threads), torch.no_grad():
        model.eval()
        for start in range(0, n, EVAL_BATCH):
            xb, yb = data.x[start : start + EVAL_BATCH], data.y[start : start + EVAL_BATCH]
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": float(n)}


def _anchor(
    model: nn.Module, given: Mapping[str, Any] | Sequence[Any] | None
) -> list[torch.Tensor]:
    """The FedProx reference weights, aligned with the model's trainable parameters."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if given is None:
        values: list[Any] = [p.detach() for _, p in named]
    elif isinstance(given, Mapping):
        missing = [name for name, _ in named if name not in given]
        if missing:
            raise TaskError(f"training config: global_params lacks {missing[:3]}")
        values = [given[name] for name, _ in named]
    elif isinstance(given, Sequence) and not isinstance(given, str | bytes):
        if len(given) != len(named):
            raise TaskError(
                f"training config: global_params has {len(given)} tensors, "
                f"the model {len(named)} parameters"
            )
        values = list(given)
    else:
        raise TaskError("training config: global_params must be a mapping or a list of tensors")
    anchor = []
    for (name, param), value in zip(named, values, strict=True):
        tensor = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
        if tuple(tensor.shape) != tuple(param.shape):
            raise TaskError(
                f"training config: global_params '{name}' has shape {list(tensor.shape)}, "
                f"the model {list(param.shape)}"
            )
        anchor.append(tensor.detach().to(dtype=param.dtype).clone())
    return anchor


#: The largest integer setting (epochs, batch size, threads): far above any use, and
#: within what torch and numpy take (``threads: 10**400`` overflowed a C long).
MAX_SETTING = 2**31


def _int(config: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = config.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not minimum <= value <= MAX_SETTING
    ):
        raise TaskError(
            f"training config: {key} must be an integer from {minimum} to {MAX_SETTING}, got "
            f"{describe(value)}"
        )
    return int(value)


def _float(
    config: Mapping[str, Any],
    key: str,
    default: float,
    *,
    positive: bool = False,
    below_one: bool = False,
) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TaskError(f"training config: {key} must be a number, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range (10**400)
        number = math.inf
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise TaskError(
            f"training config: {key} must be a finite number {bound}, got {describe(value)}"
        )
    if below_one and number >= 1:
        raise TaskError(f"training config: {key} must be below 1, got {describe(value)}")
    return number
