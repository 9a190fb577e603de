"""A robustness grid on a Ray cluster: ``secfl eval robustness --ray ADDRESS``.

A grid of thousands of runs does not fit on one machine's cores, and users who
evaluate defences have clusters. Here each pending run of the grid
(:meth:`~secfl.eval.grid.Evaluation.pending`) is one Ray task (one CPU, one torch
thread) that calls :func:`~secfl.eval.grid.run_record` exactly as the process
engine does, with the data split on the worker (a :class:`DataCache` per worker
process). Results stream back as tasks finish (``ray.wait``) and are appended, one
line each, to the folder's ``runs-ray.jsonl``, which :func:`load_records` reads with
the process workers' ``runs-KofN.jsonl``: a grid stopped on Ray keeps what finished,
and ``--resume`` continues it with either engine.

What crosses the wire is JSON text (the scenario there, the record back), never an
object of ours; Ray ships the task function by reference, so every node needs secfl
installed (and Debian's ``dataset-fashion-mnist`` for that task). A node whose
tasks build another model than the driver's (another secfl version) is refused, as
a folder of runs made with another model is. At most twice the cluster's CPUs are
in flight, so a grid of 10 000 runs is not submitted at once. Ray is optional
(``pip install 'secfl[ray]'``); it is imported only here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import socket
import warnings
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from secfl.errors import FlError
from secfl.eval.folder import GridFolder, append_record, check_record, model_digest
from secfl.eval.grid import Run, key, run_record
from secfl.eval.simulation import DataCache, Scenario

__all__ = ["INSTALL", "LOCAL_STORE_BYTES", "RECORDS", "check_address", "run_on_ray"]

#: What to run where Ray is missing.
INSTALL = "pip install 'secfl[ray]'"
#: The file a grid run on Ray appends to (``runs*.jsonl``, as the process workers').
RECORDS = "runs-ray.jsonl"
#: The object store of a local instance (``--ray local``): records are a few kB,
#: where Ray's default takes 30% of the machine's memory.
LOCAL_STORE_BYTES = 256 << 20
#: Tasks in flight per CPU of the cluster: enough to keep every CPU busy while the
#: driver writes a record, few enough that a huge grid is not submitted at once.
PER_CPU = 2
#: How long a check that a cluster's address answers may take.
CONNECT_TIMEOUT_S = 5.0


def check_address(address: str) -> tuple[str, int] | None:
    """The host and port ``address`` names (``HOST:PORT``, ``ray://HOST:PORT``), or
    ``None`` for ``auto`` and ``local``; anything else is refused in one line."""
    if address in ("auto", "local"):
        return None
    try:
        parts = urlsplit("//" + address.removeprefix("ray://"))
        host, port = parts.hostname, parts.port
        extra = parts.path or parts.query or parts.fragment or parts.username
    except ValueError:  # a port that is not a number
        host, port, extra = None, None, ""
    if not host or port is None or extra:
        raise FlError(f"--ray: '{address[:80]}' is not auto, local, HOST:PORT or ray://HOST:PORT")
    return host, port


def run_on_ray(
    folder: GridFolder,
    address: str,
    progress: Callable[[int, int, str], None] = lambda i, n, label: None,
    *,
    in_flight: int | None = None,
) -> int:
    """Run the grid's pending runs on the Ray cluster at ``address``; the number run.

    Each finished run is in ``folder/runs-ray.jsonl`` the moment it returns. On an
    interrupt (``KeyboardInterrupt``) or a failed run nothing more is submitted and
    the exception goes on: what finished stays, and the tasks in flight end with the
    driver (Ray ends the tasks of a driver that leaves). A process already connected
    to Ray (a notebook, a test) runs on that connection and keeps it; there the tasks
    in flight finish and their results are dropped."""
    target = check_address(address)
    if target is not None:
        _reach(address, target)
    ray = _import_ray()
    ours = not ray.is_initialized()
    if ours:
        _connect(ray, address)
    try:
        return _stream(ray, folder, progress, in_flight)
    finally:
        if ours:
            ray.shutdown()


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise FlError(f"--ray: Ray is not installed here: {INSTALL}") from None


def _reach(address: str, target: tuple[str, int]) -> None:
    """An address that does not answer fails in seconds (Ray itself waits two
    minutes, then exits the process)."""
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise FlError(
            f"--ray: cannot reach {address} ({exc.strerror or exc}); check the address "
            "(`ray status` on the head node) and that its port is open to this machine"
        ) from None


def _connect(ray: Any, address: str) -> None:
    """``ray.init`` at ``address`` (``local``: a new instance with this machine's CPUs
    and a small object store), failing in one line. A cluster with token
    authentication needs ``RAY_AUTH_MODE=token`` here: Ray sends this machine's
    token only to a cluster it found itself (``auto``), never to an address given."""
    quiet = {"logging_level": logging.ERROR, "log_to_driver": True}
    try:
        with warnings.catch_warnings():  # Ray Client warns, then raises: the error says it
            warnings.simplefilter("ignore")
            if address == "local":
                ray.init(address="local", num_cpus=os.cpu_count() or 1,
                         object_store_memory=LOCAL_STORE_BYTES, include_dashboard=False,
                         **quiet)  # fmt: skip
            else:
                ray.init(address=address, **quiet)
    except (Exception, SystemExit) as exc:  # Ray exits where a cluster never answers
        raise FlError(
            f"--ray: cannot connect to Ray at {address}: {_last_line(exc)}; check the "
            "address, the Ray version (the cluster's), and for a cluster with token "
            "authentication RAY_AUTH_MODE=token and its token (~/.ray/auth_token or "
            "RAY_AUTH_TOKEN)"
        ) from None


def _stream(
    ray: Any,
    folder: GridFolder,
    progress: Callable[[int, int, str], None],
    in_flight: int | None,
) -> int:
    """Submit the pending runs, at most ``in_flight`` at a time (by default twice the
    cluster's CPUs, read again as nodes come and go), and write each as it ends.

    The tasks in flight are not cancelled one by one on the way out: Ray 2.60 can
    abort a driver that cancels a task whose result is on its way (a failed check in
    its task manager), losing the message that says how to continue."""
    todo = folder.evaluation().pending()
    digests = {t: model_digest(t) for t in folder.grid.tasks}
    task = ray.remote(num_cpus=1, max_retries=2)(_run_remote)
    sink = folder.path / RECORDS
    queue = iter(todo)
    # each task's run, by its name and the key its record must have
    running: dict[Any, tuple[str, tuple[Any, ...]]] = {}
    done = 0
    while True:
        limit = in_flight or max(PER_CPU, PER_CPU * int(ray.cluster_resources().get("CPU", 0)))
        for label, s in islice(queue, max(0, limit - len(running))):
            payload = json.dumps(
                {"label": label, "scenario": dataclasses.asdict(s), "digest": digests[s.task]}
            )
            run = (f"{s.label()} ({label})", key(Run(s, s.label(), label, None).row()))
            running[task.remote(payload)] = run
        if not running:
            return done
        # a timeout keeps the driver responsive to Ctrl-C between results
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        for ref in ready:
            name, wanted = running.pop(ref)
            try:
                record = _result(ray, ref, name, wanted)
            except FlError:
                _keep_finished(ray, running, sink)
                raise
            append_record(sink, record)
            done += 1
            progress(done, len(todo), name)


def _keep_finished(ray: Any, running: dict[Any, tuple[str, tuple[Any, ...]]], sink: Path) -> None:
    """Before a failed run stops the grid, write the other runs that have already
    finished: ``--resume`` then has only the unfinished ones to run again."""
    ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
    for ref in ready:
        try:
            append_record(sink, _result(ray, ref, *running.pop(ref)))
        except FlError:
            continue  # this one failed too: it runs again on --resume


def _result(ray: Any, ref: Any, name: str, wanted: tuple[Any, ...]) -> dict[str, Any]:
    """A finished task's record; a run that failed (not a setting's precondition, which
    is a record) stops the grid in one line, as a failed process worker does. What a
    node sends back is checked as :func:`~secfl.eval.folder.load_records` reads it,
    and must be the record of the run it was sent (``wanted``, its key): a node's
    answer that is not (another secfl there, NaN figures) is refused, not appended
    (a record the folder would skip on reading ran again on every ``--resume``)."""
    try:
        doc = json.loads(ray.get(ref))
    except ray.exceptions.RayError as exc:
        line = _last_line(exc)
        hint = (" (install secfl on every node of the cluster)"
                if "No module named 'secfl" in str(exc) else "")  # fmt: skip
        raise FlError(
            f"--ray: run {name} failed on the cluster: {line}{hint}; "
            "the finished runs are kept: fix it and run again with --resume"
        ) from None
    except (TypeError, ValueError, RecursionError):  # not JSON text
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("refused"), str):
        raise FlError(f"--ray: {doc['refused'][:300]}")
    record = doc.get("record") if isinstance(doc, dict) else None
    if not check_record(record) or key(record) != wanted:
        raise FlError(
            f"--ray: run {name} came back from the cluster as something other than its "
            "record (another secfl on a node?): install the same secfl on every node, "
            "then run again with --resume"
        )
    return record


def _last_line(exc: BaseException) -> str:
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


# --- on a worker of the cluster ------------------------------------------------------------

_DATA: DataCache | None = None
_DIGESTS: dict[str, str] = {}


def _run_remote(payload: str) -> str:
    """One run of the grid on a Ray worker, as JSON text ``{"record": ...}``, or
    ``{"refused": why}`` where this node's secfl builds another model than the
    driver's (its runs would not be comparable)."""
    global _DATA
    import torch

    torch.set_num_threads(1)  # one CPU per task, as the process workers
    doc = json.loads(payload)
    s = Scenario(**doc["scenario"])
    if s.task not in _DIGESTS:
        _DIGESTS[s.task] = model_digest(s.task)
    if _DIGESTS[s.task] != doc["digest"]:
        node = socket.gethostname()
        return json.dumps(
            {"refused": f"node {node} builds another '{s.task}' model than this machine "
                        "(another secfl version?): install the same secfl on every node"}
        )  # fmt: skip
    if _DATA is None:  # the splits of this worker's runs, kept between its tasks
        _DATA = DataCache()
    return json.dumps({"record": run_record(doc["label"], s, _DATA)}, default=str)
