#!/usr/bin/env bash
# Create .venv and install secfl with its FL, test and Ray dependencies, and Debian's
# Fashion-MNIST data set when we are root and it is missing. Idempotent: it
# reinstalls only when pyproject.toml changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: secfl needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || {
    echo "error: python venv failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
stamp=.venv/.secfl-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[fl,test,ray]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import secfl, dcap_qvl, cryptography' || { echo "error: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# Fashion-MNIST comes from Debian (nothing is downloaded at run time).
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; } >/dev/null 2>&1 ||
      echo "warning: could not install dataset-fashion-mnist (apt-get)" >&2
  else
    echo "note: dataset-fashion-mnist is not installed (as root: apt-get install dataset-fashion-mnist)" >&2
  fi
fi
