"""Runs in the Flower venv: ``python app_error_probe.py APP_DIR``. Loads the ClientApp
``app:app`` of APP_DIR the way ``flwr-clientapp`` does under secfl
(``secfl.flower._app_process``: Flower's loader, wrapped), calls it with a train
message, and handles its exception as Flower's ``run_clientapp`` does: logs it with its
traceback and makes the error reply's reason. Prints what was logged, then the reason."""

from __future__ import annotations

import importlib
import io
import logging
import sys

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.supercore.task_identity import TaskIdentity

from secfl.flower import _app_process

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
out = io.StringIO()
logging.getLogger("flwr").addHandler(logging.StreamHandler(out))
_app_process._hide_clientapp()
runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")
load = runtime.get_load_client_app_fn("app:app", sys.argv[1], False)
message = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1,
                  message_type=MessageType.TRAIN)  # fmt: skip
context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
try:
    load("", "", "")(message=message, context=context)
    reason = "no exception"
except Exception as ex:  # what run_clientapp does with it
    logging.getLogger("flwr").error("%s raised an exception", "ClientApp", exc_info=ex)
    reason = str(type(ex)) + ":<'" + str(ex) + "'>"
print(out.getvalue())
print("REASON", reason)
