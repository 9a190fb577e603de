"""``secfl flower``: Flower apps, confidential (see docs/flower.md).

- ``secfl flower policy``: the policy of a Flower federation (services, measurements of
  the exact ``flower-superlink`` / ``flower-supernode`` command lines, the Flower CA,
  the SuperLink's certificate, the node keys, the app and data volumes, the
  injections), the shielded app, and the ``secfl run`` command of every party.
- ``secfl flower demo``: a Flower app trained end to end under secfl on this machine.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from secfl.cli._common import keep_folder, out, read_input
from secfl.errors import UsageError

__all__ = ["app", "demo_cmd", "policy_cmd", "report"]

app = typer.Typer(
    help="Flower apps, confidential: unmodified ServerApps and ClientApps inside TEEs.",
    no_args_is_help=True,
)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"{option}: '{item}' is not SITE=VALUE")
        if name in pairs:
            raise UsageError(f"{option}: '{name}' given twice")
        pairs[name] = value
    return pairs


@app.command("policy")
def policy_cmd(
    app_path: Annotated[
        str, typer.Option("--app", help="The Flower app folder (or a built .fab).")
    ],
    board: Annotated[
        list[str],
        typer.Option(help="A board member's public key file (NAME.pub); give every member's."),
    ],
    threshold: Annotated[int, typer.Option(min=1, max=64, help="Board approvals needed (m).")],
    superlink: Annotated[
        str,
        typer.Option(
            help="HOST:PORT where SuperNodes reach the SuperLink (HOST is in its certificate)."
        ),
    ],
    spm: Annotated[str, typer.Option(help="SPM URL (the keys are sealed to it).")],
    spm_pin: Annotated[str, typer.Option(help="SHA-256 of the SPM's TLS key.")],
    sim_root: Annotated[
        str,
        typer.Option(
            help="The simulation root (PEM, in the simulated TEE's folder): measurements are "
            "computed for the simulated TEE."
        ),
    ],
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the policy and volumes.")],
    sites: Annotated[int, typer.Option(min=1, max=200, help="Sites site-1..site-N.")] = 2,
    data: Annotated[
        list[str] | None,
        typer.Option(help="SITE=VOLUME: the site's shielded data (its tag is read from it)."),
    ] = None,
    data_key: Annotated[
        list[str] | None, typer.Option(help="SITE=KEYFILE: sealed here to the SPM.")
    ] = None,
    data_tag: Annotated[
        list[str] | None, typer.Option(help="SITE=TAG, when the site sent its tag.")
    ] = None,
    data_sealed: Annotated[
        list[str] | None,
        typer.Option(help="SITE=FILE holding the site's `secfl policy seal-secret` output."),
    ] = None,
    site_port: Annotated[
        list[str] | None,
        typer.Option(help="SITE=PORT: its SuperNode's loopback port (default 9094)."),
    ] = None,
    site_key: Annotated[
        list[str] | None,
        typer.Option(
            help="SITE=KEY.pub: the site's own site key (`secfl policy keygen`): only a "
            "SuperNode whose host holds the private half enrols as that site; "
            "superlink=KEY.pub: the SuperLink's, its operator's."
        ),
    ] = None,
    app_key: Annotated[
        str | None, typer.Option(help="Key file of the app volume (default: a new app.key).")
    ] = None,
    output_key: Annotated[
        str | None,
        typer.Option(
            help="The model owner's key file: the ServerApp's outputs are sealed "
            "to it (--output on the SuperLink's host)."
        ),
    ] = None,
    output: Annotated[
        str, typer.Option(help="Where the SuperLink writes the sealed outputs.")
    ] = "model.secfl",
    run_config: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE of the run config (repeat).")
    ] = None,
    name: Annotated[str, typer.Option(help="The policy's name.")] = "flower",
    superlink_port: Annotated[
        int, typer.Option(min=1, max=65535, help="The SuperLink's own loopback port.")
    ] = 9093,
    flower_python: Annotated[
        str | None, typer.Option(help="The Flower venv's Python (default: .venv-flwr).")
    ] = None,
) -> None:
    """Write the policy of a Flower federation, the shielded app and the commands.

    In --out: app-plain/ (the app built, before shielding), app.secfl (and app.key),
    policy.yaml and commands.sh (each party's `secfl run` line). The board then signs
    policy.yaml and submits it."""
    import yaml

    from secfl.flower._local import build_fab
    from secfl.flower._local import flower_python as default_python
    from secfl.flower._policy import (
        APP_VOLUME,
        FAB_NAME,
        FlowerFederation,
        Site,
        flower_policy,
        run_command,
    )
    from secfl.policy._document import load_policy
    from secfl.shield import encrypt_directory, generate_key, key_from_file, peek_tag
    from secfl.spm._sealing import board_binding, seal_imported
    from secfl.spm.client import SpmClient

    if threshold > len(board):
        raise UsageError(f"--threshold {threshold} is more than the {len(board)} --board keys")
    python = Path(flower_python) if flower_python else default_python()
    for item in run_config or []:
        config_key, sep, _ = item.partition("=")
        if not sep or not config_key.strip():
            raise UsageError(f"--run-config: '{item[:80]}' is not KEY=VALUE")
    folder = Path(out_dir)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        names = [f"site-{i}" for i in range(1, sites + 1)]
        tags, keys, sealed_files = (_pairs(data_tag, "--data-tag"), _pairs(data_key, "--data-key"),
                                    _pairs(data_sealed, "--data-sealed"))  # fmt: skip
        volumes, ports = _pairs(data, "--data"), _pairs(site_port, "--site-port")
        site_keys = _pairs(site_key, "--site-key")
        link_key = site_keys.pop("superlink", None)  # (the SuperLink's own, not a site's)
        for option, given in (("--data", volumes), ("--data-key", keys), ("--data-tag", tags),
                              ("--data-sealed", sealed_files), ("--site-port", ports),
                              ("--site-key", site_keys)):  # fmt: skip
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise UsageError(f"{option}: '{unknown[0]}' is not one of site-1..site-{sites}")
        for site, port in ports.items():
            if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
                raise UsageError(f"--site-port {site}: '{port[:80]}' is not a port (1 to 65535)")
        members = []
        for path in board:
            pem = read_input(path, "board member key").decode("utf-8", "replace")
            members.append({"name": Path(path).name.split(".")[0], "public_key": pem})
        binding = board_binding([m["public_key"] for m in members], threshold)
        with SpmClient(spm, pin=spm_pin) as client:
            spm_key = client.public_key()

        def seal(secret: str, value: bytes) -> str:
            return seal_imported(value, spm_key, name, secret, binding)

        plain = folder / "app-plain"
        fab = build_fab(Path(app_path), python, plain / FAB_NAME)
        key = key_from_file(app_key) if app_key else generate_key()
        if not app_key:
            from secfl._internal import files

            files.write_private(folder / "app.key", key.hex().encode())
        app_tag = encrypt_directory(plain, folder / "app.secfl", key)
        site_list = []
        for site in names:
            if site in volumes:
                tags.setdefault(site, peek_tag(volumes[site]))
            if site not in tags:
                raise UsageError(f"{site}: give --data {site}=VOLUME or --data-tag {site}=TAG")
            if site in keys:
                sealed = seal(f"{site}-data-key", key_from_file(keys[site]))
            elif site in sealed_files:
                sealed = read_input(sealed_files[site], "sealed key").decode().strip()
            else:
                raise UsageError(
                    f"{site}: give --data-key {site}=KEYFILE or --data-sealed {site}=FILE"
                )
            port = ports.get(site, "9094")
            site_list.append(
                Site(site, tags[site], sealed, runtime_port=int(port),
                     site_key=_site_key(site, site_keys[site]) if site in site_keys else None)
            )  # fmt: skip
        fed = FlowerFederation(
            name=name, python=str(python), fab_sha256=hashlib.sha256(fab).hexdigest(),
            app_tag=app_tag, app_sealed=seal("app-key", key), superlink=superlink,
            sites=site_list, board=members, threshold=threshold,
            platforms={"accept": ["simulated"], "allow_unknown_tcb": True,
                       "simulation_root": read_input(sim_root, "simulation root").decode()},
            superlink_port=superlink_port, run_config=list(run_config or []),
            output=output if output_key else None,
            output_sealed=(
                seal("model-output-key", key_from_file(output_key)) if output_key else None
            ),
            superlink_key=_site_key("superlink", link_key) if link_key else None,
        )  # fmt: skip
        text = yaml.safe_dump(flower_policy(fed), sort_keys=False, allow_unicode=True)
        load_policy(text)  # valid, or one line naming the field
        (folder / "policy.yaml").write_text(text)
        lines = [
            "#!/bin/sh",
            "# The exact commands the policy measures; SPM_URL and SPM_PIN are yours. Each",
            "# host runs its own line, in the folder holding the volume file it names.",
            f"SPM_URL={shlex.quote(spm)}",
            f"SPM_PIN={shlex.quote(spm_pin)}",
            "",
        ]
        lines.append("# On the SuperLink's host, beside a copy of app.secfl (written here):")
        # Simulation: every `secfl run` names the simulated TEE (drop this on hardware).
        sim = ["--platform", "simulated", "--sim-dir", str(Path(sim_root).resolve().parent)]
        cmd = run_command(fed, "superlink", fed.superlink_argv(), {APP_VOLUME: "app.secfl"},
                          "$SPM_URL", "$SPM_PIN", sim)  # fmt: skip
        link_file = "SECFL_SITE_KEY=site-keys/superlink.key " if fed.superlink_key else ""
        lines.append(link_file + _shell(cmd))
        for entry in site_list:
            held = volumes.get(entry.name, f"{entry.name}.secfl")
            lines.append(f"# On {entry.name}'s host, beside its data volume {held}:")
            cmd = run_command(fed, entry.name, fed.supernode_argv(entry), {entry.data_volume: held},
                              "$SPM_URL", "$SPM_PIN", sim)  # fmt: skip
            # the site's own key file (never the key itself), which signs its enrolments
            key_file = f"SECFL_SITE_KEY=site-keys/{entry.name}.key " if entry.site_key else ""
            lines.append(key_file + _shell(cmd))
        (folder / "commands.sh").write_text("\n".join(lines) + "\n")
        out.print(f"policy: {folder / 'policy.yaml'} ({len(site_list)} sites)", markup=False)
        out.print(f"app: sha256 {fed.fab_sha256}, volume tag {app_tag}", markup=False)
        out.print(f"commands: {folder / 'commands.sh'}", markup=False)
        keyless = [entry.name for entry in site_list if entry.site_key is None]
        if keyless:  # its command line is public: any host's TEE can run it
            out.print(
                f"note: {', '.join(keyless)} name{'s' if len(keyless) == 1 else ''} no site "
                "key: any host's TEE can run a site's (public) command and enrol as it (give "
                "--site-key SITE=KEY.pub; its operator makes the key with `secfl policy keygen "
                "--out-dir site-keys --member SITE`)",
                markup=False,
            )
        if fed.superlink_key is None:  # nor is the SuperLink's
            out.print(
                "note: the superlink names no site key: any host's TEE can run its (public) "
                "command and enrol as it, receiving the SuperLink's certificate and the output "
                "key (give --site-key superlink=KEY.pub, its operator's key)",
                markup=False,
            )
    except BaseException:
        if created:  # a refused or failed run leaves no half-made folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _site_key(site: str, path: str) -> str:
    """A site's site key (public, PEM) from the file ``--site-key`` names."""
    from secfl.errors import PolicyError
    from secfl.policy import _keys as keys

    try:
        key = keys.load_public(read_input(path, f"{site}'s site key"))
    except PolicyError as exc:
        text = str(exc).removeprefix("board public key: ")
        raise UsageError(f"--site-key {site}: {text}") from None
    return keys.public_pem(key).decode()


def _shell(argv: list[str]) -> str:
    """A command line for sh, ``$SPM_URL`` / ``$SPM_PIN`` left to the shell and every
    ``$SECFL_...`` left literal (``secfl run``'s program expands them, not the shell)."""
    words = []
    for word in argv:
        words.append(word if word in ("$SPM_URL", "$SPM_PIN") else shlex.quote(word))
    return " ".join(words)


@app.command("demo")
def demo_cmd(
    sites: Annotated[int, typer.Option(min=2, max=16, help="SuperNodes (one site each).")] = 4,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Training rounds.")] = 3,
    keep: Annotated[
        str | None,
        typer.Option(
            help="Keep the work folder here, a new or empty one (default: a temporary one)."
        ),
    ] = None,
) -> None:
    """Train the example Flower app (examples/flower) under secfl: an SPM, a 2-of-3 board,
    an attested SuperLink and SuperNodes, a fifth SuperNode with a modified app refused."""
    kept = keep_folder(keep) if keep else None
    from secfl.flower._federation import LocalFlowerFederation

    with tempfile.TemporaryDirectory(prefix="secfl-flower-demo-") as tmp:
        work = kept or Path(tmp)
        fed = LocalFlowerFederation(work, sites=sites, rounds=rounds)
        began = time.monotonic()
        out.print(f"A Flower app under secfl: {sites} SuperNodes, {rounds} rounds", markup=False)
        try:
            code = fed.run_demo(
                step=lambda what, s: out.print(f"  {what} ({s:.1f} s)", markup=False)
            )
            report(fed, code, time.monotonic() - began)
        finally:
            fed.stop()
        if code != 0:
            raise UsageError(f"demo: the run failed; logs in {work / 'logs'} (use --keep)")


_HEX = re.compile(r"\b([0-9a-f]{16})[0-9a-f]{8,}\b")


def report(fed: Any, code: int, seconds: float) -> None:
    """What the demo shows: the rounds, the SPM's decisions, the sealed model."""
    out.print("")
    out.print("Rounds (the ServerApp's log, inside the SuperLink's TEE):", markup=False)
    for line in fed.processes["superlink"].text().splitlines():
        if "Aggregated MetricRecord" in line or "[ROUND " in line:
            out.print("  " + line.split(":", 1)[-1].strip().lstrip("└─> "), markup=False)
    out.print("")
    out.print("The SPM's audit log (attestation decisions and Flower events):", markup=False)
    for entry in fed.audit():
        event, detail = entry["event"], entry.get("detail", {})
        if event == "attestation.accepted":
            out.print(f"  accepted  {detail.get('service')}", markup=False)
        elif event == "attestation.refused":
            reason = _HEX.sub(r"\1...", str(detail.get("reason", ""))).split(" (it pins")[0]
            out.print(f"  REFUSED   {detail.get('service')}: {reason}", markup=False)
        elif event.startswith("fl.flower."):
            out.print(f"  {event}: {_short(detail)}", markup=False)
    refused = fed.processes.get("modified-site")
    if refused is not None and refused.proc.returncode not in (None, 0):
        out.print("  (the refusal is the fifth SuperNode: site-1's name, its app modified;"
                  " it got no key and never joined)", markup=False)  # fmt: skip
    out.print("")
    if code == 0:
        model = fed.final_model()
        shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in model.items())
        out.print(f"the model owner opens the sealed model: {shapes}", markup=False)
    status = "completed" if code == 0 else f"failed (exit {code})"
    out.print(f"run {status} in {seconds:.0f} s", markup=False)


def _short(detail: dict[str, Any]) -> str:
    keep = {k: v for k, v in detail.items() if k in ("run_id", "status", "fab_sha256", "nodes")}
    if "nodes" in keep:
        keep["nodes"] = len(keep["nodes"])
    if "fab_sha256" in keep:
        keep["fab_sha256"] = str(keep["fab_sha256"])[:16] + "..."
    return ", ".join(f"{k}={v}" for k, v in keep.items())
