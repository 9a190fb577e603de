"""The attack interface, the registry, and the flattening of deltas attacks work on.

An :class:`Attack` changes what one malicious participant does in a round: the data
it trains on (:meth:`Attack.poison_data`) and the delta it sends
(:meth:`Attack.poison_delta`). Attacks exist to evaluate defences in an in-process
simulation; nothing in a policy can turn one on.

Names are matched case-insensitively, ignoring ``-`` and ``_`` (``min-max``,
``MinMax``, ``min_max``), as strategy names are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from secfl._internal.registry import Registry, positive
from secfl.tasks._base import ClassificationTask, Dataset, TaskError

__all__ = [
    "Attack",
    "CraftedFromRows",
    "Params",
    "available_attacks",
    "flatten",
    "get_attack",
    "integer",
    "number",
    "register_attack",
    "rewrite",
    "unflatten",
]

#: A model or a delta: tensor name → numpy array (as :mod:`secfl.fl.strategies`).
Params = dict[str, np.ndarray]


A = TypeVar("A", bound=type["Attack"])


class Attack:
    """What a malicious participant does differently; by default, nothing.

    Subclasses set :attr:`name`, take their settings as keyword arguments of
    ``__init__`` (checked there, a :class:`TaskError` for a bad value) and override
    one or both hooks. ``delta`` is the attacker's honestly trained local model minus
    the global model; ``benign`` the honest deltas the colluding malicious
    participants computed this round, the attacker's own included; ``honest`` (only
    for an :attr:`omniscient` attack) the deltas of every honest participant that
    round. Every returned
    delta has ``delta``'s names, shapes and dtypes and is finite.
    """

    #: The registry name.
    name: ClassVar[str] = ""
    #: Needs the benign deltas of the colluding malicious participants (ALIE, IPM,
    #: Min-Max, Min-Sum); other attacks ignore ``benign``.
    colluding: ClassVar[bool] = False
    #: Needs the honest participants' deltas of the round (Mimic): the simulation
    #: passes them as ``honest``, in sorted sender order; other attacks ignore it.
    omniscient: ClassVar[bool] = False

    def poison_data(
        self, data: Dataset, task: ClassificationTask, rng: np.random.Generator
    ) -> Dataset:
        """The shard the attacker trains on (default: ``data`` unchanged)."""
        del task, rng
        return data

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        """The delta the attacker sends (default: a copy of ``delta``)."""
        del benign, rng, honest
        return {key: np.array(value, copy=True) for key, value in delta.items()}

    def settings(self) -> dict[str, Any]:
        """The settings this attack was built with (for logs and reports)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


_REGISTRY: Registry[Attack] = Registry("attack", Attack, TaskError)


def register_attack(cls: A) -> A:
    """Make ``cls`` available as ``cls.name``; usable as a class decorator."""
    return _REGISTRY.register(cls)


def available_attacks() -> list[str]:
    """The registered attack names, sorted."""
    return _REGISTRY.names()


def get_attack(name: str, **settings: Any) -> Attack:
    """A new attack ``name`` built with ``settings``; :class:`TaskError` for an unknown
    name, an unknown setting or an invalid value."""
    return _REGISTRY.create(name, **settings)


# -- settings ------------------------------------------------------------------------


def number(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else :class:`TaskError`."""
    return positive(value, what, TaskError, allow_zero=allow_zero)


def integer(value: Any, what: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else :class:`TaskError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise TaskError(f"{what} must be an integer >= {minimum}, not {value!r}")
    return int(value)


# -- deltas as vectors ------------------------------------------------------------------


def _floating(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating))


def _check_params(params: Any, template: Mapping[str, np.ndarray], what: str) -> None:
    if not isinstance(params, Mapping):
        raise TaskError(f"{what} is not a mapping of tensors but {type(params).__name__}")
    if set(params) != set(template):
        odd = sorted(set(params) ^ set(template))
        raise TaskError(f"{what} does not have the attacker's tensors (differs in {odd[:3]})")
    for key, ref in template.items():
        value = params[key]
        if not isinstance(value, np.ndarray):
            raise TaskError(f"{what}: tensor '{key}' is not a numpy array")
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise TaskError(
                f"{what}: tensor '{key}' is {value.dtype}{list(value.shape)}, "
                f"not {ref.dtype}{list(ref.shape)}"
            )
        if _floating(value) and not np.isfinite(value).all():
            raise TaskError(f"{what}: tensor '{key}' is not finite")


def flatten(
    params: Mapping[str, np.ndarray], template: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """The floating-point tensors of ``params`` as one float64 vector, in the key
    order of ``template`` (default: ``params``'s own).

    Integer and boolean tensors (e.g. batch-norm counters) are not learned, so no
    attack touches them: :func:`unflatten` copies them from the honest delta.
    """
    keys = list(params if template is None else template)
    parts = [np.asarray(params[k], dtype=np.float64).ravel() for k in keys if _floating(params[k])]
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, template: Mapping[str, np.ndarray], what: str) -> Params:
    """``vector`` back into ``template``'s names, shapes and dtypes; must stay finite."""
    result: Params = {}
    offset = 0
    for key, ref in template.items():
        if not _floating(ref):
            result[key] = np.array(ref, copy=True)
            continue
        with np.errstate(over="ignore"):
            value = vector[offset : offset + ref.size].reshape(ref.shape).astype(ref.dtype)
        if not np.isfinite(value).all():
            raise TaskError(f"{what}: the poisoned tensor '{key}' is not finite in {ref.dtype}")
        result[key] = value
        offset += ref.size
    return result


def _rows(what: str, deltas: Sequence[Params], template: Params, kind: str) -> np.ndarray:
    """``deltas`` checked against ``template`` and stacked, one float64 row each."""
    if isinstance(deltas, Mapping) or not isinstance(deltas, Sequence) or not deltas:
        raise TaskError(f"{what}: needs the {kind} deltas (at least one)")
    for i, other in enumerate(deltas):
        _check_params(other, template, f"{what}: {kind} delta {i}")
    return np.stack([flatten(other, template) for other in deltas])


class CraftedFromRows(Attack):
    """An attack that sends one delta crafted from the rows it may see (the colluders'
    benign deltas, and the honest ones if omniscient): subclasses define ``_poison``."""

    def _poison(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda _, rows: self._poison(rows), honest)


def rewrite(
    attack: Attack,
    delta: Params,
    benign: Sequence[Params],
    transform: Callable[[np.ndarray, np.ndarray], np.ndarray],
    honest: Sequence[Params] = (),
) -> Params:
    """Check the deltas, apply ``transform(delta, rows)`` to them as float64 vectors
    and return the result shaped and typed like ``delta``.

    ``rows`` has one row per delta the attack may see, checked and stacked: the
    colluders' ``benign`` ones for a colluding attack, then the ``honest`` ones for an
    omniscient attack (none for the others)."""
    what = f"attack '{attack.name}'"
    _check_params(delta, delta, f"{what}: the delta")
    vector = flatten(delta)
    parts = [np.zeros((0, vector.size))]
    if attack.colluding:
        parts.append(_rows(what, benign, delta, "colluders' benign"))
    if attack.omniscient:
        parts.append(_rows(what, honest, delta, "honest participants'"))
    return unflatten(transform(vector, np.concatenate(parts)), delta, what)
