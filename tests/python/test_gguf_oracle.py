"""Our GGUF reader, dequantizers and make-test-model against the official
gguf Python package (llama.cpp's gguf-py), used as the oracle."""
import json

import gguf
import numpy as np
import pytest

from conftest import run

REF_FILES = ["tinyA-f32.gguf", "tinyA-bf16.gguf", "tinyA-q8_0.gguf"]


def inspect_json(bin_dir, path, full=True):
    args = [bin_dir / "gguf-inspect", path, "--json"] + (["--full"] if full else [])
    return json.loads(run(*args).stdout)


def oracle_value(field):
    """A metadata value as the gguf package reads it, in JSON-comparable form."""
    value = field.contents()
    if isinstance(value, float):
        return value
    return value


def assert_same_metadata(ours, reader):
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(ours["metadata"].keys()) == list(fields.keys())
    for key, field in fields.items():
        want, got = oracle_value(field), ours["metadata"][key]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=0, abs=0), key  # float32 widened exactly
        elif isinstance(want, list) and want and isinstance(want[0], float):
            assert got == want, key
        else:
            assert got == want, key


def assert_same_tensors(ours, reader, path):
    assert len(ours["tensors"]) == len(reader.tensors)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    for mine, theirs in zip(ours["tensors"], reader.tensors):
        assert mine["name"] == theirs.name
        assert mine["type"] == theirs.tensor_type.name
        assert mine["shape"] == [int(x) for x in theirs.shape]
        assert mine["data_offset"] == theirs.data_offset
        assert mine["bytes"] == theirs.n_bytes
        ours_bytes = raw[mine["data_offset"]:mine["data_offset"] + mine["bytes"]]
        assert np.array_equal(ours_bytes, np.frombuffer(theirs.data.tobytes(), dtype=np.uint8)), mine["name"]


def our_dequant(bin_dir, path, name, tmp_path):
    out = tmp_path / "t.f32"
    run(bin_dir / "gguf-inspect", path, "--dequant", name, "--out", out)
    return np.fromfile(out, dtype="<f4")


def oracle_dequant(tensor):
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(-1)


@pytest.mark.parametrize("name", REF_FILES)
def test_reference_metadata_and_tensors(bin_dir, ref_dir, name):
    path = ref_dir / name
    ours, reader = inspect_json(bin_dir, path), gguf.GGUFReader(path)
    assert ours["version"] == 3 and ours["alignment"] == 32
    assert_same_metadata(ours, reader)
    assert_same_tensors(ours, reader, path)


@pytest.mark.parametrize("name", REF_FILES)
def test_reference_dequant_matches_oracle(bin_dir, ref_dir, name, tmp_path):
    path = ref_dir / name
    for tensor in gguf.GGUFReader(path).tensors:
        ours = our_dequant(bin_dir, path, tensor.name, tmp_path)
        np.testing.assert_array_equal(ours, oracle_dequant(tensor), err_msg=tensor.name)


def test_every_type_dequant_matches_oracle(bin_dir, tests_dir, tmp_path):
    """Random blocks of every type we read (Q4_0 ... Q6_K, F16, BF16) decode
    to the same floats as gguf-py's numpy dequantizers."""
    path = tmp_path / "samples.gguf"
    run(tests_dir / "write-type-samples", path)
    reader = gguf.GGUFReader(path)
    seen = set()
    for tensor in reader.tensors:
        ours = our_dequant(bin_dir, path, tensor.name, tmp_path)
        want = oracle_dequant(tensor)
        np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6, err_msg=tensor.name)
        seen.add(tensor.tensor_type.name)
    assert seen == {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}
    # and every metadata value type round-trips through both readers
    assert_same_metadata(inspect_json(bin_dir, path), reader)


def test_inspect_json_summary(bin_dir, ref_dir):
    ours = inspect_json(bin_dir, ref_dir / "tinyA-q8_0.gguf", full=False)
    assert ours["tensor_count"] == len(ours["tensors"]) == 24
    assert ours["metadata"]["qwen3.attention.head_count_kv"] == 2
    tokens = ours["metadata"]["tokenizer.ggml.tokens"]
    assert tokens["count"] == 151936 and tokens["elem_type"] == "str"


def test_inspect_text_and_errors(bin_dir, ref_dir, tmp_path):
    out = run(bin_dir / "gguf-inspect", ref_dir / "tinyA-q8_0.gguf").stdout.decode()
    assert "qwen3.attention.head_count_kv" in out and "token_embd.weight" in out
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    import subprocess
    p = subprocess.run([bin_dir / "gguf-inspect", bad], capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.startswith("gguf-inspect: gguf: ") and "count" in p.stderr
    assert subprocess.run([bin_dir / "gguf-inspect", "--version"], capture_output=True).returncode == 0
    assert subprocess.run([bin_dir / "gguf-inspect", "--help"], capture_output=True).returncode == 0


TOKENIZER_KEYS = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.bos_token_id", "tokenizer.chat_template"]


@pytest.fixture(scope="module")
def tinyA_reader(ref_dir):
    return gguf.GGUFReader(ref_dir / "tinyA-q8_0.gguf")


@pytest.mark.parametrize("wtype,ref", [("f32", "tinyA-f32.gguf"), ("bf16", "tinyA-bf16.gguf"),
                                       ("q8_0", "tinyA-q8_0.gguf"), ("f16", None)])
def test_make_test_model_tiny(bin_dir, ref_dir, tmp_path, tinyA_reader, wtype, ref):
    path = tmp_path / f"tiny-{wtype}.gguf"
    run(bin_dir / "make-test-model", "--config", "tiny", "--type", wtype, "--seed", "7", "--out", path)
    reader = gguf.GGUFReader(path)
    ours = inspect_json(bin_dir, path)
    # both readers see the same file
    assert_same_metadata(ours, reader)
    assert_same_tensors(ours, reader, path)
    # the tokenizer is tinyA's, value for value
    for key in TOKENIZER_KEYS:
        assert reader.fields[key].contents() == tinyA_reader.fields[key].contents(), key
    # key order, names, types and shapes are llama.cpp converter's
    if ref:
        ref_reader = gguf.GGUFReader(ref_dir / ref)
        assert list(reader.fields.keys()) == list(ref_reader.fields.keys())
        for key in ["qwen3.block_count", "qwen3.embedding_length", "qwen3.attention.head_count",
                    "qwen3.attention.head_count_kv", "general.file_type", "general.size_label"]:
            assert reader.fields[key].contents() == ref_reader.fields[key].contents(), key
        assert [(t.name, t.tensor_type, list(t.shape)) for t in reader.tensors] == \
               [(t.name, t.tensor_type, list(t.shape)) for t in ref_reader.tensors]
    # weights are sane: norms near 1, embeddings give non-uniform logits
    t = {t.name: t for t in reader.tensors}
    norm = oracle_dequant(t["blk.0.attn_norm.weight"])
    assert abs(norm.mean() - 1.0) < 0.1 and 0.03 < norm.std() < 0.3
    emb = oracle_dequant(t["token_embd.weight"]).reshape(-1, 32)
    logits = emb @ np.ones(32, dtype=np.float32)  # an RMS-normalised hidden state of ones
    assert logits.std() > 1.0


def test_make_test_model_deterministic(bin_dir, tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    for path, seed in [(a, "3"), (b, "3"), (c, "4")]:
        run(bin_dir / "make-test-model", "--config", "tiny", "--type", "bf16", "--seed", seed, "--out", path)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_make_test_model_0_6b_layout(bin_dir, tmp_path):
    """The 0.6b config has Qwen3-0.6B's hyperparameters and tensor shapes.
    Two layers instead of 28 keep the file small; the layer count itself is
    checked from the default's metadata in test_make_test_model_0_6b_full."""
    path = tmp_path / "small-0.6b.gguf"
    run(bin_dir / "make-test-model", "--config", "0.6b", "--layers", "2", "--type", "q8_0", "--out", path)
    reader = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("tokenizer")}
    assert f["qwen3.embedding_length"] == 1024 and f["qwen3.feed_forward_length"] == 3072
    assert f["qwen3.attention.head_count"] == 16 and f["qwen3.attention.head_count_kv"] == 8
    assert f["qwen3.attention.key_length"] == 128 and f["qwen3.context_length"] == 40960
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    assert shapes["token_embd.weight"] == [1024, 151936]
    assert shapes["blk.1.attn_q.weight"] == [1024, 2048]
    assert shapes["blk.1.attn_k.weight"] == [1024, 1024]
    assert shapes["blk.1.attn_output.weight"] == [2048, 1024]
    assert shapes["blk.1.ffn_down.weight"] == [3072, 1024]
    assert shapes["blk.1.attn_q_norm.weight"] == [128]
    assert "output.weight" not in shapes


def test_make_test_model_errors(bin_dir, tmp_path):
    import subprocess
    for args in (["--config", "huge"], ["--config", "tiny", "--type", "q4_k"], ["--config", "tiny", "--heads", "3"],
                 ["--config", "tiny", "--layers", "x"]):
        p = subprocess.run([bin_dir / "make-test-model", *args, "--out", tmp_path / "x.gguf"],
                           capture_output=True, text=True)
        assert p.returncode != 0 and p.stderr.startswith("make-test-model: "), args


def test_make_test_model_0_6b_full(bin_dir, tmp_path):
    """The default 0.6b config: all 28 layers, 310 tensors, 596M parameters
    (Qwen3-0.6B with tied embeddings), about 0.64 GB in Q8_0."""
    path = tmp_path / "0.6b-q8_0.gguf"
    run(bin_dir / "make-test-model", "--config", "0.6b", "--type", "q8_0", "--out", path)
    reader = gguf.GGUFReader(path)
    assert reader.fields["qwen3.block_count"].contents() == 28
    assert reader.fields["general.size_label"].contents() == "596M"
    names = [t.name for t in reader.tensors]
    assert len(names) == 1 + 28 * 11 + 1 and names[-1] == "output_norm.weight"
    assert sum(int(t.n_elements) for t in reader.tensors) == 596049920
    assert 0.63e9 < path.stat().st_size < 0.65e9
