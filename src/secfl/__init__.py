"""secfl: confidential federated learning inside attested TEEs.

The public API is small: :mod:`secfl.tee` (evidence, claims, verification,
platforms, measurement) and :mod:`secfl.errors`. Everything under
``secfl._internal`` may change without notice.
"""

__version__ = "0.1.0"
