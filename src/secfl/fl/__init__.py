"""The federated runtime: the aggregator and collaborator workloads ``secfl run`` starts.

Starting a workload:

- :mod:`secfl.fl.startup` — assemble and run the aggregator or a collaborator
  (``secfl aggregator`` / ``secfl collaborator``), secure unless ``--insecure``;
- :mod:`secfl.fl.workload_identity` — what an attested workload holds (certificate,
  policy, secrets) and how it keeps it fresh (renewal, revocations);
- :mod:`secfl.fl.inputs` — where task code and data come from (measured volumes,
  built-in tasks);
- :mod:`secfl.fl.config` — the policy's ``federation`` settings, typed and checked.

Training:

- :mod:`secfl.fl.aggregator` — the aggregator's round loop;
- :mod:`secfl.fl.rounds` — the aggregator's side of the wire: joins, liveness, one
  round attempt at a time;
- :mod:`secfl.fl.collaborator` — the collaborator's loop (local training);
- :mod:`secfl.fl.strategies` — the aggregation rules (FedAvg, FedProx, FedAdam, the
  robust rules, the clone-and-sample audit) and their registry;
- :mod:`secfl.fl.strategy_wiring` — what some rules need from the aggregator's
  validation data.

Models on the wire and on disk:

- :mod:`secfl.fl.tensors` — models and updates as safetensors bytes (never pickle),
  checks against the model, NaN/Inf refusal, chunked streaming with size limits;
- :mod:`secfl.fl.envelope` — signed global models bound to policy, round and SPM
  counter (freshness);
- :mod:`secfl.fl.checkpoint` — sealed checkpoints bound to the SPM counter (rollback);
- :mod:`secfl.fl.commit` — each round made durable (checkpoint) and fresh (counter);
- :mod:`secfl.fl.reset` — a board-approved reset of the freshness check.

Between the workloads:

- :mod:`secfl.fl.transport` — gRPC over mutual TLS with SPM-issued certificates;
- :mod:`secfl.fl.messages` — the framed messages (a JSON header and a payload);
- :mod:`secfl.fl.untrusted` — bounded parsing of JSON and YAML that crossed a trust
  boundary.

Import the submodules; this package imports nothing heavy (torch is only loaded by
the functions that move tensors in and out of a ``torch.nn.Module``). The research
harness (:mod:`secfl.eval`) builds on this package; this package never imports it.
"""
