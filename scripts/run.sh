#!/usr/bin/env bash
# make run: start inferno in the foreground. The services land with later
# issues (see README); until then this builds the tools, makes a test model
# and shows what it holds.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${INFERNO_MODEL:-build/models/test-0.6b-q8_0.gguf}
if [[ ! -f $MODEL ]]; then
    mkdir -p "$(dirname "$MODEL")"
    echo "run: no model at $MODEL; writing a 0.6b-shaped test model (random weights) ..."
    build/bin/make-test-model --config 0.6b --type q8_0 --out "$MODEL"
fi
build/bin/gguf-inspect "$MODEL" | sed -n 1,40p
echo
echo "run: generating with the CPU engine (random weights: expect noise) ..."
build/bin/model-generate --model "$MODEL" --prompt "Hello" --chat --max-tokens 16 --threads "$(nproc)" || true
echo
echo "run: the gateway, tokenizer, scheduler and worker services are not built yet;"
echo "     see README.md 'Status' for what works today."
