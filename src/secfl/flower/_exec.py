"""The SuperExec of a SuperLink or SuperNode under secfl: it runs only the approved app.

Flower started with ``--isolation process`` runs no app itself: a SuperExec takes
each task (a ServerApp or ClientApp to run for a message) from the Runtime API and
starts ``flwr-serverapp`` / ``flwr-clientapp`` for it. This is that SuperExec, with
one check added: a task whose FAB hash (the SHA-256 of the app bundle, which Flower
checks against the content when it stores the FAB) is not one the wrapper was given
on its measured command line is not run. A ClientApp task gets an error reply
(``INVALID_FAB``, as Flower's own ``--trusted-entities`` check answers) and fails;
a ServerApp task fails. Each refusal is one log line naming the check.

It takes tasks with the SuperExec secret the wrapper created (Flower's HMAC
authentication of ``AcquireTask``), so no other process that reaches the loopback
Runtime API can take a task in its place. It imports Flower: it runs only in the
Flower venv.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullTaskInputRequest,
    PushTaskOutputRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient

from secfl._internal import files
from secfl.flower._app_process import APPROVED_ENV, FAB_REFUSED

__all__ = ["Executor", "Refusal"]

log = logging.getLogger("secfl.flower")

_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


@dataclass(frozen=True)
class Refusal:
    """A task the executor did not run."""

    task_id: int
    run_id: int
    fab_hash: str
    message: str
    #: What was refused: ``fab`` (not an approved app) or ``run`` (not the approved run).
    kind: str = "fab"


@dataclass
class Executor:
    """Takes tasks of ``task_type`` from the Runtime API at ``address`` and runs those of
    an approved FAB (``allowed``: SHA-256 hex digests)."""

    address: str
    secret: bytes
    allowed: frozenset[str]
    task_type: TaskType
    env: Mapping[str, str]
    cwd: Path
    #: A private folder (0700) for the tasks' token files.
    token_dir: Path
    poll: float = 0.25
    #: The Runtime API's CA (TLS: the SuperLink's policy certificate, a SuperNode's one
    #: its wrapper made); None: plain HTTP on loopback (tests only).
    ca_file: str | None = None
    on_refusal: Callable[[Refusal], None] | None = None
    #: The only runs whose tasks run (None: any run of an approved FAB). The SuperLink's
    #: wrapper gives the run it started: an insider's run of the approved FAB, started
    #: on the loopback Control API with a run config of its own, is refused too.
    runs: frozenset[int] | None = None
    #: Tasks refused so far (counted, not kept: an insider's runs could be countless).
    refused: int = 0
    launched: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        #: The task each running process was started for (its PID's run and FAB hash).
        self._tasks: dict[int, tuple[int, str]] = {}
        self._tokens = 0
        # No retry invoker: its back-off (up to tens of seconds) would stall the loop,
        # which retries by itself every ``poll`` seconds.
        self._client = self._runtime_client(
            [
                RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                SuperExecAuthHttpInterceptor(
                    master_secret=self.secret, protected_methods=frozenset({_ACQUIRE})
                ),
            ],
            retry=False,
        )

    def _runtime_client(self, interceptors: list[object], retry: bool) -> RuntimeHttpClient:
        """A client of the loopback Runtime API (TLS with the policy's CA where Flower
        serves it over TLS)."""
        root = Path(self.ca_file).read_bytes() if self.ca_file else None
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=root is None,
            root_certificates=root,
            interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker() if retry else None,
        )

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Take and run tasks until :meth:`stop` (or an unrecoverable error)."""
        request = AcquireTaskRequest(supported_task_types=[self.task_type.value])
        try:
            while not self._stop.is_set():
                self._reap()
                try:
                    reply = self._client.AcquireTask(request)
                except Exception as exc:  # the Runtime API is not up yet, or going down
                    log.debug("acquire: %s", exc)
                    self._stop.wait(self.poll)
                    continue
                if reply.HasField("task") and reply.token:
                    try:
                        self._dispatch(reply.token, reply.task)
                    except Exception as exc:  # one task lost (Flower expires it), not the loop
                        log.error("secfl: task %s not started: %s", reply.task.task_id, exc)
                    continue  # another task may be waiting
                self._stop.wait(self.poll)
        finally:
            self._client.close()
            for proc, token_file in self._procs:
                if proc.poll() is None:
                    proc.terminate()
                token_file.unlink(missing_ok=True)

    def running(self) -> int:
        """How many task processes it started are still running."""
        return sum(1 for proc, _ in list(self._procs) if proc.poll() is None)

    def _reap(self) -> None:
        alive = []
        for proc, token_file in self._procs:
            if proc.poll() is None:
                alive.append((proc, token_file))
                continue
            token_file.unlink(missing_ok=True)
            run_id, fab_hash = self._tasks.pop(proc.pid, (0, ""))
            if proc.returncode == FAB_REFUSED:  # it said why on its stderr, one line
                self._refused(Refusal(task_id=0, run_id=run_id, fab_hash=fab_hash, kind="fab",
                    message=f"fab: the app process of run {run_id} was handed another FAB "
                    "than the task named: not installed, not run"))  # fmt: skip
        self._procs = alive

    def _refused(self, refusal: Refusal) -> None:
        self.refused += 1
        if self.on_refusal is not None:
            self.on_refusal(refusal)

    def _dispatch(self, token: str, task: object) -> None:
        fab_hash = str(getattr(task, "fab_hash", "")).lower()
        run_id = int(getattr(task, "run_id", 0))
        if fab_hash in self.allowed and (self.runs is None or run_id in self.runs):
            self._launch(token, run_id, fab_hash)
            return
        approved = ", ".join(sorted(h[:16] for h in self.allowed))
        if fab_hash not in self.allowed:
            kind = "fab"
            message = (
                f"fab: run {run_id} brings app sha256 {fab_hash[:16]}..., not the "
                f"board-approved {approved}...: not run (the board approves a new app with a "
                "new policy version)"
            )
        else:
            kind = "run"
            ours = ", ".join(str(r) for r in sorted(self.runs or ()))
            message = (
                f"run: run {run_id} is not the run this SuperLink started ({ours}), with the "
                "board's run config: not run (another run of the approved app comes from the "
                "loopback Control API, not from the policy)"
            )
        refusal = Refusal(
            task_id=int(getattr(task, "task_id", 0)),
            run_id=run_id,
            fab_hash=fab_hash,
            message=message,
            kind=kind,
        )
        log.error("secfl: %s", refusal.message)
        try:
            self._refuse(token, refusal)
        except Exception as exc:  # the task expires on Flower's side anyway
            log.error("secfl: fab: could not report the refusal to Flower: %s", exc)
        self._refused(refusal)

    def _launch(self, token: str, run_id: int = 0, fab_hash: str = "") -> None:
        """Start the task's process. Its token goes in a 0600 file (not on the command
        line, which every local user reads); it dies with this process by Flower's own
        ``--parent-pid`` watch (no ``preexec_fn`` from this thread: the gate's thread
        runs beside it, and a fork holding its locks could hang)."""
        # Flower's app process, the app's exceptions kept from the host (their
        # messages and tracebacks: secfl.flower._app_process)
        # (-P: the working folder, where an app writes, is not put on sys.path: a module
        # an app left there would be imported in place of Flower's in every later task)
        command = [sys.executable, "-P", "-m", "secfl.flower._app_process", self.task_type.value]
        self._tokens += 1
        token_file = self.token_dir / f"task-{self._tokens}.token"
        files.write_private(token_file, token.encode(), fsync=False)
        argv = [*command, "--runtime-api-address", self.address,
                "--token-file", str(token_file), "--parent-pid", str(os.getpid())]  # fmt: skip
        argv += ["--root-certificates", self.ca_file] if self.ca_file else ["--insecure"]
        # (the approved digests: the app process installs no other FAB, whatever the
        # Runtime API hands it: secfl.flower._app_process)
        env = {**self.env, APPROVED_ENV: ",".join(sorted(self.allowed))}
        proc = subprocess.Popen(argv, env=env, cwd=self.cwd)
        self._procs.append((proc, token_file))
        self._tasks[proc.pid] = (run_id, fab_hash)
        self.launched += 1

    def _refuse(self, token: str, refusal: Refusal) -> None:
        """Answer a refused task as failed (a ClientApp's message with an error reply)."""
        client = self._runtime_client(
            [
                RuntimeVersionHttpInterceptor(component_name=self.task_type.value),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry=True,
        )
        try:
            if self.task_type == TaskType.CLIENT_APP:
                from flwr.supernode.runtime.run_clientapp import (
                    pull_task_input,
                    push_message,
                    push_task_output,
                )

                message, context, _, _ = pull_task_input(client)
                reply = Message(
                    Error(code=ErrorCode.INVALID_FAB, reason=refusal.message), reply_to=message
                )
                push_message(client, reply, context)
                push_task_output(client, context, SubStatus.FAILED, refusal.message)
            else:
                client.PullTaskInput(PullTaskInputRequest())
                client.PushTaskOutput(
                    PushTaskOutputRequest(sub_status=SubStatus.FAILED, details=refusal.message)
                )
        finally:
            client.close()


def start_thread(executor: Executor) -> threading.Thread:
    thread = threading.Thread(target=executor.run, name="secfl-superexec", daemon=True)
    thread.start()
    return thread


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
