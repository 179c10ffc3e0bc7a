#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace.
#
# The free-threaded tier needs a free-threaded CPython. Set FTSURVEY_TEST_FT_PYTHON to one,
# or let this script build one (cached) with deploy/build-cpython.sh from
# FTSURVEY_CPYTHON_SOURCE (default: ../shared/cpython/Python-3.13.5.tar.xz beside the clone).
# Without either the tests fail: the tier is never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FTSURVEY_TEST_FT_PYTHON:-}" ]; then
  export FTSURVEY_CPYTHON_SOURCE="${FTSURVEY_CPYTHON_SOURCE:-../shared/cpython/Python-3.13.5.tar.xz}"
  echo "tests/run.sh: building or reusing a free-threaded CPython from $FTSURVEY_CPYTHON_SOURCE" >&2
  if ! FTSURVEY_TEST_FT_PYTHON="$(deploy/build-cpython.sh)"; then
    echo "tests/run.sh: cannot get the free-threaded CPython the tests need; set FTSURVEY_TEST_FT_PYTHON or FTSURVEY_CPYTHON_SOURCE" >&2
    exit 1
  fi
  export FTSURVEY_TEST_FT_PYTHON
fi
echo "tests/run.sh: free-threaded interpreter: $FTSURVEY_TEST_FT_PYTHON" >&2

cargo fmt --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
