"""The demo's policy: a board of three approving 2 of 3, an aggregator and one
collaborator per site, each party's key sealed to the SPM for this board only.

:func:`demo_policy` writes the document from what the demo set up (the board's
keys, the volumes' keys and tags, the workloads' measurements); the federation
signs and submits it (:meth:`secfl.demo.federation.Federation.submit_policy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from secfl.policy import _keys as keys

if TYPE_CHECKING:
    from secfl.demo.federation import DemoSettings

__all__ = ["BOARD", "POLICY", "VERIFY_KEY", "demo_policy"]

POLICY = "demo"
BOARD: tuple[tuple[str, keys.KeyKind], ...] = (
    ("alice", "ed25519"),
    ("bob", "ecdsa-p256"),
    ("carol", "ed25519"),
)
VERIFY_KEY = "$$SECFL::model-signing:pub$$"


def demo_policy(
    s: DemoSettings,
    *,
    members: list[dict[str, str]],
    sites: Sequence[str],
    volume_keys: Mapping[str, bytes],
    tags: Mapping[str, str],
    measurements: Mapping[str, str],
    spm_key: Any,
    simulation_root: str,
) -> dict[str, Any]:
    """The policy document: ``members`` are the board's entries (name, public and
    recovery key), ``volume_keys`` and ``tags`` each shielded volume's key and tag by
    name (``model-output`` has a key only), ``measurements`` the aggregator's and the
    collaborators' by role, ``spm_key`` what the keys are sealed to."""
    from secfl.spm._sealing import board_binding, seal_imported

    imported = [*sites, "validation", "test", "task", "model-output"]
    # Each owner seals its key for this board only (see `secfl policy seal-secret`).
    board = board_binding([m["public_key"] for m in members], 2)
    secrets: list[dict[str, Any]] = [
        {"name": "fl-ca", "kind": "x509-ca", "common_name": "demo federation CA"},
        {"name": "model-signing", "kind": "ed25519"},
        {"name": "checkpoint-key", "kind": "aes-256"},
    ] + [
        {"name": f"{n}-key", "kind": "imported",
         "sealed": seal_imported(volume_keys[n], spm_key, POLICY, f"{n}-key", board)}
        for n in imported
    ]  # fmt: skip
    volumes = [{"name": "task", "key": "task-key", "kind": "code", "tag": tags["task"]}]
    volumes += [
        {"name": n, "key": f"{n}-key", "kind": "data", "tag": tags[n]}
        for n in [*sites, "validation", "test"]
    ]
    train: dict[str, Any] = {"epochs": s.epochs}
    if s.lr is not None:
        train["lr"] = s.lr
    if s.batch_size is not None:
        train["batch_size"] = s.batch_size
    return {
        "name": POLICY,
        "version": 1,
        "board": {"members": members, "threshold": 2},
        "platforms": {
            "accept": ["simulated"],
            "allow_unknown_tcb": True,
            "simulation_root": simulation_root,
        },
        "identity_ca": "fl-ca",
        "services": [
            {
                "name": "aggregator",
                "role": "aggregator",
                "measurements": {"simulated": [measurements["aggregator"]]},
                "volumes": ["task", "validation", "test"],
                "inject": {
                    "files": {
                        "/fl/signing-key.pem": "$$SECFL::model-signing:key$$",
                        "/fl/checkpoint.key": "$$SECFL::checkpoint-key:hex$$",
                        "/fl/output.key": "$$SECFL::model-output-key:hex$$",
                    }
                },
                "counters": ["rounds"],
                "certificate_ttl": s.certificate_ttl,
            },
            *[
                {
                    "name": site,
                    "role": "collaborator",
                    "measurements": {"simulated": [measurements["collaborator"]]},
                    "volumes": ["task", site],
                    "inject": {"files": {"/fl/signing-key.pub": VERIFY_KEY}},
                    "certificate_ttl": s.certificate_ttl,
                }
                for site in sites
            ],
        ],
        "secrets": secrets,
        "volumes": volumes,
        "counters": [{"name": "rounds"}],
        "federation": {
            "rounds": s.rounds,
            "min_clients": len(sites),
            "strategy": s.defence,
            "strategy_settings": s.defence_settings,
            "train": train,
            "seed": s.seed,
            "round_timeout": s.round_timeout,
            "counter": "rounds",
            "objective": _objective(s.task),
            **s.overrides,
        },
    }


def _objective(task: str) -> dict[str, str]:
    """The demo policy's objective: a classifier's validation accuracy (higher is
    better), a regression's loss (its standardised mean squared error: lower is better)."""
    from secfl.tasks._registry import get_task

    if get_task(task).target == "class":
        return {"metric": "accuracy", "mode": "max"}
    return {"metric": "loss", "mode": "min"}
