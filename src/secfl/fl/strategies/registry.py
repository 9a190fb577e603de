"""Strategies by name, as the policy's federation settings and the CLI name them.

A strategy module registers its classes with :func:`register_strategy` when it is
imported; :mod:`secfl.fl.strategies` imports the built-in ones. Names are matched
case-insensitively, ignoring ``-`` and ``_`` (``FedAvg``, ``fed-avg``, ``fedavg``).
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from secfl.errors import FlError
from secfl.fl.strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}

S = TypeVar("S", bound=type[Strategy])


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_strategy(cls: S) -> S:
    """Make ``cls`` available as ``cls.name``; usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)) or not cls.name:
        raise FlError(f"strategy: {cls!r} is not a Strategy with a name")
    key = _key(cls.name)
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise FlError(f"strategy: the name '{cls.name}' is already taken")
    _REGISTRY[key] = cls
    return cls


def available_strategies() -> list[str]:
    """The registered names, sorted."""
    return sorted(cls.name for cls in _REGISTRY.values())


def get_strategy(name: str, **settings: Any) -> Strategy:
    """A new strategy ``name`` built with ``settings``; :class:`FlError` for an
    unknown name, an unknown setting or an invalid value."""
    cls = _REGISTRY.get(_key(name)) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(available_strategies())
        raise FlError(f"strategy: unknown strategy {name!r} (known: {known})")
    try:
        inspect.signature(cls).bind(**settings)
    except TypeError as exc:
        raise FlError(f"strategy '{cls.name}': {exc}") from None
    return cls(**settings)
