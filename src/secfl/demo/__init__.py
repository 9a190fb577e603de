"""Demonstrations: :mod:`.federation` (``secfl demo``, a whole confidential federation
on one machine) and :mod:`.attestation` (``secfl attest demo``, the trust core on
real vendor evidence)."""
