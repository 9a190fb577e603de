"""Flower apps, confidential: unmodified Flower ServerApps and ClientApps inside TEEs.

secfl runs a Flower federation's SuperLink and SuperNodes as services of a
board-approved policy, each started by ``secfl run`` (attested, given its keys in a
private RAM folder). See ``docs/flower.md``. The parts:

- :func:`flower_policy` / :class:`FlowerFederation` (this venv, no Flower needed):
  the policy of a Flower federation: a ``superlink`` service and one service per
  site, their measurements (the exact command lines), the Flower CA and the
  SuperLink's certificate, each site's node key, the app and data volumes and the
  injections. ``secfl flower policy`` writes it.
- ``python -m secfl.flower superlink|supernode -- flower-...`` (the Flower venv):
  the wrappers that run inside the TEE. They check Flower's flags, keep the Control
  and Runtime APIs inside the TEE (a Fleet-only gate), register only the attested
  SuperNodes' keys, submit only the approved FAB, and run only it
  (:mod:`secfl.flower._superlink` with :mod:`secfl.flower._control` and
  :mod:`secfl.flower._superlink_output`, :mod:`secfl.flower._supernode`,
  :mod:`secfl.flower._flags`, :mod:`secfl.flower._wrap`, :mod:`secfl.flower._exec`,
  :mod:`secfl.flower._gate`, :mod:`secfl.flower._gate_http`, :mod:`secfl.flower._audit`).
- :class:`SecflStrategy` (the Flower venv): secfl's robust rules and the
  clone-and-sample audit as a Flower strategy (:mod:`secfl.flower._strategies`).
- A whole federation on one machine for the demo, the tests and the benchmark
  (:mod:`secfl.flower._federation`), and plain Flower beside it
  (:mod:`secfl.flower._plain`, :mod:`secfl.flower._local`).

This package's ``__init__`` imports no Flower: the names that need it
(:data:`STRATEGIES`) are imported on first use, so importing them outside the Flower
venv raises ``ImportError``.
"""

from __future__ import annotations

import importlib
from typing import Any

from secfl.flower._policy import FlowerFederation, Site, flower_policy

__all__ = [
    "STRATEGIES",
    "FlowerFederation",
    "SecflStrategy",
    "Site",
    "flower_policy",
]

#: The Flower strategies (they import Flower), loaded on first use.
STRATEGIES = ("SecflStrategy",)


def __getattr__(name: str) -> Any:
    if name in STRATEGIES:
        try:
            module = importlib.import_module("secfl.flower._strategies")
        except ModuleNotFoundError as exc:
            if exc.name is None or not exc.name.startswith("flwr"):
                raise
            raise ImportError(
                f"secfl.flower.{name} is a Flower strategy: import it where Flower is "
                "installed (the Flower venv, bash scripts/flwr-venv.sh)"
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module 'secfl.flower' has no attribute '{name}'")
