"""``secfl policy init``: a complete federation policy from a few flags.

The command reads what the flags name (public keys, volume tags, the simulation
root, sealed values: :mod:`secfl.cli._init_flags`), builds a
:class:`~secfl.fl._policy_template.FederationPlan` and writes what
:func:`~secfl.fl._policy_template.init_policy` makes of it; then it says what is
still to fill in and the command each host runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from secfl._internal import files
from secfl.cli._common import (
    FedMinClients,
    FedObjective,
    FedRounds,
    FedSet,
    FedStrategy,
    FedTrain,
    err,
    out,
    read_value,
)
from secfl.cli._init_flags import (
    _hardware,
    _members,
    _pair,
    _program,
    _seal,
    _sealed,
    _settings_file,
    _site_keys,
    _volume,
    _write_site_keys,
    federation_settings,
)
from secfl.errors import UsageError

__all__ = ["federation_settings", "init_cmd"]


def init_cmd(
    name: Annotated[str, typer.Option(metavar="NAME", help="The policy's name at the SPM.")],
    member: Annotated[
        list[str],
        typer.Option(
            metavar="NAME=KEY.pub[,RECOVERY.pub]",
            help="A board member, their signing and recovery public keys (repeat).",
        ),
    ],
    site: Annotated[
        list[str], typer.Option(metavar="NAME", help="A site: one collaborator service (repeat).")
    ],
    task: Annotated[
        str,
        typer.Option(
            metavar="VOLUME|TAG",
            help="The task's code volume (`secfl shield encrypt`), or its tag.",
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="The policy file to write.")] = (
        "policy.yaml"
    ),
    threshold: Annotated[
        int | None, typer.Option(help="Members needed to approve a version (default: a majority).")
    ] = None,
    aggregator: Annotated[
        str, typer.Option(metavar="NAME", help="The aggregator's service name.")
    ] = "aggregator",
    validation: Annotated[
        str | None,
        typer.Option(
            metavar="VOLUME|TAG", help="The validation volume (or its tag), for the aggregator."
        ),
    ] = None,
    test: Annotated[
        str | None, typer.Option(metavar="VOLUME|TAG", help="The test volume (or its tag).")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SITE=VOLUME|TAG",
            help="Pin a site's data; without it the site's data "
            "volume is protected by a counter and may be released later.",
        ),
    ] = None,
    sealed: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SECRET=VALUE",
            help="A key sealed (VALUE, or @FILE holding it) by `secfl policy seal-secret`.",
        ),
    ] = None,
    seal: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SECRET=KEY_FILE",
            help="Seal your own key here (needs --spm and --spm-pin).",
        ),
    ] = None,
    spm: Annotated[str | None, typer.Option(help="SPM URL, for --seal.")] = None,
    spm_pin: Annotated[str | None, typer.Option(help="The SPM's pin, for --seal.")] = None,
    sim_root: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="Accept the simulated TEE of this root (root.pem)."),
    ] = None,
    platform: Annotated[
        list[str] | None,
        typer.Option(metavar="KIND", help="Accept this hardware TEE: tdx, snp or sgx (repeat)."),
    ] = None,
    measurement: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KIND:ROLE=HEX|FIELD=HEX,...",
            help="A hardware image's measurement (ROLE: aggregator or collaborator); for "
            "tdx mrtd=HEX,rtmr1=HEX,rtmr2=HEX.",
        ),
    ] = None,
    allow_unknown_tcb: Annotated[
        bool,
        typer.Option(
            "--allow-unknown-tcb",
            help="Hardware: accept evidence without TCB appraisal: SGX/TDX when the SPM has "
            "no collateral (no --pccs, or a host blocking it), SEV-SNP whatever its TCB.",
        ),
    ] = False,
    program: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="The `secfl` the workloads run (simulated measurement; default: on PATH).",
        ),
    ] = None,
    settings_file: Annotated[
        str | None,
        typer.Option(
            "--settings",
            metavar="PATH",
            help="The federation settings as `secfl simulate --settings` reads them (a "
            "task's federation.yaml); the flags below override them.",
        ),
    ] = None,
    rounds: FedRounds = None,
    min_clients: FedMinClients = None,
    strategy: FedStrategy = None,
    objective: FedObjective = None,
    train: FedTrain = None,
    set_: FedSet = None,
    site_key: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SITE=KEY.pub",
            help="A site's own site key (its operator's `secfl policy keygen`), or the "
            "aggregator's (aggregator=KEY.pub): only a workload holding the private half "
            "enrols as that service.",
        ),
    ] = None,
    site_keys: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Make a site key for every site, and the aggregator, without --site-key: "
            "DIR/SITE.key (0600; give it to the site's operator, whose host sets "
            "SECFL_SITE_KEY to it) and DIR/SITE.pub. Sites share one measurement and the "
            "aggregator's command is public: without site keys one site's host can enrol "
            "as another site, or as the aggregator.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing policy file (and site keys).")
    ] = False,
) -> None:
    """Write a complete federation policy: board, services with their measurements,
    keys (the output key included), volumes and federation settings.

    What only others can give (a site's sealed key) is left as a placeholder that
    `secfl policy validate` refuses, saying what to run."""
    from secfl.fl._policy_template import FederationPlan, init_policy

    target = Path(output)
    if target.exists() and not force:
        raise UsageError(f"'{output}' exists; use --force to replace it")
    members = _members(member)
    settings = federation_settings(
        _settings_file(settings_file), set_, train,
        rounds=rounds, min_clients=min_clients, strategy=strategy, objective=objective,
    )  # fmt: skip
    volumes = {"validation": validation, "test": test}
    plan = FederationPlan(
        name=name,
        members=members,
        threshold=threshold if threshold is not None else len(members) // 2 + 1,
        sites=list(site),
        task_tag="",
        aggregator=aggregator,
        sealed=_sealed(sealed or []),
        simulation_root=read_value(sim_root, "simulation root").decode("utf-8", "replace")
        if sim_root
        else None,
        hardware=_hardware(platform or [], measurement or []),
        allow_unknown_tcb=allow_unknown_tcb,
        federation=settings,
    )
    plan.site_keys, made_keys = _site_keys(
        [plan.aggregator, *plan.sites], site_key or [], site_keys
    )
    plan.task_tag, plan.task_file = _volume(task, "--task", "task.secfl")
    for volume_name, given in volumes.items():
        if given:
            plan.data[volume_name] = _volume(given, f"--{volume_name}", f"{volume_name}.secfl")
    for value in data or []:
        site_name, given = _pair(value, "--data", "SITE=VOLUME")
        plan.data[site_name] = _volume(given, "--data", f"{site_name}.secfl")
    if plan.simulation_root is not None:
        plan.program, plan.program_path = _program(program)
    _seal(plan, seal or [], spm, spm_pin)
    made = init_policy(plan)
    if site_keys is not None:  # once the policy is made: a refused plan writes nothing
        _write_site_keys(site_keys, made_keys, force=force)
    try:
        files.atomic_write(target, made.text.encode())  # a replaced file is never half-written
    except OSError as exc:
        raise UsageError(f"cannot write '{output}': {exc.strerror or exc}") from None
    _report(output, made)


def _report(output: str, made: Any) -> None:
    from secfl.policy import digest

    policy = made.policy
    out.print(
        f"wrote {output}: policy {policy.name} version {policy.version} (digest {digest(policy)})",
        markup=False,
    )
    for warning in made.warnings:
        err.print(f"warning: {warning}", markup=False)
    if made.todos:
        out.print(
            f"to fill in before it is signed ({len(made.todos)}; "
            "`secfl policy validate` refuses it until then):",
            markup=False,
        )
        for path, what in made.todos:
            out.print(f"  {path.removeprefix('.')}: {what}", markup=False)
    keyless = [s.name for s in policy.services if s.role == "collaborator" and not s.site_key]
    if len(keyless) > 1:
        out.print(
            f"note: sites {', '.join(keyless)} share one measurement and name no site key: "
            "one site's host can enrol as another (give --site-keys DIR, or --site-key "
            "SITE=KEY.pub)",
            markup=False,
        )
    aggregator = next(s for s in policy.services if s.role == "aggregator")
    if aggregator.site_key is None:
        out.print(
            f"note: the aggregator '{aggregator.name}' names no site key: any site's host can "
            "run its (public) command and enrol as it, receiving the model's signing key "
            f"(give --site-keys DIR, or --site-key {aggregator.name}=KEY.pub)",
            markup=False,
        )
    out.print("each host then starts its service (the SECFL_* settings are not measured):",
              markup=False)  # fmt: skip
    for service, line in made.run_lines.items():
        out.print(f"  {service}: {line}", markup=False)
    out.print(
        f"next: secfl policy validate {output}; {policy.board.threshold} member(s) run "
        f"secfl policy sign {output} --key KEY --member NAME; then secfl policy submit "
        f"{output} --sig ... --spm URL --spm-pin PIN",
        markup=False,
    )
