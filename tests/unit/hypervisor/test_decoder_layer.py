"""examples/primitives/decoder_layer.pxp (a LLaMA-family decoder layer: RMSNORM, LINEAR q/k/v,
RESHAPE, ROPE, PERMUTE, GQA by reshape, CAUSAL_MASK, SOFTMAX, SiLU gate, residuals, the KV
cache appended with SLICE_WRITE at pos) on every executor, against a plain NumPy layer
written here head by head, on random weights of tiny dims: a prefill (T > 1) and then decode
steps (T = 1) that attend to the cache the earlier launches wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from executors import EXECUTORS, Scalar, expect_refusal, make, refuses, run

ROOT = Path(__file__).resolve().parents[3]
SOURCE = (ROOT / "examples" / "primitives" / "decoder_layer.pxp").read_text(encoding="utf-8")

H, HKV, HD, F, S = 6, 2, 8, 24, 12  # query heads, KV heads, head dim, FFN, cache positions
D, KV = H * HD, HKV * HD
BASE, EPS = 100000.0, 1e-5


def weights(rng, dtype):
    shapes = {"attn_norm": (D,), "wq": (D, D), "wk": (KV, D), "wv": (KV, D), "wo": (D, D), "ffn_norm": (D,),
              "w_gate": (F, D), "w_up": (F, D), "w_down": (D, F)}
    w = {n: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(dtype) for n, s in shapes.items()}
    w["attn_norm"] = (1 + 0.1 * rng.standard_normal(D)).astype(dtype)
    w["ffn_norm"] = (1 + 0.1 * rng.standard_normal(D)).astype(dtype)
    return w


def reference_layer(x, pos, w, k_cache, v_cache):
    """One layer in float64, written the plain way: per head, per position."""
    x = x.astype(np.float64)
    w = {n: v.astype(np.float64) for n, v in w.items()}
    t_len = x.shape[0]

    def rms(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + EPS) * g

    def rope(v):  # v: [T, heads, HD]; adjacent pairs, token t at position pos + t
        out = v.copy()
        for t in range(t_len):
            for i in range(HD // 2):
                angle = (pos + t) * BASE ** (-2.0 * i / HD)
                a, b = v[t, :, 2 * i], v[t, :, 2 * i + 1]
                out[t, :, 2 * i] = a * np.cos(angle) - b * np.sin(angle)
                out[t, :, 2 * i + 1] = a * np.sin(angle) + b * np.cos(angle)
        return out

    h = rms(x, w["attn_norm"])
    q = rope((h @ w["wq"].T).reshape(t_len, H, HD))
    k = rope((h @ w["wk"].T).reshape(t_len, HKV, HD))
    v = (h @ w["wv"].T).reshape(t_len, HKV, HD)
    k_cache = k_cache.astype(np.float64)
    v_cache = v_cache.astype(np.float64)
    k_cache[:, pos:pos + t_len] = k.transpose(1, 0, 2)
    v_cache[:, pos:pos + t_len] = v.transpose(1, 0, 2)
    att = np.zeros((t_len, H, HD))
    for head in range(H):
        kv = head // (H // HKV)
        for t in range(t_len):
            seen = pos + t + 1  # keys 0 .. pos+t
            scores = k_cache[kv, :seen] @ q[t, head] / np.sqrt(HD)
            p = np.exp(scores - scores.max())
            att[t, head] = (p / p.sum()) @ v_cache[kv, :seen]
    r = x + att.reshape(t_len, D) @ w["wo"].T
    h = rms(r, w["ffn_norm"])
    g = h @ w["w_gate"].T
    ffn = (g / (1 + np.exp(-g)) * (h @ w["w_up"].T)) @ w["w_down"].T
    return r + ffn, k_cache, v_cache


def as_dtype(source: str, dtype: str) -> str:
    return source.replace("float[", f"{dtype}[").replace("GPU_PARAM scale float ", f"GPU_PARAM scale {dtype} ")


@pytest.mark.parametrize("backend", EXECUTORS)
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_prefill_then_decode_matches_numpy(backend, dtype, tol):
    rng = np.random.default_rng(7)
    ex, w = make(backend), weights(rng, dtype)
    if refuses(backend, dtype):  # wgpu: WGSL has no float64
        from primitive_lang import TensorSpec
        from primitive_lang.ast import DType

        return expect_refusal(backend, ex.zeros, TensorSpec(DType(dtype), (HKV, S, HD)))
    src = as_dtype(SOURCE, dtype)
    k_cache = np.zeros((HKV, S, HD), dtype)
    v_cache = np.zeros((HKV, S, HD), dtype)
    ref_k, ref_v = k_cache.astype(np.float64), v_cache.astype(np.float64)
    pos = 0
    for t_len in (5, 1, 1, 3, 1):  # a prefill, decode steps, a second chunk, a last decode step
        x = rng.standard_normal((t_len, D)).astype(dtype)
        values = {"x": x, "pos": Scalar(pos, "int32"), "scale": Scalar(1 / np.sqrt(HD), dtype), **w,
                  "k_cache": k_cache, "v_cache": v_cache}
        got = run(ex, src, values)
        want, ref_k, ref_v = reference_layer(x, pos, w, ref_k, ref_v)
        np.testing.assert_allclose(got["x"], want, rtol=tol, atol=tol)
        np.testing.assert_allclose(got["k_cache"], ref_k, rtol=tol, atol=tol)
        np.testing.assert_allclose(got["v_cache"], ref_v, rtol=tol, atol=tol)
        for n in w:  # the shared weights are never written
            np.testing.assert_array_equal(got[n], w[n])
        k_cache, v_cache = got["k_cache"], got["v_cache"]
        pos += t_len
    assert pos == S - 1  # the last step wrote position S-2; S-1 is untouched
    assert not k_cache[:, S - 1].any()


@pytest.mark.parametrize("backend", EXECUTORS)
def test_a_decode_step_past_the_cache_fails_and_leaves_it_alone(backend):
    from hypervisor.errors import IndexOutOfRange

    rng = np.random.default_rng(8)
    ex, w = make(backend), weights(rng, "float32")
    cache = rng.standard_normal((HKV, S, HD)).astype(np.float32)
    x = rng.standard_normal((1, D)).astype(np.float32)
    values = {"x": x, "pos": Scalar(S, "int32"), "scale": Scalar(0.25, "float32"), **w, "k_cache": cache,
              "v_cache": cache.copy()}
    arrays = {}
    with pytest.raises(IndexOutOfRange, match=f"start={S} is out of range"):
        run(ex, SOURCE, values, arrays=arrays)
    np.testing.assert_array_equal(ex.to_host(arrays["k_cache"]), cache)
    np.testing.assert_array_equal(ex.to_host(arrays["x"]), x)
