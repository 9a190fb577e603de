#!/usr/bin/env bash
# This Flower app, trained end to end under secfl on this machine (loopback, the
# simulated TEE): an SPM; the app built into a FAB and shielded; each site's share of
# scikit-learn's digits shielded with its own key; a 2-of-3 board's policy (written by
# `secfl flower policy`'s library, secfl.flower.flower_policy); a SuperLink and 4
# SuperNodes each started by `secfl run`; a fifth SuperNode whose app was modified,
# which attestation refuses. Prints the rounds and the SPM's attestation decisions.
#
#   bash examples/flower/run.sh [--sites N] [--rounds R] [--keep DIR]
#
# The same app runs under plain Flower too (no secfl): see docs/flower.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >/dev/null
bash scripts/flwr-venv.sh
exec .venv/bin/secfl flower demo "$@"
