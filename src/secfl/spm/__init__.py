"""The Security Policy Manager (SPM): board-approved policies, attestation-gated
secrets, monotonic counters and a hash-chained audit log.

Durable state lives in :mod:`secfl.spm.store` (SQLite or PostgreSQL), the audit
chain in :mod:`secfl.spm.audit`, and the master key that encrypts secrets at rest
(with its recovery by the board) in :mod:`secfl.spm.masterkey`.
"""
