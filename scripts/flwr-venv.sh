#!/usr/bin/env bash
# Create .venv-flwr, a separate venv holding Flower (flwr==1.41.*) for the reference
# tests of tests/fl/test_flower_reference.py. flwr cannot share .venv: it pins
# typer<0.21 and fastapi<0.139, older than secfl needs. Idempotent: it installs only
# when .venv-flwr cannot import flwr.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-flwr/bin/python ]; then
  python3 -m venv .venv-flwr || {
    echo "error: python venv failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
if ! .venv-flwr/bin/python -c "import flwr" >/dev/null 2>&1; then
  .venv-flwr/bin/python -m pip install --quiet --disable-pip-version-check 'flwr==1.41.*' numpy
  .venv-flwr/bin/python -c "import flwr" || { echo "error: flwr install failed" >&2; exit 1; }
fi
