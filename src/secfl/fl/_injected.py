"""The files a policy injects into FL services (relative to ``$SECFL_FILES``).

Their own module: the policy's checks (``secfl policy validate``) and its template
name them without importing the runtime that reads them (gRPC, the SPM client)."""

from __future__ import annotations

__all__ = ["CHECKPOINT_KEY", "OUTPUT_KEY", "SIGNING_KEY", "VERIFY_KEY"]

SIGNING_KEY = "fl/signing-key.pem"  # aggregator: the model-signing private key
VERIFY_KEY = "fl/signing-key.pub"  # collaborators: its public key
CHECKPOINT_KEY = "fl/checkpoint.key"  # aggregator: hex AES-256 key for checkpoints
OUTPUT_KEY = "fl/output.key"  # aggregator (optional): hex key sealing the final model
