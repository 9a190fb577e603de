#!/usr/bin/env bash
# Install everything, then run the main job: `secfl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/secfl demo "$@"
