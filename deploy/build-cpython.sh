#!/usr/bin/env bash
# Builds a free-threaded (or ThreadSanitizer) CPython from a source tarball or
# directory, caches the result by (source hash, variant) and prints the path of
# the built interpreter on stdout. Progress and build logs go to stderr.
#
#   deploy/build-cpython.sh [--tsan] [--source TARBALL_OR_DIR] [--prefix DIR]
#
# The source defaults to $FTSURVEY_CPYTHON_SOURCE; the cache to
# ${FTSURVEY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ftsurvey}/pythons.
set -euo pipefail

variant=ft
source_path="${FTSURVEY_CPYTHON_SOURCE:-}"
prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tsan) variant=tsan ;;
    --source) source_path="$2"; shift ;;
    --prefix) prefix="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-cpython: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$source_path" ]; then
  echo "build-cpython: no CPython source: pass --source or set FTSURVEY_CPYTHON_SOURCE to a tarball or directory" >&2
  exit 2
fi
if [ ! -e "$source_path" ]; then
  echo "build-cpython: CPython source not found: $source_path" >&2
  exit 2
fi
source_path="$(cd "$(dirname "$source_path")" && pwd)/$(basename "$source_path")"

# A tarball is identified by its bytes, a directory by its file list and contents.
if [ -f "$source_path" ]; then
  source_hash="$(sha256sum "$source_path" | cut -c1-16)"
else
  source_hash="$(cd "$source_path" && find . -type f ! -path './.git/*' -print0 | sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16)"
fi

cache_root="${FTSURVEY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ftsurvey}/pythons"
if [ -z "$prefix" ]; then
  prefix="$cache_root/$variant-$source_hash"
fi
mkdir -p "$(dirname "$prefix")"
prefix="$(cd "$(dirname "$prefix")" && pwd)/$(basename "$prefix")"

exec 9>"$prefix.lock"
flock 9

if [ -x "$prefix/bin/python3" ] && [ -f "$prefix/.ftsurvey-build-complete" ]; then
  echo "$prefix/bin/python3"
  exit 0
fi

build_dir="$(mktemp -d "${TMPDIR:-/tmp}/ftsurvey-cpython-build.XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT
echo "build-cpython: building $variant CPython from $source_path into $prefix" >&2

if [ -f "$source_path" ]; then
  tar -xf "$source_path" -C "$build_dir" --strip-components=1
else
  cp -a "$source_path/." "$build_dir/"
fi

configure_args=(--prefix="$prefix" --disable-gil --with-ensurepip=install)
if [ "$variant" = tsan ]; then
  configure_args+=(--with-thread-sanitizer)
  # ThreadSanitizer works with clang or gcc (libtsan); take clang when the machine has it.
  if [ -z "${CC:-}" ]; then
    if command -v clang >/dev/null 2>&1; then export CC=clang; else export CC=gcc; fi
  fi
fi

rm -rf "$prefix"
(
  cd "$build_dir"
  ./configure "${configure_args[@]}" >"$build_dir/configure.log" 2>&1 \
    || { tail -40 "$build_dir/configure.log" >&2; echo "build-cpython: configure failed" >&2; exit 1; }
  make -j"$(nproc)" >"$build_dir/make.log" 2>&1 \
    || { tail -60 "$build_dir/make.log" >&2; echo "build-cpython: make failed" >&2; exit 1; }
  make install >"$build_dir/install.log" 2>&1 \
    || { tail -60 "$build_dir/install.log" >&2; echo "build-cpython: make install failed" >&2; exit 1; }
)

# The free-threaded install names its interpreter python3.13t; give it the plain names too.
for exe in "$prefix"/bin/python3.*t; do
  [ -e "$exe" ] || continue
  ln -sf "$(basename "$exe")" "$prefix/bin/python3"
  ln -sf "$(basename "$exe")" "$prefix/bin/python"
done
"$prefix/bin/python3" -c 'import sys, sysconfig; assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1, "not free-threaded"; print("build-cpython: built", sys.version, file=sys.stderr)'
touch "$prefix/.ftsurvey-build-complete"
echo "$prefix/bin/python3"
