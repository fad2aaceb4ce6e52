#!/usr/bin/env bash
# Coverage-guided fuzzing of pyfloor with atheris (libFuzzer for Python): every target in tools/fuzz/
# for a bounded time from its seed corpus (tools/fuzz/corpus/<target>/). The C++ histograms are
# fuzzed against an AddressSanitizer build of pyfloor._hist made in a temporary directory (clang with
# -fsanitize=address,fuzzer-no-link, so libFuzzer also sees the C++ code's coverage, run with atheris's
# own ASan+libFuzzer runtime preloaded; gcc ASan without C++ coverage where clang is missing). The
# in-place extension is neither rebuilt nor touched. Any finding (an exception outside the contract,
# a failed invariant, a sanitizer report, a hang past -timeout, memory past -rss_limit_mb) fails the run;
# the reproducer is kept in $FUZZ_ARTIFACTS (default: a temporary directory, printed).
#
#   tools/fuzz.sh [target ...]        targets: histograms stats sae checkpoint (default: all)
#   FUZZ_SECONDS=60 (per target)  FUZZ_TIMEOUT=10 (s per input)  FUZZ_RSS_MB=2048
#   Reproduce a finding: python tools/fuzz/fuzz_<target>.py <crash file>
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
per_input=${FUZZ_TIMEOUT:-10}
rss=${FUZZ_RSS_MB:-2048}
[[ $# -gt 0 ]] || set -- histograms stats sae checkpoint

python -c "import atheris" 2>/dev/null || pip install -q atheris
work=$(mktemp -d)
trap 'rm -rf "$work" /dev/shm/pyfloor-fuzz-*' EXIT  # libFuzzer exits past the targets' own clean-up
artifacts=${FUZZ_ARTIFACTS:-$(mktemp -d /tmp/pyfloor-fuzz-artifacts.XXXXXX)}
mkdir -p "$artifacts"

# -- the ASan build of pyfloor._hist --------------------------------------------------------------
so="$work/_hist$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
atheris_dir=$(python -c 'import atheris; print(atheris.path())')
# shellcheck disable=SC2046  # the include flags are meant to split
if command -v clang++ >/dev/null && [[ -f "$atheris_dir/asan_with_fuzzer.so" ]]; then
    echo "== building pyfloor._hist with clang ASan + libFuzzer coverage"
    clang++ -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,fuzzer-no-link \
        -fopenmp-simd -pthread -shared -fPIC $(python -m pybind11 --includes) -Icsrc \
        csrc/binding.cpp csrc/histograms.cpp -o "$so"
    preload="$atheris_dir/asan_with_fuzzer.so:$(gcc -print-file-name=libstdc++.so)"
else
    echo "== clang++ not found: building pyfloor._hist with gcc ASan (no C++ coverage feedback)"
    g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address -fopenmp-simd -pthread -shared -fPIC \
        $(python -m pybind11 --includes) -Icsrc csrc/binding.cpp csrc/histograms.cpp -o "$so"
    preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)"
fi

# -- the targets ------------------------------------------------------------------------------------
failed=()
for target in "$@"; do
    script=tools/fuzz/fuzz_$target.py
    [[ -f $script ]] || { echo "error: no target $script" >&2; exit 2; }
    mkdir -p "$work/corpus-$target"
    env=(PYTHONWARNINGS=ignore)
    if [[ $target == histograms || $target == checkpoint ]]; then  # these reach the C++ extension
        env+=(PYFLOOR_FUZZ_HIST="$so" LD_PRELOAD="$preload"
              ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1)
    fi
    echo "== fuzz $target (${seconds}s)"
    log="$work/$target.log"
    rc=0
    env "${env[@]}" python "$script" "$work/corpus-$target" "tools/fuzz/corpus/$target" \
        -max_total_time="$seconds" -timeout="$per_input" -rss_limit_mb="$rss" -max_len=4096 \
        -artifact_prefix="$artifacts/$target-" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || true)
    runs=${runs:-$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')}
    if [[ $rc -ne 0 ]] || grep -qE 'ERROR: (AddressSanitizer|libFuzzer)|Uncaught Python exception' "$log"; then
        echo "   FINDING in $target after $runs executions (rc $rc); reproducer in $artifacts:"
        grep -E -A30 'Uncaught Python exception|ERROR: (AddressSanitizer|libFuzzer)' "$log" | head -60 || tail -40 "$log"
        failed+=("$target")
    else
        echo "   $target: $runs executions, no finding ($(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1))"
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== fuzz: findings in ${failed[*]}" >&2
    exit 1
fi
[[ -n ${FUZZ_ARTIFACTS:-} ]] || rmdir "$artifacts" 2>/dev/null || true
echo "== fuzz: no finding"
