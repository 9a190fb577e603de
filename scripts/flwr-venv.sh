#!/usr/bin/env bash
# Create .venv-flwr, a separate venv holding Flower (flwr==1.41.*) for the reference
# tests of tests/fl/test_flower_reference.py and for Flower apps under secfl (tests/flower,
# examples/flower, benchmarks/bench_flower.py): Flower, torch (the CPU build this
# project's machines carry: a looser pin can pull a multi-GB CUDA build), scikit-learn
# (the example app's data) and secfl itself without its dependencies (the wrappers and
# strategies of secfl.flower run in this venv). flwr cannot share .venv: it pins
# typer<0.21 and fastapi<0.139, older than secfl needs. Idempotent: it installs only
# what .venv-flwr cannot import.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-flwr/bin/python ]; then
  python3 -m venv .venv-flwr || {
    echo "error: python venv failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
pipi() { .venv-flwr/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 |
           grep -v '^WARNING: Location' || true; }
if ! .venv-flwr/bin/python -c "import flwr" >/dev/null 2>&1; then
  pipi 'flwr==1.41.*' numpy
  .venv-flwr/bin/python -c "import flwr" || { echo "error: flwr install failed" >&2; exit 1; }
fi
if ! .venv-flwr/bin/python -c "import torch, sklearn" >/dev/null 2>&1; then
  pipi 'torch==2.13.0' 'scikit-learn>=1.4'
  .venv-flwr/bin/python -c "import torch, sklearn" || {
    echo "error: torch or scikit-learn install failed in .venv-flwr" >&2; exit 1; }
fi
if ! .venv-flwr/bin/python -c "import secfl.flower._wrap" >/dev/null 2>&1; then
  pipi --no-deps -e .
  .venv-flwr/bin/python -c "import secfl.flower._wrap" || {
    echo "error: secfl install (--no-deps) failed in .venv-flwr" >&2; exit 1; }
fi
