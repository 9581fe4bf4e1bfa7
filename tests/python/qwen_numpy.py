"""A Qwen2 / Qwen3 / Gemma 3 forward pass in numpy (float64), reading the GGUF
through the official gguf package (its own dequantizers): an oracle
independent of our C code, for architectures and quantization types the
shared reference does not cover. Written from the transformers modelling
code's semantics: pre-norm RMSNorm, q/k/v biases (qwen2) or per-head q/k
RMSNorm (qwen3, gemma3), NeoX RoPE, causal GQA attention, SwiGLU, tied or
separate output head; gemma3 adds embeddings scaled by sqrt(hidden), norms
on each block's output, GeGLU (tanh GELU), and sliding-window layers (five
of every six) with RoPE base 10000 (norm gains in the GGUF already hold
Gemma's 1 + w)."""
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class NumpyQwen:
    def __init__(self, path):
        self.reader = GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.field("general.architecture")
        a = self.arch
        self.n_layers = self.field(f"{a}.block_count")
        self.hidden = self.field(f"{a}.embedding_length")
        self.n_heads = self.field(f"{a}.attention.head_count")
        self.n_kv = self.field(f"{a}.attention.head_count_kv")
        self.head_dim = self.field(f"{a}.attention.key_length", self.hidden // self.n_heads)
        self.eps = self.field(f"{a}.attention.layer_norm_rms_epsilon")
        self.base = self.field(f"{a}.rope.freq_base", 1e6)
        self.gemma = a == "gemma3"
        self.window = self.field(f"{a}.attention.sliding_window") if self.gemma else None
        self.cache = {}

    def field(self, key, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def w(self, name):
        """A tensor as float64 [rows][cols] (a vector as [cols]); None when absent."""
        if name not in self.cache:
            t = self.tensors.get(name)
            if t is None:
                return None
            v = dequantize(t.data, t.tensor_type).astype(np.float64)
            cols = int(t.shape[0])
            self.cache[name] = v.reshape(-1, cols) if len(t.shape) > 1 and t.shape[1] > 1 else v.reshape(cols)
        return self.cache[name]

    def rms(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def sliding(self, layer):
        return self.gemma and layer % 6 != 5

    def rope(self, x, pos, base):  # x [T][heads][hd]
        hd = self.head_dim
        inv = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def forward(self, ids):
        """Logits [T][vocab] for a prompt of token ids (positions 0..T-1)."""
        T, hd = len(ids), self.head_dim
        x = self.w("token_embd.weight")[np.asarray(ids)]
        if self.gemma:
            x = x * np.sqrt(self.hidden)
        pos = np.arange(T)
        causal = np.triu(np.full((T, T), -np.inf), 1)
        for l in range(self.n_layers):
            p = f"blk.{l}."
            mask, base = causal, self.base
            if self.sliding(l):  # token t sees positions t - window + 1 .. t
                mask = causal + np.tril(np.full((T, T), -np.inf), -self.window)
                base = 10000.0
            h = self.rms(x, self.w(p + "attn_norm.weight"))
            qkv = []
            for n in "qkv":
                y = h @ self.w(p + f"attn_{n}.weight").T
                b = self.w(p + f"attn_{n}.bias")
                qkv.append(y if b is None else y + b)
            q = qkv[0].reshape(T, self.n_heads, hd)
            k = qkv[1].reshape(T, self.n_kv, hd)
            v = qkv[2].reshape(T, self.n_kv, hd)
            if self.w(p + "attn_q_norm.weight") is not None:
                q = self.rms(q, self.w(p + "attn_q_norm.weight"))
                k = self.rms(k, self.w(p + "attn_k_norm.weight"))
            q, k = self.rope(q, pos, base), self.rope(k, pos, base)
            group = self.n_heads // self.n_kv
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            att = np.einsum("hts,shd->thd", s, v).reshape(T, -1) @ self.w(p + "attn_output.weight").T
            if self.gemma:
                att = self.rms(att, self.w(p + "post_attention_norm.weight"))
            x = x + att
            h = self.rms(x, self.w(p + "ffn_norm.weight"))
            g = h @ self.w(p + "ffn_gate.weight").T
            if self.gemma:
                act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
            else:
                act = g / (1 + np.exp(-g))
            f = (act * (h @ self.w(p + "ffn_up.weight").T)) @ self.w(p + "ffn_down.weight").T
            if self.gemma:
                f = self.rms(f, self.w(p + "post_ffw_norm.weight"))
            x = x + f
        out = self.w("output.weight")
        out = self.w("token_embd.weight") if out is None else out
        return self.rms(x, self.w("output_norm.weight")) @ out.T
