"""The two FL workloads as library calls: :func:`run_aggregator` and
:func:`run_collaborator` (``secfl aggregator`` / ``secfl collaborator`` call them).

In secure mode (the default) each must run under ``secfl run``: it takes its
identity, the policy (checked against the attested digest) and its secrets from
there, its task and data only from sources attestation covers (volumes, built-in
tasks: :func:`~secfl.fl._inputs.require_measured`), serves or dials mutual TLS
with SPM-issued certificates, refreshes revocations and renews its certificate by
attesting again. ``insecure=True`` drops all of that (plaintext, no SPM, unsigned
models) to measure the overhead.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from secfl._internal import files
from secfl._internal.files import atomic_write
from secfl._internal.interrupts import interrupt_once
from secfl.errors import FlError, SecflError, SpmError, SpmRefused
from secfl.fl._aggregator import Aggregator, Signer
from secfl.fl._commit import Commit, MemoryLedger, SpmLedger, new_version
from secfl.fl._config import FederationConfig
from secfl.fl._final_model import write_output
from secfl.fl._host_settings import check_host_paths
from secfl.fl._inputs import data_path, load_task, require_measured
from secfl.fl._progress import round_event
from secfl.fl._reset import ApprovedReset, pending_reset
from secfl.fl._runs import run_label
from secfl.fl._transport import INSECURE_WARNING, PeerPolicy, Server
from secfl.fl._untrusted import read_settings
from secfl.fl._workload_identity import (
    CHECKPOINT_KEY,
    OUTPUT_KEY,
    SIGNING_KEY,
    WorkloadIdentity,
    load_hex_key,
    load_private_key,
)
from secfl.fl.strategies._base import Params
from secfl.policy._model import Policy
from secfl.tasks._base import Dataset, Task
from secfl.tasks._contract import call_task, sample_count, show_task_errors

__all__ = [
    "INSECURE",
    "RESET_FILE",
    "AggregatorOptions",
    "build_aggregator",
    "load_data_spec",
    "read_settings",
    "role_services",
    "run_aggregator",
    "write_output",
]

log = logging.getLogger("secfl.fl")
INSECURE = "insecure"
#: A board-approved reset placed in the checkpoint folder by the operator is used
#: without changing the aggregator's command line (which its measurement covers).
RESET_FILE = "reset.json"


@dataclass
class AggregatorOptions:
    task: str
    validation: str | None = None
    test: str | None = None
    listen: str = "0.0.0.0:7443"
    checkpoints: Path | None = Path("checkpoints")
    metrics: Path | None = None
    output: Path | None = None
    insecure: bool = False
    #: --insecure only: a file with the federation settings (or a policy holding them).
    federation: Path | None = None
    signing_key: str | None = None
    checkpoint_key: str | None = None
    output_key: str | None = None
    ready_file: Path | None = None
    #: A board-approved reset (``secfl fl reset``'s statement and signatures).
    reset: Path | None = None


def load_data_spec(task: Task, spec: str | None, exclude: AbstractSet[str] = frozenset()) -> Any:
    """The task's ``load_data`` of the data ``spec`` names; it must have samples (len)."""
    data = call_task("load_data", task.load_data, data_path(spec, exclude=exclude))
    sample_count(data, "load_data")
    return data


def _write_ready(path: Path | None, doc: dict[str, Any]) -> None:
    """Tell whoever waits for the aggregator its port: whole or not at all (no fsync:
    the file means nothing after a reboot)."""
    if path is None:
        return
    try:
        atomic_write(path, json.dumps(doc).encode(), fsync=False)
    except OSError as exc:
        raise FlError(f"ready file: cannot write {path}: {exc.strerror or exc}") from None


# --- aggregator ----------------------------------------------------------------------------


def role_services(policy: Policy, *roles: str) -> set[str]:
    return {s.name for s in policy.services if s.role in roles}


def build_aggregator(opts: AggregatorOptions) -> tuple[Aggregator, WorkloadIdentity | None]:
    """An aggregator ready to :meth:`~Aggregator.start` (secure unless ``insecure``),
    with the workload's identity (``None`` with --insecure)."""
    show_task_errors(opts.insecure)  # secure: the host reads the log (secfl.tasks._contract)
    check_host_paths(opts.output, None if opts.insecure else opts.checkpoints, opts.metrics)
    if opts.insecure:
        log.warning(INSECURE_WARNING)
        config = FederationConfig.parse(read_settings(opts.federation) if opts.federation else {})
        task, validation, test = _aggregator_sources(opts)
        server = Server(None, PeerPolicy(policy=INSECURE, services=set()), workers=128)
        signer = Signer(INSECURE, ed25519.Ed25519PrivateKey.generate())
        commit = Commit(MemoryLedger(), directory=None, key=None, policy_digest=INSECURE)
        agg = Aggregator(task, config, server, signer, commit, validation, test, opts.metrics)
        return agg, None
    if opts.federation:
        raise FlError("federation: in secure mode the settings come from the policy")
    require_measured("--task", opts.task, code=True)
    require_measured("--validation", opts.validation, code=False)
    require_measured("--test", opts.test, code=False)
    ident = WorkloadIdentity.from_env()
    task, validation, test = _aggregator_sources(opts)
    policy = ident.policy_document()
    config = FederationConfig.parse(policy.federation)
    me = policy.service(ident.service)
    if me is None or me.role != "aggregator":
        # (role any: the SPM refuses its rounds and findings, so it would stop at its
        # first commit, a round trained for nothing: found by a hostile review)
        raise FlError(f"policy: service '{ident.service}' is not an aggregator (its role is "
                      f"{'none' if me is None else repr(me.role)}, not 'aggregator')")  # fmt: skip
    _warn_output(ident, opts)
    peers = PeerPolicy(
        policy=ident.policy, services=role_services(policy, "collaborator", "any") - {ident.service}
    )
    sent = time.monotonic()  # a list is as old as its request (see PeerPolicy.apply_list)
    sequence, revoked = ident.revocation_list()
    peers.apply_list(revoked, sent, sequence)
    # a thread for every call each collaborator may have under way (a long poll among them)
    server = Server(ident.creds, peers)
    key = load_private_key(ident.secret_file(SIGNING_KEY, opts.signing_key))
    ckpt_key = load_hex_key(ident.secret_file(CHECKPOINT_KEY, opts.checkpoint_key))
    ledger = SpmLedger(ident.spm, ident.policy, config.counter, ident.token)
    commit = Commit(
        ledger, directory=opts.checkpoints, key=ckpt_key, policy_digest=ident.policy_digest,
        keep=config.checkpoint_keep,
    )  # fmt: skip
    reset = _pending_reset(opts, policy, ident.policy_digest, config.counter, ledger)

    def reread() -> None:
        sent = time.monotonic()  # the list of the higher sequence wins, whichever ends last
        sequence, revoked = ident.revocation_list()
        peers.apply_list(revoked, sent, sequence)

    def renew() -> None:
        """Attest again when due (never under a version that replaced this one's)."""
        if ident.due():
            _check_current(ident)
            if ident.renew():
                server.rotate(ident.creds)

    def refresh() -> None:
        """At a round attempt's start. An SPM that does not answer now stops nothing:
        the reading thread tries again every 10 s, and a list it cannot read for
        STALE_SECONDS refuses every peer meanwhile (fail closed). A run that stopped
        here stopped for a blip of the SPM, or of the host's network (found by a
        review). A new policy version, or an SPM that refuses, still stops the run."""
        try:
            _check_current(ident)
            renew()
        except SpmError as exc:
            _unanswered(exc)
        try:
            reread()
        except SpmError as exc:
            _unanswered(exc)

    def watch() -> None:  # in a round, or waiting for one
        try:
            reread()
        except Exception:
            # a failed read does not skip a renewal that is due (a 60 s certificate expired
            # after two, found by a hostile review); the read's error is the one raised
            # (and logged): it is what makes the list stale, and a failed renewal said
            # after it would hide it
            try:
                renew()
            except Exception as exc:
                log.warning("could not renew the aggregator's certificate either: %s", exc)
            raise
        renew()

    def report(finding: dict[str, Any]) -> None:
        """The audit's exclusions go to the SPM's audit log, where the board sees them."""
        event = "audit.revocation-requested" if config.request_revocation else "audit.excluded"
        try:
            ident.with_session(
                lambda token: ident.spm().report(ident.policy, event, finding, token)
            )
        except SecflError as exc:  # the round goes on; the metrics file has it too
            log.warning("could not report the audit's finding to the SPM: %s", exc)

    # each committed round goes to the SPM's audit log too (`secfl status` shows it),
    # in the request that moves its counter
    event = functools.partial(
        round_event, metric=config.objective.metric, mode=config.objective.mode,
        run=config.run, policy_version=policy.version,
    )  # fmt: skip
    agg = Aggregator(task, config, server, Signer(ident.policy_digest, key), commit,
                     validation, test, opts.metrics, refresh=refresh, reread=watch,
                     round_event=event, on_exclusion=report, reset=reset,
                     run_label=run_label(config.run, policy.version, ident.policy_digest),
                     policy_version=policy.version,
                     )  # fmt: skip
    return agg, ident


def _pending_reset(
    opts: AggregatorOptions, policy: Policy, policy_digest: str, counter: str, ledger: SpmLedger
) -> ApprovedReset | None:
    """The board's reset in ``--reset`` or the checkpoint folder, if it applies now (a
    used one is set aside: :func:`secfl.fl._reset.pending_reset`)."""
    path = opts.reset or (opts.checkpoints / RESET_FILE if opts.checkpoints else None)
    if path is None:
        return None
    try:
        if not path.exists():
            return None
    except OSError:  # a link the host planted: pending_reset refuses it in one line
        pass
    reset = pending_reset(path, policy, policy_digest, counter, ledger.current())
    if reset is not None:
        log.warning("the board approved a reset at counter %d (%s)", reset.value, path)
    return reset


def _unanswered(exc: SpmError) -> None:
    """Log an SPM that did not answer at a round's start (unreachable, its answer lost
    or malformed, or a server error); raise ``exc`` again if the SPM refused."""
    if isinstance(exc, SpmRefused) and exc.status < 500:
        raise exc
    log.warning(
        "could not refresh from the SPM at a round's start (%s): going on, the reading "
        "thread tries again", exc,
    )  # fmt: skip


def _check_current(ident: WorkloadIdentity) -> None:
    """Stop between rounds once the board approved a new policy version: it is a new
    run, which the aggregator started again under it begins (no reset needed)."""
    current = ident.spm().policy(ident.policy).get("digest")
    if current != ident.policy_digest:
        raise new_version(ident.policy)


def _warn_output(ident: WorkloadIdentity, opts: AggregatorOptions) -> None:
    """Say at start, not after the last round, when nobody will be able to open the
    final model, or when it will not be written out."""
    from secfl.fl._policy_check import OUTPUT_KEY_WARNING

    if ident.secret_file(OUTPUT_KEY, opts.output_key, required=False) is None:
        log.warning(OUTPUT_KEY_WARNING.format(service=ident.service, file=OUTPUT_KEY))
    elif opts.output is None:
        log.warning(
            "output: no output folder (SECFL_OUTPUT or --output): the final model will not "
            "be written out, only kept in the sealed checkpoints in %s",
            opts.checkpoints,
        )
    else:
        log.info("output: the final model will be sealed to the output key in %s", opts.output)


def _aggregator_sources(opts: AggregatorOptions) -> tuple[Task, Dataset | None, Dataset | None]:
    """The task, validation and test data an aggregator's options name."""
    task = load_task(opts.task)
    validation = load_data_spec(task, opts.validation) if opts.validation else None
    test = load_data_spec(task, opts.test) if opts.test else None
    return task, validation, test


def run_aggregator(opts: AggregatorOptions) -> Params:
    """Build, listen, train every round, write the output; returns the final model.

    Ctrl-C (SIGINT) stops it between two instructions: the rounds already sealed
    stay sealed, and one line says which round a restart resumes with."""
    with interrupt_once():
        try:
            agg, ident = build_aggregator(opts)
        except KeyboardInterrupt:
            log.warning("stopped before training began: start the aggregator again")
            raise
        if ident is not None and ident.files is not None:
            # the host's paths were checked; a link it swaps in later is refused where
            # each write lands (this process's writes, from now on)
            files.keep_out(ident.files)
            # no other process of this workload reads the session token (a Flower
            # ServerApp does): a renewal keeps it in memory, writing nothing in there
            ident.folder = None
        try:
            port = agg.start(opts.listen)
            log.info("listening on port %d", port)
            _write_ready(opts.ready_file, {"port": port, "pid": os.getpid()})
            params = agg.run()
            if opts.output is not None:
                try:
                    write_output(agg, opts, params, ident)
                except OSError as exc:  # checked at start, but the host may change it since
                    raise FlError(
                        f"output: cannot write the final model to {opts.output} (SECFL_OUTPUT "
                        f"or --output): {exc.strerror or exc}; give a folder this workload "
                        "may write"
                    ) from None
        except KeyboardInterrupt:
            log.warning("stopped: %s", agg.resume_hint())
            raise
        finally:
            agg.stop(grace=2.0)  # reading the revocation list too, not before
        return params
