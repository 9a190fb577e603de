"""secfl: confidential federated learning inside attested TEEs.

The public API is what these modules export (each lists it in ``__all__``):

- :mod:`secfl.tee`: produce and verify attestation evidence (``verify``,
  ``Evidence``, ``Claims``, platforms, measurement, vendor collateral);
- :mod:`secfl.policy`: the policy document, its canonical digest, board keys and
  signatures;
- :mod:`secfl.shield`: shielded volumes (encrypt a folder, open and stream one,
  import code from one);
- :mod:`secfl.spm.client` (``SpmClient``) and :mod:`secfl.spm.enroll`
  (``enroll()``): talk to a Security Policy Manager, attest and receive secrets;
- :mod:`secfl.launcher`: ``secfl run`` as a library (``prepare``, ``execute``) and
  ``volumes``, the open volumes of a workload run with ``--module``;
- :mod:`secfl.fl.strategies`: aggregation rules and their registry
  (``get_strategy``, ``register_strategy``);
- :mod:`secfl.tasks`: the task contract (``Task``, ``ClassificationTask``), the
  built-in tasks and their shards;
- :mod:`secfl.errors`: every error secfl raises on purpose.

Everything else (the command line, the SPM server, the federated runtime's
internals, the evaluation harness, the demonstrations, ``secfl._internal``) is
internal and may change without notice.
"""

__version__ = "0.1.0"
