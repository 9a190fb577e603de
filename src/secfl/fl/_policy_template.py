"""A whole federation's policy from a few facts: what ``secfl policy init`` writes.

Given the board (members' keys, threshold), the sites, the task's code volume and
whatever else is known (validation and test volumes, each site's data volume, the
sealed keys), :func:`init_policy` writes a complete policy:

- the aggregator and one collaborator service per site, each with the measurement
  of the exact command ``secfl run`` will start (for the simulated TEE, computed
  here as ``secfl measure --for-run`` would; for hardware, the image's measurement
  given by the caller), the volumes it opens and the keys it is injected: the
  model-signing key, the checkpoint key and the **output key**, so the final model
  is sealed to its owner;
- the secrets: the federation's CA, the model-signing and checkpoint keys (made by
  the SPM), and each owner's key imported sealed (``secfl policy seal-secret``);
- the volumes: code and validation/test pinned by tag, each site's data pinned by
  tag when given, else protected by a counter (the site may shield new releases
  without a new policy; an older release is refused);
- the ``federation`` settings with sensible defaults, checked as the aggregator
  reads them.

Only operational settings are left out of the measured commands (addresses,
folders, log level: :mod:`secfl.fl._host_settings`), so moving a port or a folder
needs no new policy. A sealed key that is not given yet becomes a placeholder
(:mod:`secfl.policy._todo`) that ``secfl policy validate`` refuses, saying who runs
what. The YAML says in comments what each measurement covers and the command each
party runs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secfl.errors import PolicyError
from secfl.fl._config import FederationConfig
from secfl.fl._host_settings import AGGREGATOR, LISTEN, OUTPUT
from secfl.fl._injected import CHECKPOINT_KEY, OUTPUT_KEY, SIGNING_KEY, VERIFY_KEY
from secfl.fl._policy_check import check_federation
from secfl.launcher._measurement import describe_measured, run_measurement
from secfl.policy._document import load_policy
from secfl.policy._fields import NAME
from secfl.policy._model import Policy
from secfl.policy._new_version import check_new_version
from secfl.policy._platforms import platform_warnings
from secfl.policy._sealed import check_sealed
from secfl.policy._todo import todo, todos
from secfl.policy._yaml_out import dump_yaml

__all__ = [
    "HARDWARE",
    "BoardMember",
    "FederationPlan",
    "Template",
    "init_policy",
]

#: TEE kinds whose measurement is the image's, given by the caller.
HARDWARE = ("tdx", "snp", "sgx")
#: The counter the aggregator increments once per round.
COUNTER = "rounds"
_FIXED_VOLUMES = ("task", "validation", "test")
_FIXED_SECRETS = ("fl-ca", "model-signing", "checkpoint-key", "task-key", "output-key")


@dataclass(frozen=True)
class BoardMember:
    """A board member: name, signing public key (PEM), optional recovery key (PEM)."""

    name: str
    public_key: str
    recovery_key: str | None = None


@dataclass
class FederationPlan:
    """What the policy is written from (see the module docstring)."""

    name: str
    members: list[BoardMember]
    threshold: int
    sites: list[str]
    #: The task's code volume: its tag, and the file it was read from (for commands).
    task_tag: str
    task_file: str = "task.secfl"
    aggregator: str = "aggregator"
    #: Volume name -> (tag, file) for ``validation``, ``test`` and sites' data.
    data: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Imported secret name -> its ``sealed:`` value (``secfl policy seal-secret``).
    sealed: dict[str, str] = field(default_factory=dict)
    #: The simulation root (PEM): the simulated TEE is accepted.
    simulation_root: str | None = None
    #: For the simulated measurement: argv[0] of the commands and the file it names.
    program: str = "secfl"
    program_path: Path | None = None
    #: Hardware kind -> role (``aggregator``, ``collaborator``) -> measurement (hex).
    hardware: dict[str, dict[str, str | dict[str, str]]] = field(default_factory=dict)
    allow_unknown_tcb: bool = False
    #: Federation settings over the defaults (checked by FederationConfig.parse).
    federation: dict[str, Any] = field(default_factory=dict)
    #: Site (or the aggregator) -> its site key (public, PEM): only a workload holding
    #: the private half enrols as that service (every site runs the same collaborator,
    #: and anyone can run the aggregator's public command: secfl.spm._site_key).
    site_keys: dict[str, str] = field(default_factory=dict)

    def federation_settings(self) -> dict[str, Any]:
        """The defaults, with the plan's settings over them (``train`` merged)."""
        settings: dict[str, Any] = {
            "rounds": 10,
            "min_clients": len(self.sites),
            "strategy": "fedavg",
            "train": {"epochs": 1},
            "objective": {"metric": "loss", "mode": "min"},
            "counter": COUNTER,
        }
        for key, value in self.federation.items():
            if key == "train" and isinstance(value, dict):
                settings["train"] = {**settings["train"], **value}
            else:
                settings[key] = value
        return settings

    def aggregator_volumes(self) -> list[str]:
        return ["task", *(n for n in ("validation", "test") if n in self.data)]

    def commands(self) -> dict[str, list[str]]:
        """The measured command line of each role (``secfl run ... -- COMMAND``)."""
        agg = [self.program, "aggregator", "--task", "volume:task"]
        for name in self.aggregator_volumes()[1:]:
            agg += [f"--{name}", f"volume:{name}"]
        return {"aggregator": agg, "collaborator": [self.program, "collaborator", "--task",
                                                    "volume:task"]}  # fmt: skip

    def secret_of(self, volume: str) -> str:
        return f"{volume}-key"


@dataclass(frozen=True)
class Template:
    """A written policy: its YAML text, the validated policy, the placeholders left
    (field path, what to do), the checker's warnings, and each service's command."""

    text: str
    policy: Policy
    todos: list[tuple[str, str]]
    warnings: list[str]
    run_lines: dict[str, str]


def init_policy(plan: FederationPlan) -> Template:
    """Write the policy ``plan`` describes, and check it as ``secfl policy validate``
    would (placeholders aside); :class:`PolicyError` or :class:`FlError` in one line."""
    _check_plan(plan)
    doc = _document(plan)
    text = _render(plan, doc)
    policy = load_policy(text)
    check_new_version(policy, text)
    check_sealed(policy)
    warnings = [*platform_warnings(policy.platforms), *check_federation(policy)]
    return Template(text, policy, todos(policy), warnings, _run_lines(plan))


def _check_plan(plan: FederationPlan) -> None:
    names = [("--site", s) for s in plan.sites] + [("--aggregator", plan.aggregator)]
    names += [("--member", m.name) for m in plan.members] + [("--name", plan.name)]
    for flag, value in names:
        if not re.fullmatch(NAME, value):
            raise PolicyError(
                f"init: {flag}: '{value[:60]}' is not a name (letters, digits, . _ -)"
            )
    if not plan.sites:
        raise PolicyError("init: give at least one --site (one collaborator service each)")
    services = [plan.aggregator, *plan.sites]
    for name in services:
        if services.count(name) > 1:
            raise PolicyError(f"init: the service name '{name}' is given twice")
    secrets = [*_FIXED_SECRETS, *(plan.secret_of(v) for v in ("validation", "test", *plan.sites))]
    for site in plan.sites:
        if site in _FIXED_VOLUMES or secrets.count(plan.secret_of(site)) > 1:
            raise PolicyError(
                f"init: --site '{site}' would share a volume or secret name with the "
                f"federation's own ({', '.join(_FIXED_VOLUMES)}, {', '.join(_FIXED_SECRETS)}): "
                "choose another site name"
            )
    unknown = set(plan.data) - {"validation", "test", *plan.sites}
    if unknown:
        raise PolicyError(f"init: --data: '{sorted(unknown)[0]}' is not a site of this policy")
    unknown = set(plan.site_keys) - {plan.aggregator, *plan.sites}
    if unknown:
        raise PolicyError(
            f"init: --site-key: '{sorted(unknown)[0]}' is not a site (or the aggregator) of "
            "this policy"
        )
    known = set(secrets)
    for secret in plan.sealed:
        if secret not in known:
            raise PolicyError(
                f"init: --sealed: '{secret}' is not a key this policy imports "
                f"(it imports: {', '.join(_imported(plan))})"
            )
    if plan.simulation_root is None and not plan.hardware:
        raise PolicyError(
            "init: give --sim-root (the simulated TEE's root.pem) or --platform KIND with its "
            "--measurement values: the policy must accept some TEE"
        )
    if plan.simulation_root is not None and plan.program_path is None:
        raise PolicyError("init: the simulated measurement needs the program file (--program)")
    FederationConfig.parse(plan.federation_settings())  # a bad setting: one line, now


def _imported(plan: FederationPlan) -> list[str]:
    """The owners' keys the policy imports, in order: code, validation, test, output, sites."""
    volumes = ["task", *(n for n in ("validation", "test") if n in plan.data)]
    return [*(plan.secret_of(v) for v in volumes), "output-key",
            *(plan.secret_of(s) for s in plan.sites)]  # fmt: skip


def _seal_hint(plan: FederationPlan, secret: str, owner: str, key_file: str) -> str:
    board = " ".join(f"--board-key {m.name}.pub" for m in plan.members)
    return todo(
        f"{owner} seals its key for this board: `secfl policy seal-secret --key-file "
        f"{key_file} --policy {plan.name} --secret {secret} --spm URL --spm-pin PIN {board} "
        f"--threshold {plan.threshold}` and puts the printed value here (or runs `secfl "
        f"policy init` again with --sealed {secret}=VALUE)"
    )


def _secrets(plan: FederationPlan) -> list[dict[str, Any]]:
    owners = {"task-key": ("the model owner", "task.key"),
              "validation-key": ("the model owner", "validation.key"),
              "test-key": ("the model owner", "test.key"),
              "output-key": ("the model owner (`secfl shield keygen -o model.key` first)",
                             "model.key")}  # fmt: skip
    out: list[dict[str, Any]] = [
        {"name": "fl-ca", "kind": "x509-ca", "common_name": f"{plan.name} federation CA"},
        {"name": "model-signing", "kind": "ed25519"},
        {"name": "checkpoint-key", "kind": "aes-256"},
    ]
    for secret in _imported(plan):
        site = secret.removesuffix("-key")
        owner, key_file = owners.get(secret, (f"site {site}", f"{site}.key"))
        sealed = plan.sealed.get(secret) or _seal_hint(plan, secret, owner, key_file)
        out.append({"name": secret, "kind": "imported", "sealed": sealed})
    return out


def _measurements(plan: FederationPlan, role: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if plan.simulation_root is not None:
        assert plan.program_path is not None
        argv = plan.commands()[role]
        found["simulated"] = [run_measurement(plan.program_path, argv, {"task": plan.task_tag})]
    for kind, by_role in plan.hardware.items():
        pin = by_role[role]
        found[kind] = [pin.lower() if isinstance(pin, str) else dict(pin)]  # type: ignore[list-item]
    return found


def _document(plan: FederationPlan) -> dict[str, Any]:
    members = []
    for m in plan.members:
        entry = {"name": m.name, "public_key": m.public_key}
        if m.recovery_key:
            entry["recovery_key"] = m.recovery_key
        members.append(entry)
    accept = (["simulated"] if plan.simulation_root else []) + list(plan.hardware)
    platforms: dict[str, Any] = {"accept": accept}
    if plan.hardware:
        platforms["allow_unknown_tcb"] = plan.allow_unknown_tcb
    if plan.simulation_root:
        platforms["simulation_root"] = plan.simulation_root
    settings = plan.federation_settings()
    counter = str(settings["counter"])
    aggregator = {
        "name": plan.aggregator,
        "role": "aggregator",
        "measurements": _measurements(plan, "aggregator"),
        "volumes": plan.aggregator_volumes(),
        "counters": [counter],
        "inject": {"files": {f"/{SIGNING_KEY}": "$$SECFL::model-signing:key$$",
                             f"/{CHECKPOINT_KEY}": "$$SECFL::checkpoint-key:hex$$",
                             f"/{OUTPUT_KEY}": "$$SECFL::output-key:hex$$"}},
        # its command is public too: any site's host could run it and take the model's
        # signing key, unless only its own operator's key enrols it
        **({"site_key": plan.site_keys[plan.aggregator]}
           if plan.aggregator in plan.site_keys else {}),
    }  # fmt: skip
    sites = [
        {
            "name": site,
            "role": "collaborator",
            "measurements": _measurements(plan, "collaborator"),
            "volumes": ["task", site],
            "inject": {"files": {f"/{VERIFY_KEY}": "$$SECFL::model-signing:pub$$"}},
            **({"site_key": plan.site_keys[site]} if site in plan.site_keys else {}),
        }
        for site in plan.sites
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "task", "key": "task-key", "kind": "code", "tag": plan.task_tag.lower()}
    ]
    counters = [{"name": counter}]
    for name in [*(n for n in ("validation", "test") if n in plan.data), *plan.sites]:
        spec: dict[str, Any] = {"name": name, "key": plan.secret_of(name), "kind": "data"}
        if name in plan.data:
            spec["tag"] = plan.data[name][0].lower()
        else:  # released later, again and again: the SPM keeps the newest release
            spec["counter"] = f"{name}-data"
            counters.append({"name": f"{name}-data"})
        volumes.append(spec)
    return {
        "name": plan.name,
        "version": 1,
        "predecessor": "",
        "board": {"members": members, "threshold": plan.threshold},
        "platforms": platforms,
        "identity_ca": "fl-ca",
        "services": [aggregator, *sites],
        "secrets": _secrets(plan),
        "volumes": volumes,
        "counters": counters,
        "federation": settings,
    }


def _run_lines(plan: FederationPlan) -> dict[str, str]:
    """Per service, the command its host runs (the environment part is not measured)."""
    commands = plan.commands()
    sim = " --platform simulated --sim-dir sim" if plan.simulation_root else ""
    lines = {}
    for service in [plan.aggregator, *plan.sites]:
        role = "aggregator" if service == plan.aggregator else "collaborator"
        if role == "aggregator":
            env = f"{LISTEN}=0.0.0.0:7443 {OUTPUT}=output"
            files = {"task": plan.task_file} | {
                n: plan.data.get(n, ("", f"{n}.secfl"))[1] for n in plan.aggregator_volumes()[1:]
            }
        else:
            env = f"{AGGREGATOR}=AGGREGATOR_HOST:7443"
            files = {"task": plan.task_file, service: plan.data.get(service, ("", ""))[1]
                     or f"{service}.secfl"}  # fmt: skip
        if service in plan.site_keys:  # the site's own key file, never the key itself
            env = f"SECFL_SITE_KEY={shlex.quote(f'site-keys/{service}.key')} {env}"
        volumes = " ".join(f"--volume {shlex.quote(f'{n}={p}')}" for n, p in files.items())
        lines[service] = (
            f"{env} secfl run --spm URL --spm-pin PIN --policy {plan.name} --service "
            f"{service}{sim} {volumes} -- {shlex.join(commands[role])}"
        )
    return lines


def _render(plan: FederationPlan, doc: dict[str, Any]) -> str:
    body = dump_yaml(doc)
    lines = body.splitlines()
    start = lines.index("services:")
    for service in reversed([plan.aggregator, *plan.sites]):
        role = "aggregator" if service == plan.aggregator else "collaborator"
        at = lines.index(f"- name: {service}", start)
        lines[at:at] = _service_comment(plan, role)
    for key, comment in _SECTION_COMMENTS.items():
        at = lines.index(key) if key in lines else -1
        if at >= 0:
            lines[at:at] = [f"# {c}" if c else "#" for c in comment]
    header = [
        f"# Policy '{plan.name}' written by `secfl policy init`: a federation of "
        f"{len(plan.sites)} site(s) and an aggregator, approved by {plan.threshold} of "
        f"{len(plan.members)} board members.",
        "#",
        "# Next: `secfl policy validate` this file (it says what is still to fill in), then",
        f"# {plan.threshold} member(s) `secfl policy sign` it and one `secfl policy submit`s "
        "it with their signatures.",
        "# Each host then starts its service (the SECFL_* settings are the host's, not "
        "measured; see docs/operations.md):",
        *(f"#   {service}: {line}" for service, line in _run_lines(plan).items()),
        "#",
    ]
    return "\n".join([*header, *lines]) + "\n"


_SECTION_COMMENTS = {
    "secrets:": [
        "The SPM makes fl-ca, model-signing and checkpoint-key; each *-key of kind imported is",
        "its owner's volume key, sealed to the SPM for exactly this board. output-key is the",
        "model owner's: the final model (output/model.secfl) is sealed to it and only its owner",
        "opens it (`secfl shield decrypt output/model.secfl -o model --key-file model.key`).",
    ],
    "volumes:": [
        "A volume with a tag is pinned; one with a counter may be released again by its owner",
        "(`secfl shield encrypt --version N`): the SPM records the newest and refuses older.",
    ],
    "federation:": [
        "Read by the aggregator (`secfl policy validate` checks it the same way).",
    ],
}


def _service_comment(plan: FederationPlan, role: str) -> list[str]:
    if plan.simulation_root is None or plan.program_path is None:
        return [f"# {role}: measurements of its TEE image, as given"]
    described = describe_measured(plan.program_path, plan.commands()[role],
                                  {"task": plan.task_tag})  # fmt: skip
    return [f"# The simulated measurement of the {role}'s command, as `secfl run` measures it:"] + [
        f"#   {line}" for line in described
    ]
