"""The aggregator's final model, written out after the last round.

:func:`write_output` seals the model and the round metrics as a shield volume,
``model.secfl``, under the policy's output key (plain safetensors with --insecure),
its metadata naming the commit it is (:func:`provenance`), and records the sealed
volume's tag in the SPM's audit log (``fl.model``) from the attested session, so that
a model owner can tell this output from an older one the host kept.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secfl.errors import FlError, SecflError, SpmRefused
from secfl.fl._aggregator import Aggregator
from secfl.fl._tensors import to_bytes
from secfl.fl._workload_identity import OUTPUT_KEY, WorkloadIdentity, load_hex_key
from secfl.fl.strategies._base import Params

if TYPE_CHECKING:
    from secfl.fl._startup import AggregatorOptions

__all__ = ["provenance", "write_output"]

log = logging.getLogger("secfl.fl")


def provenance(agg: Aggregator) -> dict[str, str]:
    """Which commit the final model is: its policy (digest, version), run, round and
    SPM counter, in the model's metadata. A model owner given a stale output (an older
    run's, kept by the host) sees it against the SPM's log (``fl.round`` at that
    counter), which the output's own contents otherwise could not show."""
    named = {
        "rounds": str(agg.config.rounds),
        "run": str(agg.config.run),
        "counter": str(agg.commit.counter),
        "policy_digest": agg.commit.policy_digest,
    }
    if agg.policy_version is not None:
        named["policy_version"] = str(agg.policy_version)
    return named


def write_output(
    agg: Aggregator, opts: AggregatorOptions, params: Params, ident: WorkloadIdentity | None
) -> Path:
    """The final model: plain safetensors with --insecure; otherwise a shield volume
    sealed with the policy's output key (only holders of that key can read it)."""
    assert opts.output is not None
    opts.output.mkdir(parents=True, exist_ok=True)
    # the final model is the last round's; the metadata names the best round by the
    # policy's objective (and its value), for the model owner to choose
    summary = agg.scores.summary()
    data = to_bytes(params, metadata={**provenance(agg), **summary})
    if "best_round" in summary:
        log.info(
            "final model: round %d; best round by %s: %s (%s)", agg.config.rounds,
            summary["objective"], summary["best_round"], summary["best_objective"],
        )  # fmt: skip
    if ident is None:
        path = opts.output / "model.safetensors"
        path.write_bytes(data)
        return path
    key_file = ident.secret_file(OUTPUT_KEY, opts.output_key, required=False)
    if key_file is None:
        log.warning("no output key injected: the final model stays in the sealed checkpoints")
        return opts.checkpoints or opts.output
    from secfl.shield import encrypt_files

    # sealed from memory: a folder staged for it outlived a SIGKILL, with the model in it
    path = opts.output / "model.secfl"
    if path.is_symlink():  # the host's folder: a link there is replaced, never followed
        path.unlink()
    contents = {
        "model.safetensors": data,
        "metrics.json": json.dumps(agg.history, sort_keys=True).encode(),
    }
    tag = encrypt_files(contents, path, load_hex_key(key_file))
    log.info("final model sealed in %s (tag %s)", path, tag)
    _record_model(ident, tag, agg, path)
    return path


def _record_model(ident: WorkloadIdentity, tag: str, agg: Aggregator, path: Path) -> None:
    """The sealed model's tag in the SPM's audit log (``fl.model``, with its run, rounds
    and counter), from this attested session: a model owner checks the file she was
    given against it (`secfl shield decrypt --expect-tag`), so the host cannot pass off
    an older output as this run's."""
    detail: dict[str, Any] = {"tag": tag, "run": agg.config.run, "rounds": agg.config.rounds,
                              "counter": agg.commit.counter}  # fmt: skip
    if agg.policy_version is not None:
        detail["policy_version"] = agg.policy_version
    failure: SecflError | None = None
    for attempt in range(3):
        try:
            ident.with_session(
                lambda token: ident.spm().report(ident.policy, "model", detail, token)
            )
            return
        except SpmRefused as exc:
            if exc.status == 409 and str(exc).startswith("policy: version "):
                # approved as the run ended: no session of this run can record it, and
                # the same command starts the new version's run, not this record
                raise FlError(
                    f"output: the final model of run {agg.config.run} is sealed in {path} "
                    f"(tag {tag}) but the SPM did not record it: the board approved a new "
                    f"version of '{ident.policy}' as the run ended; keep a copy of the file "
                    "if its owner wants it (the next run writes its own model there); "
                    "start the aggregator again with the same command to begin the new "
                    "version's run"
                ) from None
            failure = exc
            time.sleep(0.2 * (attempt + 1))
        except SecflError as exc:
            failure = exc
            time.sleep(0.2 * (attempt + 1))
    # fails closed: without the record the model owner cannot tell this output from an
    # older one the host kept
    raise FlError(
        f"output: the final model is sealed (tag {tag}) but the SPM did not record it: "
        f"{failure}; its owner cannot check it against the SPM (start the aggregator again "
        "to record it)"
    )
