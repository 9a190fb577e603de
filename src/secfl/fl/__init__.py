"""The federated runtime (DESIGN.md component 6).

Building blocks that need no network:

- :mod:`secfl.fl.tensors` — models and updates as safetensors bytes (never pickle),
  checks against the model, NaN/Inf refusal, chunked streaming with size limits;
- :mod:`secfl.fl.strategies` — the strategy interface and FedAvg, FedProx, FedAdam;
- :mod:`secfl.fl.envelope` — signed global models bound to policy, round and SPM
  counter (freshness);
- :mod:`secfl.fl.checkpoint` — sealed checkpoints bound to the SPM counter (rollback).

Import the submodules; this package imports nothing heavy (torch is only loaded by
the functions that move tensors in and out of a ``torch.nn.Module``).
"""
