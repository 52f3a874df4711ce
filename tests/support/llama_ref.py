"""A plain NumPy forward pass of a LLaMA-family model, written from the architecture's
definition and nothing of pxOS: the reference pxOS's generation is checked against
(tight tolerance), beside llama.cpp itself (which quantizes activations, so looser).

Weights come straight from the GGUF file through the `gguf` package (dequantized to
float32); shapes in numpy order, a linear weight as [out, in].
"""

from __future__ import annotations

import numpy as np

from hypervisor.models.gguf_file import open_gguf


class LlamaReference:
    def __init__(self, path: str):
        mf = open_gguf(path)
        self.cfg = mf.config
        self.w = {e.name: a for e, a in mf.arrays(np.dtype(np.float32))}
        self.reset()

    def reset(self) -> None:
        c = self.cfg
        self.k = np.zeros((c["n_layer"], 0, c["n_head_kv"], c["head_dim"]), np.float32)
        self.v = np.zeros_like(self.k)
        self.pos = 0

    def _rms(self, x, w):
        ms = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
        return (x / np.sqrt(ms + self.cfg["rms_eps"])).astype(np.float32) * w

    def _rope(self, x, pos0):
        # x: [T, heads, D]; adjacent pairs (GGUF LLaMA, llama.cpp's "normal" mode)
        t, _, d = x.shape
        p = np.arange(pos0, pos0 + t, dtype=np.float64)[:, None]
        inv = self.cfg["rope_base"] ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ang = p * inv[None, :]  # [T, D/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
        out = np.empty(x.shape, np.float64)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out.astype(np.float32)

    def forward(self, tokens) -> np.ndarray:
        """Logits [T, vocab] for ``tokens`` appended after what was fed before."""
        c, w = self.cfg, self.w
        H, Hkv, D = c["n_head"], c["n_head_kv"], c["head_dim"]
        tokens = np.asarray(tokens, dtype=np.int64)
        T = len(tokens)
        x = w["token_embd.weight"][tokens]
        ks, vs = [], []
        for layer in range(c["n_layer"]):
            p = f"blk.{layer}."
            h = self._rms(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, H, D)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, Hkv, D)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, Hkv, D)
            q, k = self._rope(q, self.pos), self._rope(k, self.pos)
            K = np.concatenate([self.k[layer], k], axis=0)  # [S, Hkv, D]
            V = np.concatenate([self.v[layer], v], axis=0)
            ks.append(K)
            vs.append(V)
            S = K.shape[0]
            out = np.empty((T, H, D), np.float32)
            allowed = np.arange(S)[None, :] <= (self.pos + np.arange(T))[:, None]
            for head in range(H):
                kv = head // (H // Hkv)
                s = (q[:, head] @ K[:, kv].T) / np.float32(np.sqrt(D))
                s = np.where(allowed, s, -np.inf)
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                out[:, head] = s @ V[:, kv]
            x = x + out.reshape(T, H * D) @ w[p + "attn_output.weight"].T
            h = self._rms(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            u = h @ w[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "ffn_down.weight"].T
        self.k, self.v = np.stack(ks), np.stack(vs)
        self.pos += T
        x = self._rms(x, w["output_norm.weight"])
        head = w.get("output.weight", w["token_embd.weight"])
        return x @ head.T
