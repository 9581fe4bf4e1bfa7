"""The gemma3 architecture against the independent numpy forward pass
(qwen_numpy.py): a six-layer model from make-test-model with a sliding window
of 4, so that a 15-token prompt crosses the window on layers 0-4 while layer
5 stays global; every kernel set, last-position logits, greedy decoding past
the window (paged KV, one token a step), and the low-bit mix."""
import numpy as np
import pytest

from conftest import run
from qwen_numpy import NumpyQwen
from test_qwen2 import PROMPT, check_greedy, oracle_logits, our_logits

WINDOW = 4


def make_gemma3(bin_dir, path, *extra):
    run(bin_dir / "make-test-model", "--config", "tiny", "--arch", "gemma3", "--layers", 6, "--window", WINDOW,
        "--out", path, *extra)
    return path


@pytest.fixture(scope="module")
def tiny_gemma3(bin_dir, tmp_path_factory):
    return make_gemma3(bin_dir, tmp_path_factory.mktemp("gemma3") / "tiny-gemma3-f32.gguf", "--type", "f32")


def test_oracle_sees_the_window(tiny_gemma3):
    """Guards the test itself: the window must change the oracle's answer, or the checks below would not
    notice an engine that ignores it."""
    oracle = NumpyQwen(tiny_gemma3)
    assert oracle.arch == "gemma3" and oracle.window == WINDOW
    windowed = oracle.forward(PROMPT)[-1]
    oracle.window = 10**6
    assert np.abs(oracle.forward(PROMPT)[-1] - windowed).max() > 1e-2


@pytest.mark.parametrize("kernels", ["reference", "avx2", "avx512"])
def test_logits_match_numpy(bin_dir, tiny_gemma3, tmp_path, kernels):
    arch, want = oracle_logits(tiny_gemma3, PROMPT)
    assert arch == "gemma3"
    got = our_logits(bin_dir, tiny_gemma3, PROMPT, tmp_path, kernels)
    err = np.abs(got - want)
    assert err.max() < 1e-3, f"max |error| {err.max()} at id {err.argmax()}"
    assert list(np.argsort(-got)[:8]) == list(np.argsort(-want)[:8])


def test_greedy_matches_numpy(bin_dir, tiny_gemma3):
    """Decoding one token a step from a 3-token prompt: positions 4 onwards see only part of the cache."""
    check_greedy(bin_dir, tiny_gemma3, PROMPT[:3], 10)


@pytest.mark.parametrize("kernels", ["reference", "avx512"])
def test_low_bit_gemma3_matches_numpy(bin_dir, tmp_path, kernels):
    """The real Gemma 3 270M file's mix (Q5_0, Q8_0, Q4_K, Q6_K), with the same bounds as the qwen2 mix."""
    model = make_gemma3(bin_dir, tmp_path / "tiny-gemma3-q4_k_m.gguf", "--type", "q4_k_m", "--hidden", 256,
                        "--heads", 4, "--kv-heads", 1, "--head-dim", 64, "--ffn", 512)
    _, want = oracle_logits(model, PROMPT)
    got = our_logits(bin_dir, model, PROMPT, tmp_path, kernels)
    err = np.abs(got - want)
    if kernels == "reference":
        assert err.max() < 1e-3, f"max |error| {err.max()} at id {err.argmax()}"
    else:
        assert err.mean() < 0.02 * want.std() and err.max() < 0.2 * want.std(), (err.mean(), err.max(), want.std())
        assert got.argmax() == want.argmax()
