"""A secure aggregator built by :func:`secfl.fl._startup.build_aggregator` whose SPM is a
fake in this process: its hooks (``refresh`` on the round path, ``reread`` in the
reading thread) are the real ones, and each SPM answer is the test's to stage (a slow
read, a failed one, a renewal under a new version)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from secfl.fl import _startup
from secfl.fl._aggregator import Aggregator
from secfl.fl._injected import CHECKPOINT_KEY, SIGNING_KEY
from secfl.fl._startup import AggregatorOptions, build_aggregator
from secfl.fl._workload_identity import WorkloadIdentity
from secfl.policy import load_policy
from secfl.policy._canonical import digest
from tests.policy import policy_dict, to_yaml

from .fedkit import ca, identity

Rows = list[dict[str, Any]]


class FakeSpm:
    """The SPM's answers: the policy's digest and its revocation list (each read calls
    ``revocations_of`` with the read's number, from 1 after the aggregator is built; it
    returns the rows, numbered as the read, or a list's sequence number and rows)."""

    def __init__(self, policy_digest: str) -> None:
        self.digest = policy_digest
        self.reads = 0
        self.revocations_of: Callable[[int], Rows | tuple[int, Rows]] = lambda n: []

    def policy(self, name: str) -> dict[str, Any]:
        return {"digest": self.digest}

    def revocation_list(self, policy: str) -> tuple[int, Rows]:
        self.reads += 1
        n = self.reads
        answer = self.revocations_of(n)
        return answer if isinstance(answer, tuple) else (n, answer)

    def revocations(self, policy: str) -> Rows:
        return self.revocation_list(policy)[1]


def secure_aggregator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, role: str = "aggregator"
) -> tuple[Aggregator, WorkloadIdentity, FakeSpm]:
    """An aggregator as ``secfl run`` would start it (not started), its identity and
    its fake SPM; ``role``: its service's in the policy."""
    doc = policy_dict()
    doc["federation"] = {"rounds": 3, "counter": "round"}
    doc["services"] = [dict(s, role=role) if s["name"] == "agg" else s for s in doc["services"]]
    text = to_yaml(doc)
    policy = load_policy(text)
    files = tmp_path / "files"
    (files / "fl").mkdir(parents=True)
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    (files / SIGNING_KEY).write_bytes(key)
    (files / CHECKPOINT_KEY).write_text("00" * 32)
    ident = WorkloadIdentity(
        policy=policy.name, service="agg", spm_url="https://127.0.0.1:1", spm_pin="00",
        policy_digest=digest(policy), platform="simulated", sim_dir=None, measurement=None,
        creds=identity(ca(policy.name), "agg", policy=policy.name),
        session_token="token-1", files=files,
    )  # fmt: skip
    spm = FakeSpm(ident.policy_digest)
    ident._spm = spm  # type: ignore[assignment]
    ident.policy_document = lambda: policy  # type: ignore[method-assign]
    monkeypatch.setattr(_startup.WorkloadIdentity, "from_env", classmethod(lambda cls: ident))
    opts = AggregatorOptions(task="digits", checkpoints=None)
    agg, built = build_aggregator(opts)
    assert built is ident
    spm.reads = 0  # the read at start is not counted
    return agg, ident, spm
