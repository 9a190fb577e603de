"""A fake Runtime API on a SuperNode's loopback port, as a host process would run it;
run with the Flower venv's Python.

``python runtime_impostor.py PORT FAB APPROVED_SHA256``: listens on 127.0.0.1:PORT
(before the SuperNode starts, so Flower cannot bind it) and answers Flower's Runtime
API as a SuperNode would: one ClientApp task naming the approved FAB hash (what
secfl's SuperExec checks), then, to the ``flwr-clientapp`` the SuperExec starts for
it, the FAB at ``FAB`` (any app: the host's), a context and one message. Prints
``listening`` once bound, then each call's path, one a line (``served fab SHA256``
when it hands out the FAB).

A host schedules the TEE's threads (and, under SGX, answers its socket calls): when
the first task is asked for, the impostor stalls the ``flower-supernode`` that would
find the port taken and exit (SIGSTOP), until the ClientApp task it handed out ends.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.app.message.message import remove_content_from_message
from flwr.cli.config_utils import get_fab_metadata
from flwr.common.serde import context_to_proto, fab_to_proto, message_to_proto, run_to_proto
from flwr.proto.message_pb2 import (
    ConfirmMessageReceivedResponse,
    PullObjectRequest,
    PullObjectResponse,
    PushObjectResponse,
)
from flwr.proto.runtime_pb2 import (
    AcquireTaskResponse,
    PullAppMessagesResponse,
    PullTaskInputResponse,
    PushAppMessagesResponse,
    PushTaskOutputResponse,
    SendTaskHeartbeatResponse,
)
from flwr.proto.task_pb2 import Task
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 4242
NODE_ID = 77


def _stall(port: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the flower-supernode started with ``--port PORT``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = any(a.endswith(b"flower-supernode") for a in argv[:2])
        if named and b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
            os.kill(int(pid), sig)


def main() -> None:
    port, fab_path, approved = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    content = fab_path.read_bytes()
    real = hashlib.sha256(content).hexdigest()
    fab_id, fab_version = get_fab_metadata(content)
    run = Run.create_empty(RUN_ID)
    run.fab_id, run.fab_version, run.fab_hash = fab_id, fab_version, real
    run.primary_task_type = TaskType.CLIENT_APP
    context = Context(run_id=RUN_ID, node_id=NODE_ID, node_config={}, state=RecordDict(),
                      run_config={})  # fmt: skip
    # (as the ServerApp that sent it would have been)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 1, 1
    message = Message(RecordDict(), dst_node_id=NODE_ID, message_type="train")
    tree = get_object_tree(message)
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    given = [False]

    def answer(path: str, body: bytes) -> bytes:
        if path.endswith("/acquire-task"):
            if given[0]:
                return AcquireTaskResponse().SerializeToString()
            given[0] = True
            _stall(port, signal.SIGSTOP)
            task = Task(task_id=7, type=TaskType.CLIENT_APP.value, run_id=RUN_ID,
                        fab_hash=approved)  # fmt: skip
            return AcquireTaskResponse(task=task, token="impostor").SerializeToString()
        if path.endswith("/pull-task-input"):
            print(f"served fab {real}", flush=True)
            return PullTaskInputResponse(
                context=context_to_proto(context), run=run_to_proto(run),
                fab=fab_to_proto(Fab(real, content, {})), task_id=7,
            ).SerializeToString()  # fmt: skip
        if path.endswith("/pull-messages"):
            return PullAppMessagesResponse(
                messages_list=[message_to_proto(remove_content_from_message(message))],
                message_object_trees=[tree],
            ).SerializeToString()
        if path.endswith("/pull-object"):
            request = PullObjectRequest.FromString(body)
            found = request.object_id in objects
            return PullObjectResponse(object_found=found, object_available=found,
                                      object_content=objects.get(request.object_id, b""),
                                      ).SerializeToString()  # fmt: skip
        replies = {
            "/send-task-heartbeat": SendTaskHeartbeatResponse(success=True),
            "/confirm-message-received": ConfirmMessageReceivedResponse(),
            "/push-messages": PushAppMessagesResponse(),
            "/push-object": PushObjectResponse(stored=True),
            "/push-task-output": PushTaskOutputResponse(),
        }
        if path.endswith("/push-task-output"):
            _stall(port, signal.SIGCONT)
        for tail, reply in replies.items():
            if path.endswith(tail):
                return reply.SerializeToString()
        return b""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            print(self.path, flush=True)
            data = answer(self.path, body)
            self.send_response(200)
            self.send_header("content-type", "application/protobuf")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
