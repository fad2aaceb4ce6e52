#!/usr/bin/env bash
# Build pyfloor._hist with AddressSanitizer and UndefinedBehaviorSanitizer into a temporary
# directory and run the histogram tests against that build, once per SIMD level this CPU runs
# (PYFLOOR_SIMD; or only the levels given in PYFLOOR_SIMD_LEVELS); any sanitizer report fails the
# run. The in-place extension (pyfloor/_hist*.so) is neither rebuilt nor touched.
#
#   tools/sanitize.sh [pytest args...]      (default: tests/test_histograms*.py)
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
so="$build/_hist$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"

echo "== building the sanitized extension in $build"
# shellcheck disable=SC2046  # the include flags are meant to split
g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
    -fopenmp-simd -pthread -shared -fPIC $(python -m pybind11 --includes) -Icsrc \
    csrc/binding.cpp csrc/histograms.cpp -o "$so"

[[ $# -gt 0 ]] || set -- tests/test_histograms*.py
levels=${PYFLOOR_SIMD_LEVELS:-$(python -c 'from pyfloor.histograms import simd_levels; print(*simd_levels())')}
for level in $levels; do
echo "== running the histogram tests under ASan + UBSan at PYFLOOR_SIMD=$level"
# Python itself is not instrumented: preload the ASan runtime (and libstdc++, whose __cxa_throw ASan
# must find at start-up to intercept C++ exceptions), and ignore the interpreter's leaks.
PYFLOOR_SIMD=$level \
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
python - "$so" "$@" <<'PY'
import importlib.util
import sys

import pytest

so, args = sys.argv[1], sys.argv[2:]
# Register the sanitized build as pyfloor._hist before anything imports the in-place one.
spec = importlib.util.spec_from_file_location("pyfloor._hist", so)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["pyfloor._hist"] = module
import pyfloor.histograms  # noqa: E402

assert pyfloor.histograms._hist.__file__ == so, pyfloor.histograms._hist.__file__
print(f"pyfloor._hist from {so}")
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *args]))
PY
done
echo "== sanitizers: no report"
