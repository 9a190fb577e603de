#!/usr/bin/env bash
# Install everything, then run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/flwr-venv.sh   # Flower, the reference of the robust rules' tests (its own venv)
# PostgreSQL for the SPM's tests (Debian's package, as root): installed here rather than
# inside the first test that needs it, so that no test is charged the install time.
if [ "$(id -u)" -eq 0 ] && ! command -v initdb >/dev/null 2>&1 &&
   ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql; } >/dev/null ||
    echo "warning: could not install postgresql (apt-get); the SPM's PostgreSQL tests will fail" >&2
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m mypy src   # the type check ([tool.mypy] in pyproject.toml)
# Byte-compile secfl and the tests once: the suite starts hundreds of Python
# processes, and where PYTHONDONTWRITEBYTECODE is set each would compile every module it
# imports again (Python still reads .pyc files then; stale ones are recompiled). A file
# that does not compile is pytest's to report, with where.
.venv/bin/python -m compileall -q -j 0 src tests > /dev/null || true
# Three pytest workers (pytest-xdist), handed whole test files in turn: much of the
# suite's time is Python processes starting up and waiting on each other (timeouts,
# handshakes, a federation's rounds), so one worker left a core idle (12.6 min in one,
# 7.3 min in two on 2 cores, back when the suite was smaller); on 2 cores a third fills
# what two leave idle (10:48 against 11:37, the CPUs 95% busy). SECFL_TEST_WORKERS=0 runs
# everything in this process (for a debugger); a test file's tests stay together, so its
# module fixtures are built once and Ray's tests never meet another Ray. The files go out
# in the order tests/conftest.py gives them (heavy ones first), not xdist's own (the files
# with the most tests first, which left the longest single-test files for the end).
exec .venv/bin/python -m pytest -n "${SECFL_TEST_WORKERS:-3}" --dist loadfile \
  --no-loadscope-reorder "$@"
