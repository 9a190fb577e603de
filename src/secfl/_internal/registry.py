"""Classes by name, as policies and command lines name them (strategies, attacks).

Names match case-insensitively, ignoring ``-`` and ``_`` (``FedAvg``, ``fed-avg``);
settings are checked against the class's signature before it is built, so an
unknown or missing setting is a one-line error of the caller's type.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from secfl.errors import SecflError


class Named(Protocol):
    """What a registry holds: classes with a ``name``."""

    name: ClassVar[str]


T = TypeVar("T", bound=Named)
C = TypeVar("C")


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


class Registry(Generic[T]):
    """Subclasses of ``base`` by their ``name`` attribute; errors are ``error``s."""

    def __init__(self, kind: str, base: type[T], error: type[SecflError]) -> None:
        self.kind, self.base, self.error = kind, base, error
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: C) -> C:
        """Make ``cls`` available as ``cls.name``; usable as a class decorator."""
        self._add(cls)
        return cls

    def _add(self, cls: object) -> None:
        name = getattr(cls, "name", "")
        if not (isinstance(cls, type) and issubclass(cls, self.base)) or not name:
            raise self.error(f"{self.kind}: {cls!r} is not a {self.base.__name__} with a name")
        key = _key(name)
        if key in self._classes and self._classes[key] is not cls:
            raise self.error(f"{self.kind}: the name '{name}' is already taken")
        self._classes[key] = cls

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(cls.name for cls in self._classes.values())

    def create(self, name: str, **settings: Any) -> T:
        """A new ``name`` built with ``settings``; an unknown name, an unknown setting or
        an invalid value is an ``error``."""
        cls = self._classes.get(_key(name)) if isinstance(name, str) else None
        if cls is None:
            known = ", ".join(self.names())
            raise self.error(f"{self.kind}: unknown {self.kind} {name!r} (known: {known})")
        try:
            inspect.signature(cls).bind(**settings)
        except TypeError as exc:
            raise self.error(f"{self.kind} '{cls.name}': {exc}") from None
        try:
            return cls(**settings)
        except (TypeError, ValueError, OverflowError) as exc:  # a check the class lacks
            message = " ".join(str(exc).split())[:200]
            raise self.error(f"{self.kind} '{cls.name}': {type(exc).__name__}: {message}") from None


def positive(value: Any, what: str, error: type[SecflError], *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else ``error``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise error(f"{what} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise error(f"{what} must be a finite number {bound}, not {value!r}")
    return number
