"""The qwen2 architecture (q/k/v biases, no q/k norm) against an independent
numpy forward pass (qwen_numpy.py): a tiny qwen2 model from make-test-model,
every kernel set, last-position logits and greedy continuations. The same
oracle checks the qwen3 path on tinyA, so a bug in the oracle cannot hide."""
import numpy as np
import pytest

from conftest import run
from qwen_numpy import NumpyQwen

PROMPT = [9707, 11, 1879, 0, 42, 151644, 77091, 198, 3838, 374, 220, 17, 10, 17, 30]


@pytest.fixture(scope="module")
def tiny_qwen2(bin_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2-f32.gguf"
    run(bin_dir / "make-test-model", "--config", "tiny", "--arch", "qwen2", "--type", "f32", "--out", path)
    return path


_want = {}


def oracle_logits(model, ids):
    """The numpy model's last-position logits (parsing a GGUF with gguf-py takes seconds: once per model)."""
    key = (str(model), tuple(ids))
    if key not in _want:
        oracle = NumpyQwen(model)
        _want[key] = (oracle.arch, oracle.forward(ids)[-1])
    return _want[key]


def our_logits(bin_dir, model, ids, tmp_path, kernels):
    out = tmp_path / f"logits-{kernels}.f32"
    run(bin_dir / "model-generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "--max-tokens", 1,
        "--dump-logits", out, "--kernels", kernels, "--threads", 2, skip_unsupported_kernels=kernels != "reference")
    return np.fromfile(out, dtype=np.float32)


@pytest.mark.parametrize("kernels", ["reference", "avx2", "avx512"])
@pytest.mark.parametrize("which", ["qwen2", "qwen3"])
def test_logits_match_numpy(bin_dir, ref_dir, tiny_qwen2, tmp_path, kernels, which):
    model = tiny_qwen2 if which == "qwen2" else ref_dir / "tinyA-f32.gguf"
    arch, want = oracle_logits(model, PROMPT)
    assert arch == which
    got = our_logits(bin_dir, model, PROMPT, tmp_path, kernels)
    assert got.shape == want.shape
    err = np.abs(got - want)
    assert err.max() < 1e-3, f"max |error| {err.max()} at id {err.argmax()}"
    assert list(np.argsort(-got)[:8]) == list(np.argsort(-want)[:8])


@pytest.fixture(scope="module")
def tiny_q4_k_m(bin_dir, tmp_path_factory):
    """A qwen2 model of the real Qwen2.5 file's mix (make-test-model --type q4_k_m): 288 columns take
    Q5_0 and Q8_0, the 512-column ffn_down Q6_K and Q4_K."""
    path = tmp_path_factory.mktemp("q4km") / "tiny-qwen2-q4_k_m.gguf"
    run(bin_dir / "make-test-model", "--config", "tiny", "--arch", "qwen2", "--type", "q4_k_m", "--hidden", 288,
        "--heads", 9, "--kv-heads", 3, "--head-dim", 32, "--ffn", 512, "--out", path)
    return path


@pytest.mark.parametrize("kernels", ["reference", "avx2", "avx512"])
def test_low_bit_types_match_numpy(bin_dir, tiny_q4_k_m, tmp_path, kernels):
    """Q5_0, Q4_K, Q6_K and Q8_0 weights in one model against the numpy forward pass over gguf-py's
    dequantizers. The reference kernels (float activations) agree to float rounding; the SIMD kernels
    quantize activations to 8 bits as llama.cpp does, which moves this random model's logits by about
    1% of their spread (test_kernels checks those kernels exactly against their 8-bit inputs)."""
    import gguf
    types = {t.tensor_type.name for t in gguf.GGUFReader(tiny_q4_k_m).tensors}
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K"} <= types
    _, want = oracle_logits(tiny_q4_k_m, PROMPT)
    got = our_logits(bin_dir, tiny_q4_k_m, PROMPT, tmp_path, kernels)
    err = np.abs(got - want)
    if kernels == "reference":
        assert err.max() < 1e-3, f"max |error| {err.max()} at id {err.argmax()}"
        assert list(np.argsort(-got)[:8]) == list(np.argsort(-want)[:8])
    else:
        assert err.mean() < 0.02 * want.std() and err.max() < 0.2 * want.std(), (err.mean(), err.max(), want.std())
        assert got.argmax() == want.argmax()


def check_greedy(bin_dir, model, prompt, n):
    """model-generate's greedy ids (one token a step, paged KV) against the oracle's."""
    oracle = NumpyQwen(model)
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(oracle.forward(ids)[-1])))
    p = run(bin_dir / "model-generate", "--model", model, "--prompt-ids", ",".join(map(str, prompt)),
            "--max-tokens", n, "--print-ids", "--ignore-eos", "--threads", 1)
    got = [int(x) for x in p.stdout.decode().strip().splitlines()[-1].split(",")]
    assert got == ids[len(prompt):]


def test_greedy_matches_numpy(bin_dir, tiny_qwen2):
    check_greedy(bin_dir, tiny_qwen2, PROMPT[:6], 8)


def test_qwen2_loader_errors(bin_dir, tiny_qwen2, tmp_path):
    """A qwen2 file without its biases is refused with the tensor named."""
    import subprocess
    data = bytearray(tiny_qwen2.read_bytes())
    i = data.find(b"blk.0.attn_q.bias")
    data[i:i + 17] = b"blk.0.attn_q.bia_"
    bad = tmp_path / "nobias.gguf"
    bad.write_bytes(bytes(data))
    p = subprocess.run([str(bin_dir / "model-generate"), "--model", str(bad), "--prompt-ids", "1"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "blk.0.attn_q.bias: missing" in p.stderr, p.stderr
