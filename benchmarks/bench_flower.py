"""A Flower app under secfl against the same app under plain Flower with TLS.

The same app (a copy of examples/flower whose ServerApp logs the wall time after
each round, through the strategy's ``evaluate_fn`` hook), the same data (scikit-learn's
digits dealt to the sites), the same run config, 4 SuperNodes and 10 rounds
(``--sites``, ``--rounds``), one machine, loopback:

- plain Flower: a TLS SuperLink (subprocess isolation, SuperNode authentication on),
  SuperNodes reading plain ``.npz`` folders, ``flwr run``;
- secfl: an SPM, a 2-of-3 board's policy, the SuperLink and the SuperNodes each
  attested by ``secfl run`` with the simulated TEE, node keys and TLS from the policy,
  the app and data as shielded volumes, the Fleet-only gate, secfl's SuperExec
  checking the FAB, the model sealed for its owner.

Both SuperExecs poll for tasks every 0.25 s. Round time: the median time between
the ServerApp's end-of-round stamps (round 1 included; Flower's own 3 s polls of
SuperNodes and ServerApp make single rounds move in steps of 3 s, so with
``--repeat N`` the two run alternately N times, on a machine others share). Start-up:
from the first Flower process started (SuperLink, under ``secfl run`` for secfl) to
the ServerApp's first stamp (attestation, Flower's start, SuperNodes joining, the
ServerApp's start; the SPM, the shielding and the policy are the parties' one-time
set-up and not counted). Prints both and their ratios (secfl / plain; the target for
rounds is <= 1.05), and what secfl adds to every SuperNode call, measured on its own:
the gate's extra hop.

    .venv/bin/python benchmarks/bench_flower.py [--sites 4] [--rounds 10] [--repeat 1]
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from secfl.flower._federation import LocalFlowerFederation
from secfl.flower._local import node_key_files, site_arrays
from secfl.flower._plain import PlainFlower

APP = Path(__file__).resolve().parents[1] / "examples" / "flower"
STAMP = re.compile(r"secfl-bench: round (\d+) at ([0-9.]+)")
HOOK = '''

def _stamp(server_round, arrays):
    """The benchmark's clock: called by the strategy at the start and after each round."""
    import time
    from logging import INFO

    from flwr.common.logger import log

    log(INFO, "secfl-bench: round %d at %.3f", server_round, time.time())
    return None
'''


def instrumented(root: Path) -> Path:
    """A copy of the example app whose ServerApp stamps each round (same for both)."""
    app = root / "flower"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("*.fab", "__pycache__"))
    server = app / "flowerapp" / "server_app.py"
    text = server.read_text()
    call = 'num_rounds=int(context.run_config["num-server-rounds"]),'
    if call not in text:
        raise SystemExit("examples/flower's ServerApp changed: update the benchmark's hook")
    server.write_text(text.replace(call, call + "\n        evaluate_fn=_stamp,") + HOOK)
    return app


def stamps(log: str) -> list[float]:
    found = {int(r): float(t) for r, t in STAMP.findall(log)}
    return [found[r] for r in sorted(found)]


def plain(work: Path, app: Path, sites: int, rounds: int) -> tuple[list[float], float]:
    flower = PlainFlower(work, node_auth=True)
    began = time.time()
    try:
        flower.start_superlink()
        flower.wait_superlink()
        for i, arrays in enumerate(site_arrays(sites), 1):
            data = work / "data" / f"site-{i}"
            data.mkdir(parents=True)
            np.savez(data / "train.npz", x=arrays["x"], y=arrays["y"])
            keys = node_key_files(work / "keys", f"site-{i}")
            flower.register(keys["pub"])
            flower.start_supernode(f"site-{i}", data, keys["ssh"])
        run = flower.run(app, [f"num-server-rounds={rounds}", f"min-nodes={sites}"])
        status = flower.wait_run(run, timeout=7200)
        if status != "finished:completed":
            raise SystemExit(f"plain Flower: run {status}")
        return stamps(flower.log(run)), began
    finally:
        flower.stop()


def gate_cost(fed: LocalFlowerFederation, calls: int = 60) -> tuple[float, float]:
    """Median latency (ms) of a Fleet call straight to Flower and through the gate, on
    the live SuperLink before any SuperNode joins (an unauthenticated pull-messages:
    TLS, routing and Flower's node-authentication check, answered 401). The gate takes
    only attested sites: the call through it presents a certificate the SPM issued to
    site-1 (attested here as its SuperNode would be) and checks the SuperLink's."""
    import ssl

    import httpx

    from secfl._internal.files import memory_file
    from secfl.flower._tls import _NamedPeer
    from secfl.spm.client import SpmClient
    from secfl.spm.enroll import enroll
    from secfl.tee._simulated import SimulatedPlatform

    federation = fed.federation()
    site = federation.sites[0]
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as spm:
        enrolled = enroll(spm, SimulatedPlatform(fed.sim_dir), fed.policy_name, site.name,
                          measurement=federation.supernode_measurement(site))  # fmt: skip
    attested = _NamedPeer(ssl.PROTOCOL_TLS_CLIENT)  # chain and the name "superlink" checked
    attested.peer_name = "superlink"
    attested.load_verify_locations(cadata=enrolled.ca_certificate)
    with (
        memory_file(enrolled.certificate.encode(), "cert.pem") as cert,
        memory_file(enrolled.key_pem, "key.pem") as key,
    ):
        attested.load_cert_chain(cert, key)
    out = []
    for port, verify in ((fed.link_port, False), (fed.gate_port, attested)):
        with httpx.Client(verify=verify) as client:  # the first: timing only, no data
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                client.post(f"https://127.0.0.1:{port}/v1/fleet/pull-messages", content=b"")
                times.append(time.perf_counter() - began)
        out.append(1000 * statistics.median(times[10:]))
    return out[0], out[1]


GATE: list[tuple[float, float]] = []


def secured(work: Path, app: Path, sites: int, rounds: int) -> tuple[list[float], float]:
    fed = LocalFlowerFederation(work, app=app, sites=sites, rounds=rounds)
    try:
        fed.start_spm()
        fed.prepare()
        fed.submit_policy()
        began = time.time()
        fed.start_superlink()
        fed.wait_gate()
        pause = time.time()
        GATE.append(gate_cost(fed))
        began += time.time() - pause  # not part of the start-up
        fed.start_supernodes()
        code = fed.wait(timeout=7200)
        if code != 0:
            tail = fed.processes["superlink"].tail()
            raise SystemExit(f"secfl: the SuperLink exited {code}: {tail}")
        return stamps(fed.processes["superlink"].text()), began
    finally:
        fed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two N times")
    parser.add_argument("--keep", help="keep the work folders here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        app = instrumented(root / "app")
        print(f"{args.sites} SuperNodes, {args.rounds} rounds, examples/flower on digits")
        rounds: dict[str, list[float]] = {"plain": [], "secfl": []}
        start: dict[str, list[float]] = {"plain": [], "secfl": []}
        for i in range(args.repeat):
            for name, run in (("plain", plain), ("secfl", secured)):
                marks, began = run(root / f"{name}-{i}", app, args.sites, args.rounds)
                if len(marks) != args.rounds + 1:
                    raise SystemExit(f"{name}: {len(marks)} stamps, not {args.rounds + 1}")
                times = [b - a for a, b in itertools.pairwise(marks)]
                rounds[name] += times
                start[name].append(marks[0] - began)
                print(f"  {name:5}: median {statistics.median(times):.2f} s/round "
                      f"(mean {statistics.mean(times):.2f}), start-up {marks[0] - began:.1f} s",
                      flush=True)  # fmt: skip
        label = {"plain": "plain Flower (TLS)", "secfl": "secfl (attested)"}
        for name in ("plain", "secfl"):
            print(f"{label[name]:19} {statistics.median(rounds[name]):.2f} s/round (median), "
                  f"start-up {statistics.median(start[name]):.1f} s")  # fmt: skip
        ratio = statistics.median(rounds["secfl"]) / statistics.median(rounds["plain"])
        mean = statistics.mean(rounds["secfl"]) / statistics.mean(rounds["plain"])
        boot = statistics.median(start["secfl"]) / statistics.median(start["plain"])
        print(f"round time ratio:   {ratio:.3f}x median, {mean:.3f}x mean (target <= 1.05)")
        print(f"start-up ratio:     {boot:.2f}x")
        direct = statistics.median(d for d, _ in GATE)
        gated = statistics.median(g for _, g in GATE)
        print(f"the gate's hop:     {gated - direct:+.1f} ms per Fleet call "
              f"({direct:.1f} ms straight to Flower, {gated:.1f} ms through the gate)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
