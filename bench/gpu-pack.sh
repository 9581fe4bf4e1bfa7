#!/usr/bin/env bash
# Packs what bench/gpu-check.sh needs on a GPU machine that has CUDA but
# none of our libraries or reference files (the `device` machines):
# the shared libraries our binaries link, the tinyA references and the
# tokenizer for make-test-model, into .devkit/ (gitignored). Build first
# (make all tests); then run gpu-check.sh there, carrying build/bin,
# build/lib, build/tests and .devkit.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.devkit
rm -rf "$kit" && mkdir -p "$kit/lib"
for lib in $(ldd build/bin/* build/tests/test_engine 2>/dev/null | awk '/=>/ {print $3}' | sort -u); do
    case $(basename "$lib") in
    libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux*) ;; # the machine's own
    *) cp -L "$lib" "$kit/lib/" ;;
    esac
done
ref=../shared/reference
tar cJf "$kit/reference.tar.xz" -C "$ref/.." reference/tinyA-f32.gguf reference/tinyA-bf16.gguf reference/tinyA-q8_0.gguf \
    reference/tinyA-exact.logits.f32 reference/tinyA-exact.ref.json reference/tinyA-q8_0.logits.f32 \
    reference/tinyA-q8_0.ref.json
tar cJf "$kit/tokenizer.tar.xz" -C ../shared models/qwen3-tokenizer
du -sh "$kit"
