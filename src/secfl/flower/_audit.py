"""Flower events into the SPM's audit log, from inside a secfl service.

``secfl run`` gives its program the SPM it verified (``SECFL_SPM_URL``, the pinned key
``SECFL_SPM_PIN``), the policy (``SECFL_POLICY``) and a session token
(``$SECFL_IDENTITY/session.token``). With them, the SuperLink's wrapper, the
SuperNodes' SuperExec and a ServerApp's :class:`~secfl.flower.SecflStrategy` write
what they decided as ``fl.flower.<event>`` entries (the SPM adds the reporting
service). Outside ``secfl run`` there is no session: nothing is written, and that is
said once. A failed report is logged, never fatal: the decision stands either way.
No Flower is imported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["SpmAudit"]

log = logging.getLogger("secfl.flower")


class SpmAudit:
    """Reports to the SPM with the session of the service this process runs as."""

    def __init__(
        self, env: Mapping[str, str] | None = None, token: Callable[[], str] | None = None
    ) -> None:
        """``token`` gives the current session token where the workload attests again
        while it runs (else the one ``secfl run`` left is used throughout)."""
        env = os.environ if env is None else env
        self._current = token
        self.policy = env.get("SECFL_POLICY", "")
        self.client: Any = None
        self.token = ""
        token_file = Path(env.get("SECFL_IDENTITY", "/nonexistent")) / "session.token"
        url, pin = env.get("SECFL_SPM_URL"), env.get("SECFL_SPM_PIN")
        if url and pin and self.policy and token_file.is_file():
            from secfl.spm.client import SpmClient

            self.client = SpmClient(url, pin=pin)
            self.token = token_file.read_text().strip()
        else:
            log.warning("secfl: no SPM session (not under secfl run): no Flower event is audited")

    def report(self, event: str, detail: dict[str, Any]) -> None:
        """Write ``fl.flower.EVENT`` with ``detail`` (JSON values)."""
        if self.client is None:
            return
        try:
            token = self._current() if self._current is not None else self.token
            self.client.report(self.policy, f"flower.{event}", detail, token)
        except Exception as exc:
            log.error("secfl: audit: could not report flower.%s: %s", event, exc)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
