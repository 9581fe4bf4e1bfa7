#!/usr/bin/env bash
# Checks and benchmarks the CUDA engine on a GPU machine in one go, for
# the `device` machines where GPU time is scarce (prepare with
# bench/gpu-pack.sh; on a machine with our build dependencies, `make all
# tests` and ../shared are enough):
#   1. test_engine: the tinyA reference checks on the CPU and CUDA engines;
#   2. compute-sanitizer memcheck over prefill (tensor-core path) and
#      decode (GEMV path, CUDA graphs) on tinyA, and with f16 and fp8 KV;
#   3. 0.6b-shaped models (BF16, also with an f16 KV cache on both engines;
#      Q8_0, Q4_K_M), a Qwen2.5-0.5B-shaped Q4_K_M one, a Gemma-3-270M-shaped
#      Q4_K_M one and a tiny gemma3 with a sliding window of 4: GPU logits
#      against the CPU engine's, after prompts of 1 (a decode-graph step), 5 and 100 tokens;
#   4. inferno-bench --backend cuda on them;
#   5. a cluster of two inferno-worker-cuda workers (deploy/inferno) serving
#      chat completions;
#   6. with PROFILE=1, ncu kernel times of a batch-1 decode step, and a
#      batch-256 step's time by kernel (KV_TYPE=fp8: with that KV cache);
#   7. the serving benchmark (bench/loadgen.py) against one
#      inferno-worker-cuda: closed loop at 1 to 256 clients, and the
#      shared-prefix multi-turn chat workload; JSON in $OUT.
# STEPS="3 5" runs some of them (the default: 1 to 5). Logs go to $OUT (default /tmp/gpu-check).
# Exit status: 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
BATCHES=${BATCHES:-1,8,32,256}
STEPS=" ${STEPS:-1 2 3 4 5} "
want() { [[ $STEPS == *" $1 "* || ($1 == 6 && ${PROFILE:-0} == 1) ]]; }
mkdir -p "$OUT"
work=${TMPDIR:-/tmp}/inferno-gpu
mkdir -p "$work"
status=0
check() { # name rc
    if [[ $2 -eq 0 ]]; then echo "  $1: ok"; else echo "  $1: FAILED ($2)"; status=1; fi
}

if [[ -d .devkit ]]; then
    export LD_LIBRARY_PATH=$PWD/.devkit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    tar xJf .devkit/reference.tar.xz -C "$work" && tar xJf .devkit/tokenizer.tar.xz -C "$work"
    export INFERNO_REFERENCE_DIR=$work/reference
    tokenizer=$work/models/qwen3-tokenizer
else
    export INFERNO_REFERENCE_DIR=${INFERNO_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
    tokenizer=../shared/models/qwen3-tokenizer
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader

for type in bf16 q8_0 q4_k_m; do
    [[ -f $work/0.6b-$type.gguf ]] || build/bin/make-test-model --config 0.6b --type $type --tokenizer "$tokenizer" \
        --out "$work/0.6b-$type.gguf" >/dev/null || status=1
done
# The real Qwen2.5-Coder-0.5B Q4_K_M file's shapes and tensor types (Q5_0, Q8_0, Q6_K, Q4_K; random
# weights): that file is too large to carry to a device machine.
[[ -f $work/qwen2.5-0.5b-q4_k_m.gguf ]] || build/bin/make-test-model --config 0.6b --arch qwen2 --type q4_k_m \
    --layers 24 --hidden 896 --heads 14 --kv-heads 2 --head-dim 64 --ffn 4864 --context 32768 \
    --tokenizer "$tokenizer" --out "$work/qwen2.5-0.5b-q4_k_m.gguf" >/dev/null || status=1
# Gemma 3 270M's shapes and mix (head_dim 256, one KV head, window 512), and a tiny gemma3 whose window of 4
# every prompt here crosses
[[ -f $work/gemma3-270m-q4_k_m.gguf ]] || build/bin/make-test-model --config 0.6b --arch gemma3 --type q4_k_m \
    --layers 18 --hidden 640 --heads 4 --kv-heads 1 --head-dim 256 --ffn 2048 --context 32768 --window 512 \
    --tokenizer "$tokenizer" --out "$work/gemma3-270m-q4_k_m.gguf" >/dev/null || status=1
[[ -f $work/gemma3-tiny.gguf ]] || build/bin/make-test-model --config tiny --arch gemma3 --layers 6 --window 4 \
    --type bf16 --tokenizer "$tokenizer" --out "$work/gemma3-tiny.gguf" >/dev/null || status=1

if want 1; then
echo "== 1. test_engine (CPU and CUDA)"
build/tests/test_engine >"$OUT/test_engine.log" 2>&1
rc=$?
grep -E "cuda|FAILED|PASSED" "$OUT/test_engine.log"
check test_engine $rc
fi

if want 2; then
echo "== 2. compute-sanitizer memcheck"
ids=$(seq -s, 100 137)
# greedy, then sampling on the GPU (sample.cuh): top-p and a penalty (the
# radix select and the edits), temperature alone (the id-order walk), top-k,
# greedy with a penalty (the argmax of the edited row), and a top_k past the
# pick's candidates with top-p and min-p (sample_wide.cuh)
for f in tinyA-bf16 tinyA-q8_0; do
    for how in greedy sampled walk top-k greedy-edited wide; do
        case $how in
        greedy) extra=() ;;
        sampled) extra=(--temperature 0.8 --top-p 0.9 --repetition-penalty 1.1 --seed 3) ;;
        walk) extra=(--temperature 0.8 --seed 3) ;;
        top-k) extra=(--temperature 0.8 --top-k 40 --seed 3) ;;
        greedy-edited) extra=(--repetition-penalty 1.3) ;;
        wide) extra=(--temperature 1.5 --top-k 3000 --top-p 0.99 --min-p 0.001 --seed 3) ;;
        esac
        compute-sanitizer --tool memcheck --error-exitcode 9 build/bin/model-generate --backend cuda \
            --model "$INFERNO_REFERENCE_DIR/$f.gguf" --prompt-ids "$ids" --max-tokens 12 --print-ids "${extra[@]}" \
            >"$OUT/sanitizer-$f-$how.log" 2>&1
        rc=$?
        grep -E "ERROR SUMMARY" "$OUT/sanitizer-$f-$how.log"
        check "memcheck $f $how" $rc
    done
done
# the persistent decode kernel (opt-in), greedy on tinyA
INFERNO_CUDA_PERSISTENT=1 compute-sanitizer --tool memcheck --error-exitcode 9 build/bin/model-generate --backend cuda \
    --model "$INFERNO_REFERENCE_DIR/tinyA-bf16.gguf" --prompt-ids "$ids" --max-tokens 12 --print-ids \
    >"$OUT/sanitizer-tinyA-bf16-persistent.log" 2>&1
rc=$?
grep -E "ERROR SUMMARY" "$OUT/sanitizer-tinyA-bf16-persistent.log"
check "memcheck tinyA-bf16 persistent decode" $rc
# decode steps of 2 and 8 sequences: the GEMVs that stage their weights in
# shared memory (gemv_rows_staged)
for f in tinyA-bf16 tinyA-q8_0; do
    compute-sanitizer --tool memcheck --error-exitcode 9 build/bin/inferno-bench --backend cuda \
        --model "$INFERNO_REFERENCE_DIR/$f.gguf" --prompt 24 --gen 4 --batch 2,8 \
        >"$OUT/sanitizer-$f-batches.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY" "$OUT/sanitizer-$f-batches.log"
    check "memcheck $f decode batches 2 and 8" $rc
done
# a 300-token prompt at head size 128: the warp-per-head RoPE, and the prompt
# attention's slices and their merge
compute-sanitizer --tool memcheck --error-exitcode 9 build/bin/model-generate --backend cuda \
    --model "$work/0.6b-bf16.gguf" --prompt-ids "$(seq -s, 1000 1299)" --max-tokens 2 \
    >"$OUT/sanitizer-0.6b-bf16-prompt.log" 2>&1
rc=$?
grep -E "ERROR SUMMARY" "$OUT/sanitizer-0.6b-bf16-prompt.log"
check "memcheck 0.6b-bf16 300-token prompt" $rc
# the KV cache in half precision and in fp8: the prompt attention's staged
# rows, and decode attention's batches of 8 positions (0.6b: head size 128)
for kv in f16 fp8; do
    for model in "$INFERNO_REFERENCE_DIR/tinyA-bf16.gguf" "$work/0.6b-bf16.gguf"; do
        name=$(basename "$model" .gguf)-$kv
        compute-sanitizer --tool memcheck --error-exitcode 9 build/bin/model-generate --backend cuda --kv-type $kv \
            --model "$model" --prompt-ids "$(seq -s, 1000 1139)" --max-tokens 6 --print-ids \
            >"$OUT/sanitizer-$name.log" 2>&1
        rc=$?
        grep -E "ERROR SUMMARY" "$OUT/sanitizer-$name.log"
        check "memcheck $name KV" $rc
    done
done
fi

if want 3; then
echo "== 3. 0.6b- and Qwen2.5-0.5B-shaped models: GPU logits against the CPU engine's"
for type in bf16 bf16-kvf16 q8_0 q4_k_m qwen2.5-q4_k_m gemma3-270m gemma3-tiny; do
    model=$work/0.6b-$type.gguf kv=()
    [[ $type == qwen2.5-* ]] && model=$work/qwen2.5-0.5b-${type#qwen2.5-}.gguf
    [[ $type == gemma3-270m ]] && model=$work/gemma3-270m-q4_k_m.gguf
    [[ $type == gemma3-tiny ]] && model=$work/gemma3-tiny.gguf
    # both engines with a half-precision cache (the same rounding): at 5 tokens
    # a step takes the decode attention kernel, whose half path differs from float's
    [[ $type == bf16-kvf16 ]] && model=$work/0.6b-bf16.gguf kv=(--kv-type f16)
    lengths="1 5 100" # 1: a one-token step (the decode graph's one-wave GEMVs)
    [[ $type == gemma3-270m ]] && lengths="1 5 100 700" # 700: past the 512-token window
    [[ $type == bf16 ]] && lengths="1 5 100 300"        # 300: the prompt attention's slices and their merge
    for n in $lengths; do
        prompt=$(seq -s, 1000 $((999 + n)))
        # the CPU reference: float32 activations, as the GPU keeps them
        for backend in cpu cuda; do
            build/bin/model-generate --backend $backend --kernels reference --threads 16 --model "$model" --prompt-ids "$prompt" \
                "${kv[@]}" --max-tokens 0 --dump-logits "$work/logits-$type-$n-$backend.f32" >/dev/null 2>>"$OUT/compare.log"
        done
        python3 - "$work/logits-$type-$n-cpu.f32" "$work/logits-$type-$n-cuda.f32" "$type" "$n" <<'PY'
import sys, numpy as np
cpu, gpu = (np.fromfile(p, dtype=np.float32).astype(np.float64) for p in sys.argv[1:3])
rel = np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu)
ok = rel < 1e-2 and cpu.argmax() == gpu.argmax()
print(f"  {sys.argv[3]:14s} {int(sys.argv[4]):4d}-token prompt: |gpu-cpu|/|cpu| {rel:.2e}, max |diff| "
      f"{np.abs(gpu - cpu).max():.4f}, top-1 {'same' if cpu.argmax() == gpu.argmax() else 'DIFFERS'}")
sys.exit(0 if ok else 1)
PY
        check "logits $type $n" $?
    done
done

fi

if want 4; then
echo "== 4. inferno-bench --backend cuda"
for type in bf16 q8_0 q4_k_m; do
    build/bin/inferno-bench --backend cuda --model "$work/0.6b-$type.gguf" --prompt 512 --gen 32 \
        --batch "$BATCHES" | tee "$OUT/bench-$type.txt"
done
build/bin/inferno-bench --backend cuda --model "$work/qwen2.5-0.5b-q4_k_m.gguf" --prompt 512 --gen 32 \
    --batch "$BATCHES" | tee "$OUT/bench-qwen2.5-q4_k_m.txt"
build/bin/inferno-bench --backend cuda --model "$work/gemma3-270m-q4_k_m.gguf" --prompt 512 --gen 32 \
    --batch "$BATCHES" | tee "$OUT/bench-gemma3-270m-q4_k_m.txt"
echo "-- bf16 with a half-precision KV cache (--kv-type f16)"
build/bin/inferno-bench --backend cuda --kv-type f16 --model "$work/0.6b-bf16.gguf" --prompt 512 --gen 32 \
    --batch "$BATCHES" | tee "$OUT/bench-bf16-kvf16.txt"
echo "-- bf16 with an fp8 KV cache (--kv-type fp8)"
build/bin/inferno-bench --backend cuda --kv-type fp8 --model "$work/0.6b-bf16.gguf" --prompt 512 --gen 32 \
    --batch "$BATCHES" | tee "$OUT/bench-bf16-kvfp8.txt"
# temperature alone: the random weights' logits are flat, so a top-p set outgrows the GPU's 256
# candidates and the host draws, which would be timed instead
echo "-- bf16, f16 KV, decode steps that sample (--temperature 0.8: the sample kernel)"
build/bin/inferno-bench --backend cuda --kv-type f16 --model "$work/0.6b-bf16.gguf" --prompt 512 --gen 32 \
    --batch 1,8,32 --temperature 0.8 | tee "$OUT/bench-bf16-kvf16-sampled.txt"
echo "-- bf16 with the persistent decode kernel (INFERNO_CUDA_PERSISTENT=1)"
INFERNO_CUDA_PERSISTENT=1 build/bin/inferno-bench --backend cuda --model "$work/0.6b-bf16.gguf" --prompt 512 --gen 32 \
    --batch 1,2,4,8 | tee "$OUT/bench-bf16-persistent.txt"
echo "-- bf16 without programmatic dependent launch (INFERNO_CUDA_PDL=0), for comparison"
INFERNO_CUDA_PDL=0 build/bin/inferno-bench --backend cuda --model "$work/0.6b-bf16.gguf" --prompt 512 --gen 32 \
    --batch 1,8 | tee "$OUT/bench-bf16-nopdl.txt"

fi

if want 5; then
echo "== 5. the cluster with inferno-worker-cuda (deploy/inferno --backend cuda)"
export INFERNO_RUN_DIR=$work/run
deploy/inferno start --backend cuda --model "$work/0.6b-bf16.gguf" --workers 2 --port 18080 >"$OUT/deploy.log" 2>&1
check "deploy start" $?
deploy/inferno status
python3 - <<'PY'
import json, sys, time, urllib.request
def post(body):
    req = urllib.request.Request("http://127.0.0.1:18080/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=60).read().decode()
with urllib.request.urlopen("http://127.0.0.1:18080/v1/models", timeout=10) as r:
    model = json.load(r)["data"][0]["id"]
body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32, "temperature": 0}
a, b = json.loads(post(body)), json.loads(post(body))
stream = post(dict(body, stream=True))
t0 = time.time()
outs = [json.loads(post(dict(body, temperature=0.8, seed=i)))["usage"]["completion_tokens"] for i in range(16)]
print(f"  greedy twice equal: {a['choices'][0]['message'] == b['choices'][0]['message']}, usage {a['usage']}, "
      f"stream events {stream.count('data: ')}, 16 sampled requests {sum(outs)} tokens in {time.time() - t0:.2f} s")
sys.exit(0 if a["choices"][0]["message"] == b["choices"][0]["message"] and "[DONE]" in stream else 1)
PY
check "chat completions through the cuda workers" $?
deploy/inferno stop >>"$OUT/deploy.log" 2>&1
cp "$INFERNO_RUN_DIR"/worker-0.log "$OUT/" 2>/dev/null
fi

if want 6; then
    echo "== 6. ncu: kernel times of a batch-1 decode step (bf16)"
    ncu --clock-control none --launch-skip 320 --launch-count 24 \
        --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
        build/bin/model-generate --backend cuda --model "$work/0.6b-bf16.gguf" --prompt-ids "$(seq -s, 1000 1007)" \
        --max-tokens 4 >"$OUT/ncu.txt" 2>&1
    python3 - "$OUT/ncu.txt" <<'PY'
import re, sys
for line in open(sys.argv[1]):
    m = re.match(r"  (?:void )?(\w+(?:<[^>]*>)?)(?:\(.*\))? \((\d+, \d+, \d+)\)x\((\d+)", line)
    if m:
        print(f"  {m.group(1)[:34]:34s} grid ({m.group(2)}) x {m.group(3):4s}", end="")
    m = re.search(r"(gpu__time_duration.sum|dram__throughput\S*)\s+(\S+)\s+([\d.,]+)", line)
    if m:
        print(f"  {m.group(3):>8s} {m.group(2)}", end="" if m.group(1).startswith("dram") else "\n")
PY
    echo "== 6. ncu: where a batch-256 decode step goes (bf16, ${KV_TYPE:-f16} KV; INFERNO_CUDA_PROFILE_DECODE)"
    INFERNO_CUDA_PROFILE_DECODE=2 ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum \
        build/bin/inferno-bench --backend cuda --kv-type "${KV_TYPE:-f16}" --model "$work/0.6b-bf16.gguf" --prompt 512 --gen 4 \
        --batch 256 >"$OUT/ncu-b256.txt" 2>&1
    python3 - "$OUT/ncu-b256.txt" <<'PY'
import collections, re, sys
name, total, count = None, collections.Counter(), collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r"  (?:void )?([\w:]+(?:<[^>]*>)?).*Context", line)
    if m:
        name = m.group(1)[:60]
    m = re.search(r"gpu__time_duration.sum\s+(\S+)\s+([\d.,]+)", line)
    if m and name:
        total[name] += float(m.group(2).replace(",", "")) * {"ns": 1e-3, "us": 1, "ms": 1e3}[m.group(1)]
        count[name] += 1
for k, v in total.most_common():
    print(f"  {v:9.1f} us {count[k]:4d}x  {k}")
print(f"  {sum(total.values()):9.1f} us in all")
PY
fi

if want 7; then
echo "== 7. serving benchmark: bench/loadgen.py against one inferno-worker-cuda (bf16)"
export INFERNO_RUN_DIR=$work/run-serve
INFERNO_KV_TOKENS=131072 INFERNO_MAX_RUNNING=256 INFERNO_MAX_WAITING=1024 deploy/inferno start --backend cuda \
    --model "$work/0.6b-bf16.gguf" --workers 1 --port 18081 >"$OUT/serve-deploy.log" 2>&1
check "deploy start (serving)" $?
lg=(python3 bench/loadgen.py run --target inferno-cuda=http://127.0.0.1:18081 --prompt-len 128 --output-len 128)
for c in 1 16 64 256; do
    n=$((c < 16 ? 32 : 2 * c))
    "${lg[@]}" --seed $c --concurrency $c --requests $n --json "$OUT/serve-c$c.json" | tail -1
    check "loadgen c=$c" "${PIPESTATUS[0]}"
done
python3 bench/loadgen.py run --target inferno-cuda=http://127.0.0.1:18081 --workload shared-prefix --sessions 64 \
    --turns 4 --prefix-len 1024 --prompt-len 64 --output-len 64 --concurrency 64 --json "$OUT/serve-chat.json" | tail -1
check "loadgen shared-prefix" "${PIPESTATUS[0]}"
deploy/inferno stop >>"$OUT/serve-deploy.log" 2>&1
fi
exit $status
