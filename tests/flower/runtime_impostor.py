"""A fake Runtime API on a SuperNode's loopback port, as a host process would run it;
run with the Flower venv's Python.

``python runtime_impostor.py PORT FAB APPROVED_SHA256``: listens on 127.0.0.1:PORT
(before the SuperNode starts, so Flower cannot bind it) and answers Flower's Runtime
API as a SuperNode would: one ClientApp task naming the approved FAB hash (what
secfl's SuperExec checks), then, to the ``flwr-clientapp`` the SuperExec starts for
it, the FAB at ``FAB`` (any app: the host's), a context and one message. Prints
``listening`` once bound, then each call's path, one a line (``served fab SHA256``
when it hands out the FAB).

``python runtime_impostor.py PORT FAB APPROVED_SHA256 DATA [--tls]``: the same, with
the approved FAB at ``FAB``, and a ``train`` message of its own (a model of zeros for
the example app, its own run config) whose node config points the ClientApp at the
site's data folder ``DATA``; prints ``reply: train_loss`` when the ClientApp's reply
(the model trained on the site's data, its metrics) reaches it. ``--tls``: it serves
TLS with a certificate of its own CA for 127.0.0.1 (a host that guessed the Runtime
API speaks TLS).

A host schedules the TEE's threads (and, under SGX, answers its socket calls): when
the first task is asked for, the impostor stalls the ``flower-supernode`` that would
find the port taken and exit (SIGSTOP), until the ClientApp task it handed out ends.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
    PushAppMessagesRequest,
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


def _feed(data: str) -> tuple[Message, dict[str, object], dict[str, object]]:
    """A train message for the example app, its run config and node config."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord

    shapes = {"fc1.weight": (64, 64), "fc1.bias": (64,), "fc2.weight": (10, 64), "fc2.bias": (10,)}
    arrays = ArrayRecord({k: Array(np.zeros(v, np.float32)) for k, v in shapes.items()})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "lr": 0.1})})
    message = Message(content, dst_node_id=NODE_ID, message_type="train")
    return message, {"batch-size": 32, "local-epochs": 1}, {"data-path": data}


def main() -> None:
    port, fab_path, approved = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    data = sys.argv[4] if len(sys.argv) > 4 and not sys.argv[4].startswith("--") else None
    content = fab_path.read_bytes()
    real = hashlib.sha256(content).hexdigest()
    fab_id, fab_version = get_fab_metadata(content)
    run = Run.create_empty(RUN_ID)
    run.fab_id, run.fab_version, run.fab_hash = fab_id, fab_version, real
    run.primary_task_type = TaskType.CLIENT_APP
    # (as the ServerApp that sent it would have been)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 1, 1
    message = Message(RecordDict(), dst_node_id=NODE_ID, message_type="train")
    run_config: Any = {}
    node_config: Any = {}
    if data is not None:
        message, run_config, node_config = _feed(data)
    context = Context(run_id=RUN_ID, node_id=NODE_ID, node_config=node_config,
                      state=RecordDict(), run_config=run_config)  # fmt: skip
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
        if path.endswith("/push-messages"):  # every object of the reply, please
            pushed = PushAppMessagesRequest.FromString(body)
            ids: list[str] = []
            trees = list(pushed.message_object_trees)
            while trees:
                tree_ = trees.pop()
                ids.append(tree_.object_id)
                trees.extend(tree_.children)
            return PushAppMessagesResponse(
                message_ids=[m.metadata.message_id for m in pushed.messages_list],
                objects_to_push=ids,
            ).SerializeToString()
        if path.endswith("/push-object") and b"train_loss" in body:
            print("reply: train_loss", flush=True)
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

    class Server(ThreadingHTTPServer):
        def get_request(self) -> tuple[object, object]:  # type: ignore[override]
            print("connection", flush=True)  # (before any TLS handshake)
            return super().get_request()  # type: ignore[return-value]

    server = Server(("127.0.0.1", port), Handler)
    if data is not None or "--stall" in sys.argv:  # stall flower-supernode as soon as it
        import threading  # starts, not once a task is asked for (which TLS never shows)

        def stall() -> None:
            for _ in range(600):
                _stall(port, signal.SIGSTOP)
                time.sleep(0.1)

        threading.Thread(target=stall, daemon=True).start()
    if "--tls" in sys.argv:
        import ssl
        import tempfile

        from secfl.flower._tls import tls_files

        own = tls_files(Path(tempfile.mkdtemp()), ["127.0.0.1"])
        context_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context_tls.load_cert_chain(own["crt"], own["key"])
        server.socket = context_tls.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
