"""The collaborator workload as a library call: :func:`run_collaborator` (the
aggregator's is :mod:`secfl.fl._startup`). Secure by default: the identity, the
policy and the model-signing key come from the SPM after attestation; ``insecure``
is for measuring the overhead only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from secfl._internal.interrupts import interrupt_once
from secfl.errors import FlError
from secfl.fl._collaborator import Collaborator, ModelGate
from secfl.fl._config import FederationConfig
from secfl.fl._inputs import load_task, require_measured
from secfl.fl._pin import AggregatorPin
from secfl.fl._startup import INSECURE, load_data_spec, role_services
from secfl.fl._transport import INSECURE_WARNING, Client
from secfl.fl._workload_identity import VERIFY_KEY, WorkloadIdentity, load_public_key
from secfl.tasks._base import Dataset, Task
from secfl.tasks._contract import show_task_errors

__all__ = ["CollaboratorOptions", "build_collaborator", "run_collaborator"]

log = logging.getLogger("secfl.fl")


@dataclass
class CollaboratorOptions:
    aggregator: str
    task: str
    data: str | None = None
    aggregator_service: str | None = None
    insecure: bool = False
    name: str | None = None
    verify_key: str | None = None
    #: Seconds to wait for an aggregator that is not up (None: the policy's
    #: ``join_patience``; with --insecure, its default).
    patience: float | None = None


def _collaborator_sources(opts: CollaboratorOptions) -> tuple[Task, Dataset]:
    """The task and the training data a collaborator's options name."""
    task = load_task(opts.task)
    task_volume = {opts.task.removeprefix("volume:")} if opts.task.startswith("volume:") else set()
    return task, load_data_spec(task, opts.data, task_volume)


def build_collaborator(opts: CollaboratorOptions) -> Collaborator:
    """A collaborator ready to :meth:`~Collaborator.run` (secure unless ``insecure``)."""
    show_task_errors(opts.insecure)  # secure: the host reads the log (secfl.tasks._contract)
    if opts.insecure:
        log.warning(INSECURE_WARNING)
        if not opts.name:
            raise FlError("collaborator: --insecure needs --name")
        task, data = _collaborator_sources(opts)
        name = opts.name
        return Collaborator(
            task, data,
            lambda: Client(opts.aggregator, None, server_name="", name=name),
            ModelGate(None, INSECURE),
            patience=opts.patience or FederationConfig().join_patience,
        )  # fmt: skip
    require_measured("--task", opts.task, code=True)
    require_measured("--data", opts.data, code=False)
    ident = WorkloadIdentity.from_env()
    task, data = _collaborator_sources(opts)
    policy = ident.policy_document()
    service = opts.aggregator_service
    if service is None:
        names = sorted(role_services(policy, "aggregator"))
        if len(names) != 1:
            raise FlError("collaborator: give --aggregator-service (the policy names "
                          f"{len(names)} aggregators)")  # fmt: skip
        service = names[0]
    key = load_public_key(ident.secret_file(VERIFY_KEY, opts.verify_key))
    # the federation's newest committed model, from the SPM: no older one is accepted
    config = FederationConfig.parse(policy.federation)
    floor = ident.spm().counter(ident.policy, config.counter)

    def policy_changed() -> bool:
        return ident.spm().policy(ident.policy).get("digest") != ident.policy_digest

    # the aggregator's certificate, pinned and checked against revocations (_pin)
    pin = AggregatorPin(opts.aggregator, service, lambda: ident.creds, ident.revoked)
    return Collaborator(
        task, data, pin.connect,
        ModelGate(key, ident.policy_digest, floor=floor), renew=ident.renew, stale=pin.stale,
        patience=opts.patience or config.join_patience, policy_changed=policy_changed,
    )  # fmt: skip


def run_collaborator(opts: CollaboratorOptions) -> list[dict[str, Any]]:
    """Join, train when sampled, until the federation is done (Ctrl-C: one line)."""
    with interrupt_once():
        collaborator = build_collaborator(opts)
        try:
            return collaborator.run()
        except KeyboardInterrupt:
            log.warning("stopped: start the collaborator again with the same command to rejoin")
            raise
