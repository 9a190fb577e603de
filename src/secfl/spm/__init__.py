"""The Security Policy Manager (SPM): board-approved policies, attestation-gated
secrets, monotonic counters and a hash-chained audit log.

Where things are:

- The decisions: :mod:`~secfl.spm._service` (:class:`Spm`), assembled from
  :mod:`~secfl.spm._policy_cache` (policy versions, revocations),
  :mod:`~secfl.spm._attestation` (workload attestation and release),
  :mod:`~secfl.spm._sessions` (session tokens, checked at each use) and
  :mod:`~secfl.spm._vault` (secret values at rest, under :mod:`~secfl.spm._masterkey`,
  recoverable by the board: :mod:`~secfl.spm._recovery`).
- Over HTTPS: :mod:`~secfl.spm._app` (routes) with :mod:`~secfl.spm._api_models`
  (bodies) and :mod:`~secfl.spm._apierrors` (refusals); :mod:`~secfl.spm._server`
  assembles the SPM from its data folder and serves it behind
  :mod:`~secfl._internal.httpguard`.
- Durable state: :mod:`~secfl.spm._store` (SQLite or PostgreSQL, through the engine of
  :mod:`~secfl.spm._engine`), one transaction and its operations in
  :mod:`~secfl.spm._tx`, the audit chain in
  :mod:`~secfl.spm._audit`, and the database treated as untrusted storage by
  :mod:`~secfl.spm._integrity` and :mod:`~secfl.spm._state`.
- The other side: :mod:`~secfl.spm.client` (a pinned client; its connection in
  :mod:`~secfl.spm._client_transport`, the certificate fetch in
  :mod:`~secfl.spm._client_tls`, the checks of the SPM's claims in
  :mod:`~secfl.spm._client_identity`) and :mod:`~secfl.spm.enroll` (a workload
  attests and opens its release).

The API is in those modules; the package itself exports nothing.
"""

__all__: list[str] = []
