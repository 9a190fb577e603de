"""Environment variables that let whoever starts a process read or redirect its traffic.

A TEE's workload inherits its environment from whoever started it, which may be the
host. Two kinds of variable matter there:

- ``SSLKEYLOGFILE``: Python's ``ssl.create_default_context`` writes every TLS
  session's secrets to that file, so a host that captures its own traffic decrypts
  what the workload sends the SPM (a session token, released secrets);
- proxy variables (``http_proxy``, ``grpc_proxy`` and their kin): gRPC and httpx send
  connections through them by default, which gives a plaintext loopback API (such as
  Flower's Runtime API) to the host.

:func:`scrub` removes the first kind from this process; :data:`PROXIES` lists the
second for the programs that must not use one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

__all__ = ["KEY_LOGS", "PROXIES", "scrub", "without"]

#: Variables that make TLS libraries write session secrets to a file.
KEY_LOGS = frozenset({"SSLKEYLOGFILE"})
#: Variables that send connections through a proxy (both spellings, as libraries read).
PROXIES = frozenset(
    spelling
    for name in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy")
    for spelling in (name, name.upper())
)


def without(env: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """``env`` less ``names``."""
    dropped = frozenset(names)
    return {k: v for k, v in env.items() if k not in dropped}


def scrub(names: Iterable[str] = KEY_LOGS) -> list[str]:
    """Remove ``names`` from this process's environment (and so its children's);
    return those that were set."""
    found = sorted(name for name in names if name in os.environ)
    for name in found:
        del os.environ[name]
    return found
