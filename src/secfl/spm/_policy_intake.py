"""The board's policy versions into the SPM's store (``POST /v1/policies``).

A version is accepted only as the next one of its policy (version 1 with no
predecessor, or the current version plus one naming its digest), approved by the
board of the version it follows (the new one's own board for version 1), under the
same identity CA, and with its secrets provisioned (:meth:`SecretVault.provision
<secfl.spm._vault.SecretVault.provision>`) in the same transaction that stores it and
logs ``policy.accepted``. A refusal changes nothing and is logged as
``policy.refused``: one by one once the board's signatures checked out (the board
asked for it), else within the refusal budget (anyone can send a document).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from secfl._internal.values import one_line
from secfl.errors import PolicyError, Refused, SpmError
from secfl.policy._canonical import canonical_bytes, digest
from secfl.policy._document import load_policy
from secfl.policy._model import Policy
from secfl.policy._new_version import check_new_version
from secfl.policy._signatures import POLICY_DOMAIN, Signature, check_approval
from secfl.spm._policy_cache import PolicyCache
from secfl.spm._store import PolicyRecord, Store
from secfl.spm._vault import SecretVault

__all__ = ["PolicyIntake"]


class PolicyIntake:
    """Stores board-approved policy versions; ``audit_refusal(event, policy, detail,
    verified=...)`` logs what it refuses."""

    def __init__(
        self,
        store: Store,
        policies: PolicyCache,
        vault: SecretVault,
        audit_refusal: Callable[..., None],
    ) -> None:
        self.store = store
        self.policies = policies
        self.vault = vault
        self.audit_refusal = audit_refusal

    def submit(self, document: str, signatures: list[dict[str, Any]]) -> PolicyRecord:
        """Accept a new policy or version if its board rule is met and it follows the
        current version; otherwise refuse it, change nothing, and audit the refusal."""
        try:
            policy = load_policy(document)
            check_new_version(policy)
        except PolicyError as exc:
            self.audit_refusal("policy.refused", None, {"reason": one_line(str(exc))})
            raise Refused(str(exc), 400) from None
        policy_digest = digest(policy)
        try:
            sigs = [Signature.model_validate(s) for s in signatures]
        except Exception as exc:
            raise Refused(f"policy: malformed signature ({type(exc).__name__})", 400) from None
        now = datetime.now(UTC)
        approved = False  # refusals before the board's signatures check out cost nothing
        try:
            with self.store.transaction() as tx:
                current = tx.policies.current(policy.name)
                previous: Policy | None = None
                if current is None:
                    if policy.version != 1 or policy.predecessor:
                        raise Refused(
                            f"predecessor: there is no policy '{policy.name}' yet, so this must "
                            "be version 1 with an empty predecessor",
                            409,
                        )
                    board = policy.board
                else:
                    if (
                        policy.predecessor != current.digest
                        or policy.version != current.version + 1
                    ):
                        raise Refused(
                            f"predecessor: the current version of '{policy.name}' is "
                            f"{current.version} with digest {current.digest}; this document is "
                            f"version {policy.version} after {policy.predecessor or '(none)'}; "
                            f"make it version {current.version + 1} with that predecessor "
                            "(`secfl policy next` on the current version's file does)",
                            409,
                        )
                    previous = Policy.model_validate_json(current.document)
                    board = previous.board
                    if policy.identity_ca != previous.identity_ca:
                        raise Refused(
                            f"identity_ca: version {current.version} names "
                            f"'{previous.identity_ca}', this one '{policy.identity_ca}': the "
                            "identity CA cannot change (every peer trusts what it issues, and "
                            "an earlier version may have released another CA's key or "
                            "certificates); to start over with a new CA, submit a policy of "
                            "another name",
                            400,
                        )
                try:
                    approvers = check_approval(
                        board, policy_digest, sigs, domain=POLICY_DOMAIN, now=now
                    )
                except PolicyError as exc:
                    raise Refused(str(exc), 403) from None
                approved = True
                try:
                    self.vault.provision(tx, policy, now, previous)
                except Refused:
                    raise
                except SpmError as exc:
                    raise Refused(str(exc), 400) from None
                except ValueError as exc:  # a value X.509 refuses that no rule foresaw
                    raise Refused(f"secrets: {one_line(str(exc))}", 400) from None
                record = PolicyRecord(
                    name=policy.name,
                    version=policy.version,
                    digest=policy_digest,
                    predecessor=policy.predecessor,
                    document=canonical_bytes(policy).decode(),
                    signatures=json.dumps([s.model_dump(mode="json") for s in sigs]),
                    created_at=now,
                )
                tx.policies.add(record)
                self.policies.forget(policy.name)
                tx.audit.append(
                    "policy.accepted",
                    policy.name,
                    {"version": policy.version, "digest": policy_digest, "approvers": approvers},
                )
        except Refused as exc:
            self.policies.forget(policy.name)
            self.audit_refusal(
                "policy.refused",
                policy.name,
                {"version": policy.version, "digest": policy_digest, "reason": one_line(str(exc))},
                verified=approved,
            )
            raise
        self.policies.forget(policy.name)
        return record
