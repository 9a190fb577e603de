"""Secret values at rest: per-policy data keys, sealed values, and their caches.

Each policy's secrets are encrypted under its own data key (AES-256-GCM, bound to
policy and secret name). The data key is wrapped by the SPM's master key and split
(Shamir, the board's threshold, and a part for each required member) to the board
members' recovery keys, so the board can rebuild the data key without ever seeing the
master key (:mod:`secfl.spm._recovery`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec

from secfl.errors import IntegrityError, SpmError
from secfl.policy._model import Policy
from secfl.policy._secrets import CertSecret
from secfl.spm import _sealing as sv
from secfl.spm._masterkey import (
    MasterKey,
    new_policy_key,
    open_secret,
    seal_secret,
    unwrap_policy_key,
    wrap_policy_key,
)
from secfl.spm._recovery import seal_shares, shares_sha256
from secfl.spm._store import SecretRecord
from secfl.spm._tx import Tx

__all__ = ["VALUE_TTL", "SecretVault"]

#: Seconds a process may serve a decrypted secret value before re-reading it.
VALUE_TTL = 1.0


class SecretVault:
    """The SPM's secrets: generated, imported, sealed at rest, opened for release."""

    def __init__(self, master: MasterKey, identity_key: ec.EllipticCurvePrivateKey) -> None:
        self.master = master
        self.identity_key = identity_key
        self._values: dict[tuple[str, str], tuple[float, sv.Value, str]] = {}
        self._keys: dict[str, tuple[bytes, bytes]] = {}

    def provision(
        self, tx: Tx, policy: Policy, now: datetime, previous: Policy | None = None
    ) -> None:
        """Create the policy's data key, counters and secret values (new or redefined).

        When ``policy`` changes the board (members, keys, recovery keys or threshold)
        from ``previous``, the data key is replaced and every secret re-encrypted under
        the new one, split to the new board only: shares that old members kept open
        nothing stored from then on."""
        wrapped = tx.data_keys.get(policy.name)
        if wrapped is None and previous is not None:
            raise IntegrityError(
                f"rollback: the data key of policy '{policy.name}' is missing from the "
                "database, though version "
                f"{previous.version} was accepted with it: the database was altered"
            )
        if wrapped is None:
            key = new_policy_key()
            self._put_key(tx, policy, key)
        else:
            key = unwrap_policy_key(self.master, policy.name, wrapped)
            if previous is not None and _board_state(previous) != _board_state(policy):
                old, key = key, new_policy_key()
                for record in tx.secrets.of_policy(policy.name):
                    plain = open_secret(old, policy.name, record.name, record.ciphertext)
                    blob = seal_secret(key, policy.name, record.name, plain)
                    tx.secrets.put(replace(record, ciphertext=blob), "board changed")
                self._put_key(tx, policy, key)
                self._values = {k: v for k, v in self._values.items() if k[0] != policy.name}
        # an imported secret opens only for a version approved by the board its owner
        # sealed it for: the board that signed this version (the previous version's),
        # not the one it names. Else whoever registered the name first could name the
        # owner's board in a version only their own board signed, import the owner's
        # sealed value there and inject it into their workload (found by a review).
        board = sv.board_binding_of(previous.board if previous is not None else policy.board)
        for counter in policy.counters:
            tx.counters.create(policy.name, counter.name)
        values: dict[str, sv.Value] = {}
        ordered = sorted(policy.secrets, key=lambda s: s.kind != "x509-ca")  # CAs first
        kept = {s.name: sv.definition_digest(s) for s in previous.secrets} if previous else {}
        for secret in ordered:
            definition = sv.definition_digest(secret)
            stored = tx.secrets.get(policy.name, secret.name)
            self._check_kept(tx, policy.name, secret.name, stored, kept.get(secret.name))
            if stored is not None and stored.definition_digest == definition:
                if secret.kind == "imported" and secret.name not in kept:
                    # named again after a version withdrew it: its row is the value an
                    # earlier board took in, so it must still open for this one, else a
                    # board its owner never sealed it for takes it up (found by a review)
                    sv.open_imported(
                        secret.sealed, self.identity_key, policy.name, secret.name, board
                    )
                value = self.open_value(key, policy.name, stored)
                if not _signed_by_another(secret, value, values):
                    values[secret.name] = value
                    continue
                reason = "reissued"  # its CA was made anew: what it signed is made anew
            else:
                reason = "new" if stored is None else "redefined"
            if secret.kind == "imported":
                value = sv.open_imported(
                    secret.sealed, self.identity_key, policy.name, secret.name, board
                )
            else:
                value = sv.generate(secret, values, now)
            values[secret.name] = value
            self.store_value(
                tx, key, policy.name, secret.name, secret.kind, definition, value, reason
            )

    def _check_kept(
        self, tx: Tx, policy: str, name: str, stored: SecretRecord | None, kept: str | None
    ) -> None:
        """Refuse a secret's row that is not as the SPM left it: missing though the
        previous version (``kept``: its definition there) or any earlier store had it (a
        new CA or model key made in its place would quietly orphan every certificate
        issued and everything sealed), or made for another definition than the previous
        version's (a row of an earlier version put back, to be taken up again if the
        board returns to that definition)."""
        floors = tx.floors
        if stored is None:
            if kept is not None or (floors is not None and floors.stored_secret(policy, name)):
                self.open_value(b"", policy, None, name)
            return
        if kept is not None and stored.definition_digest != kept:
            raise IntegrityError(
                f"rollback: the stored value of secret '{name}' of policy '{policy}' was made "
                "for another definition than the previous version's: the database was "
                "rolled back"
            )

    def open_value(
        self, key: bytes, policy: str, record: SecretRecord | None, name: str = ""
    ) -> sv.Value:
        """The value sealed in ``record``. Every secret of an accepted version was stored in
        the commit that accepted it, so a missing record, or one that does not open under
        the policy's data key (a row from before the board changed), is the database's
        doing: :class:`IntegrityError`, never a new value in its place."""
        if record is None:
            raise IntegrityError(
                f"rollback: secret '{name}' of policy '{policy}' is missing from the database, "
                "though it was stored when the policy was accepted: the database was altered"
            )
        try:
            return json.loads(open_secret(key, policy, record.name, record.ciphertext))
        except SpmError:
            raise IntegrityError(
                f"rollback: secret '{record.name}' of policy '{policy}' does not open under the "
                "policy's data key: the database was rolled back or altered"
            ) from None

    def _put_key(self, tx: Tx, policy: Policy, key: bytes) -> None:
        """Store ``key`` wrapped by the master key and split to the board's recovery keys."""
        recovery = {m.name: m.recovery_key.encode() for m in policy.board.members if m.recovery_key}
        if recovery and len(recovery) < policy.board.threshold:
            raise SpmError(
                f"recovery: only {len(recovery)} board member(s) gave a recovery key but the "
                f"threshold is {policy.board.threshold}: recovery would need fewer members "
                "than the board; give every member a recovery key, or none"
            )
        board = policy.board
        shares = (
            seal_shares(key, policy.name, recovery, board.threshold, board.required)
            if recovery
            else "{}"
        )
        wrapped = wrap_policy_key(self.master, policy.name, key)
        tx.data_keys.put(policy.name, wrapped, shares)
        # Chained into the log: a data key restored to an older one is a rollback.
        digest = hashlib.sha256(wrapped).hexdigest()
        tx.note(("datakey", policy.name, digest))
        # and so is the split: recovery checks the shares document against this entry
        # (the database, where it is stored, lies outside the TEE)
        detail = {"sha256": digest}
        if recovery:
            detail["shares_sha256"] = shares_sha256(shares)
        tx.audit.append("policy.data-key", policy.name, detail)

    def policy_key(self, tx: Tx, policy: str) -> bytes:
        """A policy's data key, unwrapped once per wrapped value (it changes with the board)."""
        wrapped = tx.data_keys.get(policy)
        if wrapped is None:
            raise IntegrityError(
                f"rollback: the data key of policy '{policy}' is missing from the database, "
                "though the policy was accepted with it: the database was altered"
            )
        cached = self._keys.get(policy)
        if cached is not None and cached[0] == wrapped:
            return cached[1]
        key = unwrap_policy_key(self.master, policy, wrapped)
        self._keys[policy] = (wrapped, key)
        return key

    def value(
        self, tx: Tx, key: bytes, policy: str, name: str, definition: str | None = None
    ) -> sv.Value:
        """A secret's value, decrypted at most once per ``VALUE_TTL`` per process.

        ``definition`` (:func:`secfl.spm._sealing.definition_digest` of the current
        policy's secret) refuses a stored value made from another definition: a row
        restored from before the board redefined (rotated) the secret."""
        cached = self._values.get((policy, name))
        fresh = cached is not None and time.monotonic() - cached[0] < VALUE_TTL
        if cached is not None and fresh and definition in (None, cached[2]):
            return cached[1]
        record = tx.secrets.get(policy, name)
        if (
            definition is not None
            and record is not None
            and (record.definition_digest != definition)
        ):
            raise IntegrityError(
                f"rollback: the stored value of secret '{name}' of policy '{policy}' was made "
                "for another definition than the current policy's: the database was rolled back"
            )
        value = self.open_value(key, policy, record, name)
        if record is not None:
            self._values[(policy, name)] = (time.monotonic(), value, record.definition_digest)
        return value

    def store_value(
        self,
        tx: Tx,
        key: bytes,
        policy: str,
        name: str,
        kind: str,
        definition: str,
        value: sv.Value,
        reason: str,
    ) -> None:
        """Seal ``value`` under the policy's data key and store it as secret ``name``
        (``reason``, in the audit log: new, redefined, reissued, renewed)."""
        self._values.pop((policy, name), None)
        blob = seal_secret(key, policy, name, json.dumps(value).encode())
        tx.secrets.put(
            SecretRecord(
                policy=policy,
                name=name,
                kind=kind,
                definition_digest=definition,
                ciphertext=blob,
                created_at=datetime.now(UTC),
            ),
            reason,
        )


def _signed_by_another(secret: object, value: sv.Value, values: dict[str, sv.Value]) -> bool:
    """Whether ``value``, a certificate, was signed by another CA than its issuer's value
    now (the CA was made anew by this version or an earlier one)."""
    if not isinstance(secret, CertSecret):
        return False
    return bool(value.get("chain") != values[secret.issuer]["crt"])


def _board_state(policy: Policy) -> tuple[object, ...]:
    """What the data key's protection depends on: members' keys, recovery keys, threshold,
    required members (each holds a part of the key)."""
    members = sorted((m.name, m.public_key, m.recovery_key or "") for m in policy.board.members)
    return (policy.board.threshold, tuple(members), tuple(sorted(policy.board.required)))
