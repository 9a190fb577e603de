"""The federated runtime: the aggregator and collaborator workloads ``secfl run`` starts.

Starting a workload:

- :mod:`secfl.fl._startup` — assemble and run the aggregator or a collaborator
  (``secfl aggregator`` / ``secfl collaborator``), secure unless ``--insecure``;
- :mod:`secfl.fl._final_model` — the final model sealed to the output key, its tag
  recorded with the SPM;
- :mod:`secfl.fl._workload_identity` — what an attested workload holds (certificate,
  policy, secrets) and how it keeps it fresh (renewal, revocations);
- :mod:`secfl.fl._inputs` — where task code and data come from (measured volumes,
  built-in tasks);
- :mod:`secfl.fl._config` — the policy's ``federation`` settings, typed and checked;
- :mod:`secfl.fl._host_settings` — the host's operational settings (``SECFL_LISTEN``,
  ``SECFL_OUTPUT``...): unmeasured, so bounded and checked like any input.

Writing and checking a federation's policy:

- :mod:`secfl.fl._policy_template` — a whole federation's policy from a few facts
  (``secfl policy init``), with the measurements of the commands it prints;
- :mod:`secfl.fl._policy_check` — what a federation needs of a policy, checked with the
  aggregator's own parser before the board signs it (``secfl policy validate``).

Training:

- :mod:`secfl.fl._aggregator` — the aggregator's round loop;
- :mod:`secfl.fl._scoring` — a round's metrics, the policy's objective and the best
  round;
- :mod:`secfl.fl._rounds` — the aggregator's side of the wire: joins, liveness, one
  round attempt at a time (:mod:`secfl.fl._attempt`);
- :mod:`secfl.fl._submit` — an update taken in: vetted, then folded as it streams,
  received whole in its turn (:mod:`secfl.fl._turn`), or kept for the round loop;
- :mod:`secfl.fl._collaborator` — the collaborator's loop (local training);
- :mod:`secfl.fl.strategies` — the aggregation rules (FedAvg, FedProx, FedAdam, the
  robust rules, the clone-and-sample audit) and their registry;
- :mod:`secfl.fl._strategy_wiring` — what some rules need from the aggregator's
  validation data.

Models on the wire and on disk:

- :mod:`secfl.fl._tensors` — models and updates as safetensors bytes (never pickle);
- :mod:`secfl.fl._arrays` — tensors as numpy arrays (torch in and out), checks against
  the model, NaN/Inf refusal;
- :mod:`secfl.fl._chunks` — a buffer streamed in chunks, reassembled under a size limit;
- :mod:`secfl.fl._envelope` — signed global models bound to policy, round and SPM
  counter (freshness);
- :mod:`secfl.fl._checkpoint` — sealed checkpoints bound to the SPM counter (rollback);
- :mod:`secfl.fl._checkpoint_format` — a checkpoint file's layout, and its header
  read before it is authenticated;
- :mod:`secfl.fl._checkpoint_names` — checkpoint file names, and the names of the
  SPM increments that commit them;
- :mod:`secfl.fl._checkpoint_dir` — the checkpoint folder: which checkpoint to resume
  from (the commit protocol), pruning;
- :mod:`secfl.fl._commit` — each round made durable (checkpoint) and fresh (counter);
- :mod:`secfl.fl._runs` — runs: each policy version trains its own, without a reset;
  which checkpoint a run resumes from;
- :mod:`secfl.fl._reset` — a board-approved reset of the freshness check (used up
  once applied).

Between the workloads:

- :mod:`secfl.fl._transport` — gRPC over mutual TLS with SPM-issued certificates;
- :mod:`secfl.fl._messages` — the framed messages (a JSON header and a payload);
- :mod:`secfl.fl._untrusted` — bounded parsing of JSON and YAML that crossed a trust
  boundary.

Import the submodules; this package imports nothing heavy (torch is only loaded by
the functions that move tensors in and out of a ``torch.nn.Module``). The research
harness (:mod:`secfl.eval`) builds on this package; this package never imports it.
"""
