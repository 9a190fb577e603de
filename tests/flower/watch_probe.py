""":class:`secfl.flower._nodes.NodeWatch` against a real ``flower-superlink`` (plain
Flower on loopback, node authentication on); run with the Flower venv's Python:
``python watch_probe.py WORKDIR``. Prints one JSON object: what the watch did when
foreign keys were registered one at a time, then in a flood, then when the registry
could no longer be read."""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.control_pb2 import ListNodesRequest

from secfl.errors import FlowerError
from secfl.flower._control import control_client
from secfl.flower._nodes import MAX_FAILURES, MAX_FOREIGN, NodeWatch, register
from secfl.flower._plain import PlainFlower


class Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def report(self, event: str, detail: dict[str, Any]) -> None:
        self.events.append((event, detail))


def keys(n: int) -> list[bytes]:
    return [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for _ in range(n)
    ]


def main(work: Path) -> dict[str, Any]:
    plain = PlainFlower(work, python=Path(sys.executable))
    out: dict[str, Any] = {}
    try:
        plain.start_superlink()
        plain.wait_superlink()
        context = ssl.create_default_context(cafile=str(plain.tls["ca"]))
        control = control_client(f"https://127.0.0.1:{plain.port}", context)
        sites = keys(2)
        register(control, dict.fromkeys(sites))
        audit = Audit()
        watch = NodeWatch(control, sites, audit, every=0.0)  # type: ignore[arg-type]
        out["clean"] = watch.check()
        foreign = keys(2)
        ids = register(control, dict.fromkeys(foreign))
        out["removed"] = watch.check()
        status = {n.node_id: n.status for n in control.ListNodes(ListNodesRequest()).nodes_info}
        out["foreign_status"] = sorted({status[i] for i in ids})
        out["site_status"] = sorted(s for i, s in status.items() if i not in ids)
        out["audited"] = [d for e, d in audit.events if e == "node-foreign"]
        out["ids"] = [str(i) for i in ids]
        register(
            control, dict.fromkeys(keys(MAX_FOREIGN - 1))
        )  # 2 + 7: one more than a run survives
        try:
            watch.check()
            out["flood"] = "not stopped"
        except FlowerError as exc:
            out["flood"] = str(exc)
        out["flood_events"] = [d for e, d in audit.events if e == "node-flood"]
    finally:
        plain.stop()
    failures = []
    for _ in range(MAX_FAILURES):  # the SuperLink is gone: its registry cannot be read
        try:
            watch.due()
            failures.append("tried again later")
        except FlowerError as exc:
            failures.append(str(exc))
    out["failures"] = failures
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
