#!/usr/bin/env bash
# Tokenizer encode speed, single thread, on a real-text corpus built from
# what every Debian machine has: license texts (English prose), Python's
# standard library (code) and the multilingual reference strings.
#   bench/tokenizer-bench.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-../shared/reference/tinyA-q8_0.gguf}
CORPUS=build/bench/corpus.txt
mkdir -p build/bench
if [[ ! -f $CORPUS ]]; then
    {
        cat /usr/share/common-licenses/* 2>/dev/null
        find "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" -maxdepth 1 -name '*.py' \
            | sort | head -60 | xargs cat
        python3 -c 'import json; print("\n".join(r["text"] for r in json.load(open("../shared/reference/tokenizer_ref.json"))))'
    } >"$CORPUS"
fi
echo "corpus: $CORPUS ($(du -h "$CORPUS" | cut -f1))"
build/bin/tokenizer-demo --model "$MODEL" --bench "$CORPUS" --repeat 3
