"""The Security Policy Manager (SPM): board-approved policies, attestation-gated
secrets, monotonic counters and a hash-chained audit log.

Where things are:

- The decisions: :mod:`~secfl.spm.service` (:class:`Spm`), assembled from
  :mod:`~secfl.spm.policy_cache` (policy versions, revocations),
  :mod:`~secfl.spm.attestation` (workload attestation and release),
  :mod:`~secfl.spm.sessions` (session tokens, checked at each use) and
  :mod:`~secfl.spm.vault` (secret values at rest, under :mod:`~secfl.spm.masterkey`,
  recoverable by the board: :mod:`~secfl.spm.recovery`).
- Over HTTPS: :mod:`~secfl.spm.app` (routes) with :mod:`~secfl.spm.api_models`
  (bodies) and :mod:`~secfl.spm.apierrors` (refusals); :mod:`~secfl.spm.server`
  assembles the SPM from its data folder and serves it behind
  :mod:`~secfl.spm.httpguard`.
- Durable state: :mod:`~secfl.spm.store` (SQLite or PostgreSQL), one transaction
  and its operations in :mod:`~secfl.spm.tx`, the audit chain in
  :mod:`~secfl.spm.audit`, and the database treated as untrusted storage by
  :mod:`~secfl.spm.integrity` and :mod:`~secfl.spm.state`.
- The other side: :mod:`~secfl.spm.client` (a pinned client) and
  :mod:`~secfl.spm.enroll` (a workload attests and opens its release).

The API is in those modules; the package itself exports nothing.
"""

__all__: list[str] = []
