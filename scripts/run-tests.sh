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

# Each fuzz target runs for FUZZ_SECONDS from a seed corpus of real inputs.
fuzz() { # name corpus-dir [libFuzzer flags...]
    local name=$1 corpus=$2
    shift 2
    if [[ ! -x build/fuzz/$name ]]; then
        echo "  $name: not built"; record "$name" 1; return
    fi
    build/fuzz/$name -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=4096 \
        -artifact_prefix=build/fuzz/$name- "$@" "$corpus" >"$log/$name.log" 2>&1
    local rc=$?
    record "$name" $rc
    if [[ $rc -eq 0 ]]; then printf '  %-22s %s\n' "$name" "$(grep -E '^Done' "$log/$name.log")"; else tail -40 "$log/$name.log"; fi
}
echo "== fuzz: ${FUZZ_SECONDS}s per target"
export INFERNO_FUZZ_MODEL="$INFERNO_REFERENCE_DIR/tinyA-q8_0.gguf"
corpus=build/fuzz/corpus
mkdir -p "$corpus"/{gguf,tokenizer,jinja,tokenizer_svc,worker_svc,sched_svc,gateway}
cp tests/fuzz/gateway-seeds/*.json "$corpus/gateway/"
INFERNO_FUZZ_WRITE_SEEDS="$corpus/sched_svc" build/fuzz/fuzz_sched_svc 2>/dev/null
"$BUILD/tests/write-type-samples" "$corpus/gguf/seed-samples.gguf"
cp "$INFERNO_REFERENCE_DIR"/chat_templates/*.jinja "$corpus/jinja/"
.venv/bin/python - "$INFERNO_REFERENCE_DIR" "$corpus/tokenizer" <<'PY'
import json, sys, pathlib
ref = json.loads(pathlib.Path(sys.argv[1], "tokenizer_ref.json").read_text())
for i, r in enumerate(ref[::25]):
    pathlib.Path(sys.argv[2], f"seed-{i}").write_text(r["text"])
PY
fuzz fuzz_gguf "$corpus/gguf" -max_len=32768
fuzz fuzz_tokenizer "$corpus/tokenizer" -max_len=4096
fuzz fuzz_jinja "$corpus/jinja" -max_len=16384
fuzz fuzz_tokenizer_svc "$corpus/tokenizer_svc" -max_len=4096
fuzz fuzz_worker_svc "$corpus/worker_svc" -max_len=1024
fuzz fuzz_sched_svc "$corpus/sched_svc" -max_len=2048
fuzz fuzz_gateway_request "$corpus/gateway" -max_len=4096 -dict=tests/fuzz/json.dict

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
