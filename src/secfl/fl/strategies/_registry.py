"""Strategies by name, as the policy's federation settings and the CLI name them.

A strategy module registers its classes with :func:`register_strategy` when it is
imported; :mod:`secfl.fl.strategies` imports the built-in ones. Names are matched
case-insensitively, ignoring ``-`` and ``_`` (``FedAvg``, ``fed-avg``, ``fedavg``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from secfl._internal.registry import Registry
from secfl.errors import FlError
from secfl.fl.strategies._base import Strategy

__all__ = ["available_strategies", "get_strategy", "register_strategy"]

_REGISTRY: Registry[Strategy] = Registry(
    "strategy",
    Strategy,  # type: ignore[type-abstract]  # mypy takes only concrete classes as type[T]
    FlError,
)

S = TypeVar("S", bound=type[Strategy])


def register_strategy(cls: S) -> S:
    """Make ``cls`` available as ``cls.name``; usable as a class decorator."""
    return _REGISTRY.register(cls)


def available_strategies() -> list[str]:
    """The registered names, sorted."""
    return _REGISTRY.names()


def get_strategy(name: str, **settings: Any) -> Strategy:
    """A new strategy ``name`` built with ``settings``; :class:`FlError` for an
    unknown name, an unknown setting or an invalid value."""
    return _REGISTRY.create(name, **settings)
