#!/usr/bin/env bash
# Builds distml's extension with AddressSanitizer and UndefinedBehaviorSanitizer
# into a separate virtual environment and runs the test suite under it.
#
#   tools/sanitize.sh                      # the whole suite
#   tools/sanitize.sh tests/test_kernels.py tests/test_mpi.py -k reductions
#
# The project's own .venv and build/ are not touched: the environment lives in
# $ASAN_VENV (default /tmp/asan-venv), the CMake build in $ASAN_BUILD_DIR
# (default /tmp/asan-build). Python itself is not instrumented, so the ASan
# runtime must be loaded first (LD_PRELOAD), and leak detection is off
# (the interpreter keeps memory until exit by design). UBSan findings stop the
# process (halt_on_error=1), so a finding fails the test that triggered it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${ASAN_VENV:-/tmp/asan-venv}
BUILD=${ASAN_BUILD_DIR:-/tmp/asan-build}
CC=${CC:-gcc}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q mpich mpi4py numpy ml_dtypes pytest hypothesis scikit-build-core pybind11 cmake ninja
DISTML_SANITIZE=address,undefined "$VENV/bin/pip" install -q --no-build-isolation --no-deps --force-reinstall \
  -C build-dir="$BUILD" -C cmake.build-type=RelWithDebInfo .

# libstdc++ is preloaded too: python does not link it, and ASan's __cxa_throw
# interceptor must find the real one at start-up, or the first C++ exception
# aborts with "CHECK failed ... real___cxa_throw".
LIBASAN=$("$CC" -print-file-name=libasan.so)
LIBSTDCXX=$("$CC" -print-file-name=libstdc++.so)
if [ ! -e "$LIBASAN" ]; then
  echo "sanitize.sh: $CC has no libasan.so" >&2
  exit 2
fi
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
export PATH="$VENV/bin:$PATH"
export PYTHONFAULTHANDLER=1

if [ "$#" -eq 0 ]; then
  set -- tests
fi
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
