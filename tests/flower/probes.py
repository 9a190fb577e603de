"""What an attacker does with Flower's own client code; run with the Flower venv's Python.

``python probes.py insider-run ADDRESS FAB [KEY=VALUE...]``: StartRun of FAB (with
that run config) on the SuperLink's loopback Control API, as ``flwr run`` does (an
insider on the SuperLink's host; TLS not verified: the insider has no CA and needs
none). Prints the run ID, or ``refused``.

``python probes.py insider-flood ADDRESS FAB N``: N such runs of FAB, one after the
other. Prints their run IDs, space-separated.

``python probes.py control ADDRESS``: StartRun through the SuperLink's public gate.
Prints the HTTP status (``refused tls`` when the gate refuses the connection itself).

``python probes.py join ADDRESS``: a SuperNode with a key of its own (never attested,
never registered) activates itself at the gate with Flower's signed headers. Prints
``joined NODE_ID`` or ``refused STATUS``.

``python probes.py insider-node LINK GATE``: an insider on the SuperLink's host
registers a node key of its own on the loopback Control API (``LINK``; open-source
Flower authenticates nobody there), activates it at the public gate, then watches the
registry for 15 s. Prints JSON: the key's SHA-256, the gate's answer (``joined
NODE_ID`` or ``refused STATUS``), and the key's status in Flower's registry at the end.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.config import parse_config_args
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest, StartRunRequest
from flwr.proto.fleet_pb2 import ActivateNodeRequest
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor


def _start_run(address: str, fab: bytes, config: list[str] | None = None) -> str:
    client = _control(address)
    try:
        reply = client.StartRun(
            StartRunRequest(
                fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {})),
                override_config=user_config_to_proto(parse_config_args(config) if config else {}),
            )
        )
    except httpx.HTTPStatusError as exc:
        return f"refused {exc.response.status_code}"
    except httpx.TransportError:  # no TLS connection (the gate wants an attested certificate)
        return "refused tls"
    finally:
        client.close()
    return str(reply.run_id)


def _control(address: str) -> ControlHttpClient:
    return ControlHttpClient(
        f"https://{address}",
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        verify=False,
    )


def _activate(
    gate: str, private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey
) -> str:
    client = FleetHttpClient(
        f"https://{gate}",
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperNode"),
            NodeAuthHttpInterceptor(private, public),
        ],
        verify=False,
    )
    try:
        reply = client.ActivateNode(
            ActivateNodeRequest(public_key=public_key_to_bytes(public), heartbeat_interval=30)
        )
        return f"joined {reply.node_id}"
    except httpx.HTTPStatusError as exc:
        return f"refused {exc.response.status_code}"
    except httpx.TransportError:  # no TLS connection (the gate wants an attested certificate)
        return "refused tls"
    finally:
        client.close()


def _insider_node(link: str, gate: str) -> dict[str, str]:
    private, public = generate_key_pairs()
    pem = public_key_to_bytes(public)
    control = _control(link)
    node_id = control.RegisterNode(RegisterNodeRequest(public_key=pem, name="insider")).node_id
    out = {"key_sha256": hashlib.sha256(pem).hexdigest(), "registered": str(node_id)}
    out["gate"] = _activate(gate, private, public)
    deadline = time.monotonic() + 15
    while True:
        nodes = control.ListNodes(ListNodesRequest()).nodes_info
        status = next((n.status for n in nodes if n.node_id == node_id), "absent")
        if status == "unregistered" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out["status"] = status
    control.close()
    return out


def main(argv: list[str]) -> int:
    what, address = argv[0], argv[1]
    if what == "insider-run":
        print(_start_run(address, Path(argv[2]).read_bytes(), argv[3:]))
    elif what == "insider-flood":
        fab = Path(argv[2]).read_bytes()
        print(" ".join(_start_run(address, fab) for _ in range(int(argv[3]))))
    elif what == "control":
        print(_start_run(address, b"not a fab"))
    elif what == "join":
        private, public = generate_key_pairs()
        print(_activate(address, private, public))
    elif what == "insider-node":
        print(json.dumps(_insider_node(address, argv[2])))
    else:
        raise SystemExit(f"unknown probe {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
