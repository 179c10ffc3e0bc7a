#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace.
#
# The free-threaded tier needs a free-threaded CPython and a ThreadSanitizer one. Set
# FTSURVEY_TEST_FT_PYTHON and FTSURVEY_TEST_TSAN_PYTHON, or let this script build them (cached)
# with deploy/build-cpython.sh from FTSURVEY_CPYTHON_SOURCE (default:
# ../shared/cpython/Python-3.13.5.tar.xz beside the clone). Without them the tests fail: the
# tier is never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

export FTSURVEY_CPYTHON_SOURCE="${FTSURVEY_CPYTHON_SOURCE:-../shared/cpython/Python-3.13.5.tar.xz}"
# Sets the variable named $1 to an interpreter built (or reused) with the builder's flags $2.
need_python() {
  local var="$1" flags="$2" what="$3" path
  [ -n "${!var:-}" ] && return 0
  echo "tests/run.sh: building or reusing a $what CPython from $FTSURVEY_CPYTHON_SOURCE" >&2
  # shellcheck disable=SC2086
  if ! path="$(deploy/build-cpython.sh $flags)"; then
    echo "tests/run.sh: cannot get the $what CPython the tests need; set $var or FTSURVEY_CPYTHON_SOURCE" >&2
    exit 1
  fi
  export "$var=$path"
}
# The HTML report is checked in headless Chromium; the test fails without it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing chromium for the HTML report test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "tests/run.sh: chromium is missing and cannot be installed here (not root, or no apt-get); the HTML report test will fail" >&2
  fi
fi
# Every iteration runs in bubblewrap (the default sandbox picks it when `bwrap` is on PATH) and
# the sandbox tests insist on it: without it they fail, so this fails first, saying why.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing bubblewrap for the sandbox" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } \
      || true
  fi
  if ! command -v bwrap >/dev/null 2>&1; then
    echo "tests/run.sh: bwrap (bubblewrap) is missing and could not be installed (not root, no apt-get, or apt-get failed); install the bubblewrap package" >&2
    exit 1
  fi
fi
if ! bwrap --ro-bind / / --dev /dev --proc /proc --unshare-all --die-with-parent -- true 2>/dev/null; then
  echo "tests/run.sh: bwrap is installed but cannot create namespaces here (try: bwrap --ro-bind / / --unshare-all -- true); the sandbox tests need it" >&2
  exit 1
fi
need_python FTSURVEY_TEST_FT_PYTHON "" free-threaded
need_python FTSURVEY_TEST_TSAN_PYTHON --tsan ThreadSanitizer
# The setup tests run uv (from PyPI) as well as pip; without one on PATH, uv is installed into
# a venv of its own in the cache (a venv, as system Pythons may refuse user installs).
if ! command -v uv >/dev/null 2>&1; then
  tools="${FTSURVEY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ftsurvey}/tools"
  if [ ! -x "$tools/bin/uv" ]; then
    echo "tests/run.sh: installing uv from PyPI into $tools for the setup tests" >&2
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet uv
  fi
  export PATH="$tools/bin:$PATH"
fi
echo "tests/run.sh: free-threaded interpreter: $FTSURVEY_TEST_FT_PYTHON" >&2
echo "tests/run.sh: ThreadSanitizer interpreter: $FTSURVEY_TEST_TSAN_PYTHON" >&2

cargo fmt --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
