"""The SuperLink's Control API on loopback: connect, submit the board's run, wait for it.

Only :mod:`secfl.flower._superlink` talks to it (the Control API never leaves the
TEE): :func:`control_client` connects over loopback TLS, :func:`start_run` submits the
approved FAB with the board's run config, and :func:`wait_run` waits for that run's
final status.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Callable
from typing import Any

from secfl.errors import FlowerError
from secfl.flower._wrap import Child

__all__ = ["control_client", "start_run", "wait_run"]


def control_client(base: str, context: ssl.SSLContext) -> Any:
    """A client of the Control API at ``base``, over the loopback TLS of ``context``."""
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    return ControlHttpClient(
        base,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        verify=context,
    )


def start_run(control: Any, fab: bytes, run_config: list[str]) -> int:
    from flwr.common.config import parse_config_args
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    overrides = parse_config_args(run_config) if run_config else {}
    request = StartRunRequest(
        fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {})),
        override_config=user_config_to_proto(overrides),
    )
    reply = control.StartRun(request)
    if not reply.run_id:
        raise FlowerError("flower: the SuperLink refused to start the run (see its log above)")
    return int(reply.run_id)


def wait_run(
    control: Any, run_id: int, link: Child, executor: Any, tick: Callable[[], None]
) -> str:
    """The run's final status. Asked of Flower when the ServerApp's process has ended
    (the executor started it), and every 10 s besides (a run whose ServerApp never
    started ends too): the Control API is not polled every second for hours.
    ``tick()`` runs every half second meanwhile (the node registry's watch, the gate's
    report)."""
    from flwr.proto.control_pb2 import ListRunsRequest

    asked = 0.0
    while True:
        if not link.alive():
            raise FlowerError(f"flower: flower-superlink exited {link.proc.returncode} mid-run")
        tick()
        ended = executor.launched > 0 and executor.running() == 0
        if ended or time.monotonic() - asked > 10.0:
            asked = time.monotonic()
            run = control.ListRuns(ListRunsRequest(run_id=run_id)).run_dict.get(run_id)
            if run is not None and run.status.status == "finished":
                return f"finished:{run.status.sub_status}"
        time.sleep(0.5)
