#!/usr/bin/env bash
# Install everything, then run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/flwr-venv.sh   # Flower, the reference of the robust rules' tests (its own venv)
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
