"""``secfl run``: start any workload inside a TEE with secrets only an attested workload receives.

Public API (from :mod:`secfl.launcher._launch` and, for :data:`volumes`,
:mod:`secfl.launcher._in_process`; imported on first use):

- :func:`prepare` verifies the SPM, attests, receives the identity and secrets,
  opens and checks the volumes and builds the command (a :class:`Launch`) from a
  :class:`RunRequest`; :func:`execute` runs it, forwarding signals, and cleans up.
- :data:`volumes`: the open volumes of a Python workload run with ``--module``, by
  name; it streams its data from them in bounded memory, every chunk authenticated.

The other modules (injection, the private folder, process hardening) serve these.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Launch", "RunRequest", "execute", "prepare", "volumes"]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (:mod:`secfl.launcher._launch`
    pulls in the SPM client)."""
    if name not in __all__:
        raise AttributeError(f"module 'secfl.launcher' has no attribute '{name}'")
    home = "_in_process" if name == "volumes" else "_launch"
    return getattr(importlib.import_module(f"secfl.launcher.{home}"), name)
