"""Side-by-side with llama.cpp on the same GGUF, same machine, same run.

    python bench/compare-llama.py MODEL.gguf [--threads 2] [--prompt 128] [--gen 32] [--repeat 3] [--kv-type f16]

Each side is measured --repeat times, alternating (one of ours, one of
theirs, ...), so that a noisy neighbour on a shared VM hits both alike;
the table gives the medians, the JSON every run. Both sides warm up first
and keep their KV cache in the same precision: f16 (llama.cpp's default)
unless --kv-type f32.

Needs the llama_cpp Python package (pip install llama-cpp-python builds
llama.cpp from source, about 10 minutes on 2 cores); inferno's numbers come
from build/bin/inferno-bench and bench/tokenizer-bench.sh's corpus.
Prints one table: tokenizer MB/s, prefill tok/s, decode tok/s for both."""
import argparse
import json
import pathlib
import statistics
import subprocess
import time

import llama_cpp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def llama_open(model, threads, prompt, gen, kv_type):
    ggml_type = {"f32": 0, "f16": 1}[kv_type]  # enum ggml_type
    return llama_cpp.Llama(model_path=str(model), n_ctx=prompt + gen + 16, n_threads=threads, n_threads_batch=threads,
                           n_batch=512, type_k=ggml_type, type_v=ggml_type, verbose=False)


def llama_tokenizer(llm, corpus):
    text = corpus.read_bytes()
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        ids = llm.tokenize(text, add_bos=False, special=True)
        best = min(best, time.perf_counter() - t)
    return {"tokenizer_mb_s": len(text) / best / 1e6, "tokens": len(ids)}


def llama_numbers(llm, prompt, gen):
    tokens = [(i * 2654435761) % (llm.n_vocab() - 1000) for i in range(prompt)]
    llm.reset()
    llm.eval(tokens)  # warm-up, as inferno-bench's
    llm.reset()
    t = time.perf_counter()
    llm.eval(tokens)
    prefill = prompt / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(gen):
        llm.eval([tokens[i % prompt]])
    decode = gen / (time.perf_counter() - t)
    return {"prefill_tok_s": prefill, "decode_tok_s": decode}


def inferno_numbers(model, threads, prompt, gen, kv_type):
    out = subprocess.run([ROOT / "build/bin/inferno-bench", "--model", model, "--threads", str(threads), "--prompt",
                          str(prompt), "--gen", str(gen), "--batch", "1", "--kv-type", kv_type, "--json"],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return {"prefill_tok_s": r["prefill_tokens_per_s"], "decode_tok_s": r["decode"][0]["tokens_per_s"],
            "decode_gb_s": r["decode"][0]["gb_per_s"], "engine": r["engine"]}


def inferno_tokenizer(model, corpus):
    tok = subprocess.run([ROOT / "build/bin/tokenizer-demo", "--model", model, "--bench", corpus, "--repeat", "3"],
                         capture_output=True, text=True, check=True).stdout
    return {"tokenizer_mb_s": float(tok.split(" MB/s")[0].split()[-1])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kv-type", choices=["f16", "f32"], default="f16")
    a = ap.parse_args()
    corpus = ROOT / "build/bench/corpus.txt"
    if not corpus.exists():
        subprocess.run([ROOT / "bench/tokenizer-bench.sh"], check=True, capture_output=True)
    llm = llama_open(a.model, a.threads, a.prompt, a.gen, a.kv_type)
    runs = {"inferno": [], "llama.cpp": []}
    for _ in range(a.repeat):
        runs["inferno"].append(inferno_numbers(a.model, a.threads, a.prompt, a.gen, a.kv_type))
        runs["llama.cpp"].append(llama_numbers(llm, a.prompt, a.gen))
    ours = {**inferno_tokenizer(a.model, corpus), **{k: statistics.median(r[k] for r in runs["inferno"])
                                                     for k in ("prefill_tok_s", "decode_tok_s")}}
    theirs = {**llama_tokenizer(llm, corpus), **{k: statistics.median(r[k] for r in runs["llama.cpp"])
                                                 for k in ("prefill_tok_s", "decode_tok_s")}}
    print(f"{a.model}, {a.threads} threads, prompt {a.prompt}, gen {a.gen}, {a.kv_type} KV cache, "
          f"medians of {a.repeat} alternating runs")
    print(f"{'':24}{'inferno':>12}{'llama.cpp':>12}{'ratio':>8}")
    for key, label in [("tokenizer_mb_s", "tokenizer MB/s"), ("prefill_tok_s", "prefill tok/s"),
                       ("decode_tok_s", "decode tok/s (batch 1)")]:
        print(f"{label:24}{ours[key]:12.1f}{theirs[key]:12.1f}{ours[key] / theirs[key]:8.2f}")
    print(json.dumps({"inferno": ours, "llama.cpp": theirs, "runs": runs}))


if __name__ == "__main__":
    main()
