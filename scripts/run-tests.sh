#!/usr/bin/env bash
# Runs every test against one build: the C unit tests, the GGUF fuzzer for a
# bounded time, and the Python system tests. Prints a summary line
# "tests: N passed, M failed" and exits non-zero on any failure.
#   scripts/run-tests.sh BUILD_DIR [FUZZ_SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/san}
FUZZ_SECONDS=${2:-30}
export INFERNO_BIN_DIR="$PWD/$BUILD/bin"
export INFERNO_REFERENCE_DIR="${INFERNO_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}"
# detect_leaks stays on: every unit test must free what it allocates
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

passed=0
failed=0
failures=()
log=$(mktemp -d)

record() { # name status
    if [[ $2 -eq 0 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$1"); fi
}

echo "== unit tests ($BUILD)"
for t in "$BUILD"/tests/test_*; do
    [[ -x $t ]] || continue
    name=$(basename "$t")
    "$t" >"$log/$name.log" 2>&1
    rc=$?
    # count each cmocka case: "[       OK ] name" / "[  FAILED  ] name"
    ok=$(grep -c '^\[       OK \]' "$log/$name.log")
    bad=$(grep -c '^\[  FAILED  \] test_' "$log/$name.log")
    passed=$((passed + ok))
    failed=$((failed + bad))
    if [[ $rc -ne 0 ]]; then
        [[ $bad -eq 0 ]] && failed=$((failed + 1)) # crashed or leaked outside a case
        failures+=("$name")
        cat "$log/$name.log"
    fi
    printf '  %-28s %s\n' "$name" "$([[ $rc -eq 0 ]] && echo "ok ($ok cases)" || echo FAILED)"
done

echo "== fuzz: gguf reader, ${FUZZ_SECONDS}s"
if [[ -x build/fuzz/fuzz_gguf ]]; then
    corpus=build/fuzz/corpus
    mkdir -p "$corpus"
    "$BUILD/tests/write-type-samples" "$corpus/seed-samples.gguf"
    build/fuzz/fuzz_gguf -max_total_time="$FUZZ_SECONDS" -max_len=32768 -timeout=10 \
        -artifact_prefix=build/fuzz/ "$corpus" >"$log/fuzz.log" 2>&1
    rc=$?
    record fuzz_gguf $rc
    if [[ $rc -eq 0 ]]; then echo "  $(grep -E '^Done' "$log/fuzz.log")"; else tail -40 "$log/fuzz.log"; fi
else
    echo "  fuzz target not built"; record fuzz_gguf 1
fi

echo "== python system tests"
PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-}" .venv/bin/python -m pytest -q -p no:cacheprovider tests/python \
    --junitxml="$log/pytest.xml" 2>&1 | tee "$log/pytest.log"
rc=${PIPESTATUS[0]}
py_pass=$(grep -oE '[0-9]+ passed' "$log/pytest.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
py_fail=$(grep -oE '[0-9]+ (failed|error)' "$log/pytest.log" | grep -oE '[0-9]+' | paste -sd+ | bc 2>/dev/null || echo 0)
passed=$((passed + ${py_pass:-0}))
failed=$((failed + ${py_fail:-0}))
if [[ $rc -ne 0 ]]; then
    [[ ${py_fail:-0} -eq 0 ]] && failed=$((failed + 1))
    failures+=(pytest)
fi

rm -rf "$log"
echo
[[ $failed -gt 0 ]] && echo "failed: ${failures[*]}"
echo "tests: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
