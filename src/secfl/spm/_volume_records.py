"""Releases of rollback-protected volumes: the newest one recorded, and recording one.

A volume a policy ties to a counter (``counter:`` in its spec) is opened by its
launcher only at a version at least the newest recorded, and a launcher that opened
a newer one records it: the counter moves on, and every older release is refused
from then on. Recording takes a proof under the volume's own key
(:mod:`secfl.spm._volumes`), not only a session token.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from secfl._internal.values import one_line
from secfl.errors import Refused
from secfl.spm import _sealing as sv
from secfl.spm._groupcommit import GroupCommit
from secfl.spm._policy_cache import PolicyCache
from secfl.spm._sessions import SessionGate, current_version, refuse_revoked, refuse_superseded
from secfl.spm._store import Store
from secfl.spm._tx import Tx
from secfl.spm._vault import SecretVault
from secfl.spm._volumes import check_record_proof

__all__ = ["VolumeRecords"]


class VolumeRecords:
    """The recorded releases of the policies' rollback-protected volumes in ``store``."""

    def __init__(
        self,
        store: Store,
        policies: PolicyCache,
        sessions: SessionGate,
        vault: SecretVault,
        group: GroupCommit,
    ) -> None:
        self.store = store
        self.policies = policies
        self.sessions = sessions
        self.vault = vault
        self.group = group

    def state(self, policy_name: str, volume: str) -> dict[str, Any]:
        """The newest recorded release of a counter-protected volume (version 0: none yet)."""
        _, policy = self.policies.get(policy_name)
        spec = policy.volume(volume)
        if spec is None or spec.counter is None:
            raise Refused(f"volume: '{volume}' of '{policy_name}' is not rollback-protected", 404)
        with self.store.read() as tx:
            recorded = tx.volume_tags.get(policy_name, volume)
            counter = tx.counters.get(policy_name, spec.counter)
        version, tag = recorded or (0, "")
        return {"volume": volume, "version": version, "tag": tag, "counter": counter}

    def record(
        self, token: str, policy_name: str, volume: str, version: int, tag: str, proof: str
    ) -> dict[str, Any]:
        """Accept a volume release as current if it is newer than the recorded one
        (the counter moves on); the same release again is fine; an older one, or the
        same version with another tag, is a rollback and refused.

        ``proof`` is :func:`~secfl.spm._volumes.record_proof` under the volume's key: only
        a launcher that received that key (and opened the volume with it) can record a
        release, not whoever holds a session token."""
        session, service = self.sessions.admit(token, policy_name)
        now = datetime.now(UTC)
        _, policy = self.policies.get(policy_name)
        spec = policy.volume(volume)
        if spec is None or spec.counter is None:
            raise Refused(f"volume: '{volume}' of '{policy_name}' is not rollback-protected", 404)
        if volume not in service.volumes:
            raise Refused(f"volume: service '{session.service}' may not open '{volume}'")
        tag = tag.lower()
        counter = spec.counter
        if counter == policy.federation.get("counter") or any(
            counter in s.counters for s in policy.services
        ):  # a version accepted before new versions were refused this (a review)
            raise Refused(
                f"volume: '{volume}' shares its counter '{counter}' with the federation or a "
                "service, which a release of the volume would move: the board gives the "
                "volume a counter of its own in a new version",
                409,
            )
        token_hash = hashlib.sha256(token.encode()).hexdigest()

        def record(tx: Tx) -> dict[str, Any] | Refused:
            refuse_superseded(current_version(tx, policy_name), session.policy_version,
                              policy_name)  # fmt: skip
            refuse_revoked(tx, policy_name, session)
            key = self.vault.policy_key(tx, policy_name)
            secret = policy.secret(spec.key)
            definition = None if secret is None else sv.definition_digest(secret)
            value = self.vault.value(tx, key, policy_name, spec.key, definition)
            raw = base64.b64decode(value.get("raw", ""))
            if not check_record_proof(raw, policy_name, volume, version, tag, token_hash, proof):
                refusal = Refused(
                    f"volume: the record of '{volume}' version {version} is not vouched for by "
                    "the volume's key (only the launcher that opened the volume can record it)"
                )
                detail = {"volume": volume, "version": version, "tag": tag,
                          "reason": one_line(str(refusal)), "service": session.service}  # fmt: skip
                tx.audit.append("volume.refused", policy_name, detail)
                return refusal
            recorded = tx.volume_tags.get(policy_name, volume)
            if recorded is not None:
                old_version, old_tag = recorded
                if version == old_version and tag == old_tag:
                    return {"volume": volume, "version": version, "tag": tag,
                            "counter": tx.counters.get(policy_name, counter)}  # fmt: skip
                if version <= old_version:
                    refusal = Refused(
                        f"rollback: volume '{volume}' version {version} (tag {tag[:16]}…) is "
                        f"not newer than the recorded version {old_version} "
                        f"(tag {old_tag[:16]}…)",
                        409,
                    )
                    what = {"volume": volume, "version": version, "tag": tag}
                    detail = {**what, "reason": one_line(str(refusal)), "service": session.service}
                    tx.audit.append("volume.refused", policy_name, detail)
                    return refusal
            tx.volume_tags.put(policy_name, volume, version, tag, now)
            value_now = int(tx.counters.increment(policy_name, counter))
            tx.audit.append(
                "volume.recorded",
                policy_name,
                {"volume": volume, "version": version, "tag": tag, "counter": value_now,
                 "counter_name": counter, "service": session.service},
            )  # fmt: skip
            return {"volume": volume, "version": version, "tag": tag, "counter": value_now}

        outcome = self.group.run(record)
        if isinstance(outcome, Refused):
            raise outcome
        return outcome
