"""``python -m secfl.flower superlink|supernode [options] -- FLOWER COMMAND``.

Run with the Flower venv's Python, under ``secfl run`` (see :mod:`secfl.flower`). Every
refusal is one line on stderr (``error: <check>: ...``) and exit code 2; nothing of
Flower starts before the checks pass.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from secfl.errors import SecflError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m secfl.flower",
        description="A Flower SuperLink or SuperNode inside a TEE, under `secfl run`.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="role", required=True)
    link = sub.add_parser(
        "superlink",
        allow_abbrev=False,
        help="flower-superlink behind the Fleet-only gate; submits the app",
    )
    link.add_argument("--fab", required=True, help="the approved FAB ($SECFL_VOLUMES/...)")
    link.add_argument("--fab-sha256", required=True, help="its SHA-256 (hex)")
    link.add_argument(
        "--nodes",
        required=True,
        help="the attested SuperNodes' public keys, PEM ($SECFL_FILES/...)",
    )
    link.add_argument("--listen", required=True, help="HOST:PORT of the Fleet API for SuperNodes")
    link.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="KEY=VALUE pairs of the run config (as `flwr run --run-config`)",
    )
    link.add_argument("--output", help="seal the ServerApp's outputs into this shield volume")
    link.add_argument("--output-key", help="hex key file of --output ($SECFL_FILES/...)")
    link.add_argument("--poll", type=float, default=0.25, help="task poll interval (s)")
    link.add_argument(
        "--mutual-tls",
        action="store_true",
        help="the gate serves this instance's attested certificate and admits only "
        "the policy's attested sites",
    )
    node = sub.add_parser(
        "supernode",
        allow_abbrev=False,
        help="flower-supernode that runs only the approved ClientApp",
    )
    node.add_argument(
        "--fab-sha256",
        action="append",
        required=True,
        help="SHA-256 of an approved FAB (repeat for several)",
    )
    node.add_argument("--poll", type=float, default=0.25, help="task poll interval (s)")
    return parser  # fmt: skip


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("error: flower: give the Flower command after --", file=sys.stderr)
        return 2
    cut = args.index("--")
    opts = _parser().parse_args(args[:cut])
    flower = args[cut + 1 :]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if opts.role == "superlink":
            from secfl.flower._superlink import SuperLinkOptions
            from secfl.flower._superlink import main as run_superlink

            signal.signal(signal.SIGTERM, _terminate)
            return run_superlink(
                SuperLinkOptions(
                    fab=opts.fab, fab_sha256=opts.fab_sha256, nodes=opts.nodes,
                    listen=opts.listen, run_config=opts.run_config, output=opts.output,
                    output_key=opts.output_key, poll=opts.poll, mutual_tls=opts.mutual_tls,
                ),
                flower,
            )  # fmt: skip
        from secfl.flower._supernode import SuperNodeOptions
        from secfl.flower._supernode import main as run_supernode

        return run_supernode(SuperNodeOptions(opts.fab_sha256, poll=opts.poll), flower)
    except SecflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
