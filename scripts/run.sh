#!/usr/bin/env bash
# make run: the whole cluster in the foreground (scheduler, tokenizer, one
# CPU worker, gateway) on INFERNO_MODEL, or on a 0.6b-shaped test model with
# random weights written by make-test-model. Ctrl-C stops every process.
# (The supervisor with restarts and scaling, deploy/inferno, is a later issue.)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${INFERNO_MODEL:-build/models/test-0.6b-q8_0.gguf}
PORT=${INFERNO_PORT:-8080}
RUN=${INFERNO_RUN_DIR:-$PWD/build/run}
if [[ ! -f $MODEL ]]; then
    mkdir -p "$(dirname "$MODEL")"
    echo "run: no model at $MODEL; writing a 0.6b-shaped test model."
    echo "run: NOTICE: its weights are random, so its text is noise. For real answers get"
    echo "     Qwen3-0.6B (README, 'The real Qwen3-0.6B') and run: INFERNO_MODEL=FILE.gguf make run"
    build/bin/make-test-model --config 0.6b --type q8_0 --out "$MODEL"
fi
mkdir -p "$RUN"
pids=()
stop() {
    trap - INT TERM EXIT
    echo "run: stopping"
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT
B=build/bin
$B/scheduler-svc --listen "ipc://$RUN/scheduler.ipc" 2>>"$RUN/scheduler.log" & pids+=($!)
$B/tokenizer-svc --model "$MODEL" --listen "ipc://$RUN/tokenizer.ipc" 2>>"$RUN/tokenizer.log" & pids+=($!)
$B/inferno-worker-cpu --model "$MODEL" --listen "ipc://$RUN/worker-0.ipc" --scheduler "ipc://$RUN/scheduler.ipc" \
    --threads "$(nproc)" --kv-tokens 16384 2>>"$RUN/worker-0.log" & pids+=($!)
$B/inferno-gateway --model "$MODEL" --port "$PORT" --scheduler "ipc://$RUN/scheduler.ipc" \
    --tokenizer "ipc://$RUN/tokenizer.ipc" 2>>"$RUN/gateway.log" & pids+=($!)
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "run: a process exited; logs in $RUN"; tail -3 "$RUN"/*.log; exit 1; }; done
    sleep 0.1
done
NAME=$(basename "$MODEL" .gguf)
cat <<MSG
run: inferno is serving $NAME at http://127.0.0.1:$PORT (logs in $RUN; Ctrl-C stops it)

  curl -s http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'

  python3 -c 'import openai; c = openai.OpenAI(base_url="http://127.0.0.1:$PORT/v1", api_key="none");
print(c.chat.completions.create(model="$NAME", messages=[{"role": "user", "content": "Hello!"}], max_tokens=32).choices[0].message.content)'
MSG
wait -n "${pids[@]}" || true
echo "run: a process exited; logs in $RUN"
