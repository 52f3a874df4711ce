"""Tiny LLaMA-family GGUF files made by the tests themselves (the `gguf` package's writer):
a few layers of random weights and a byte-level BPE vocabulary, so that the model store,
the device's MODEL_OPEN and a whole generation can be checked in well under a second,
with no model fetched from anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def byte_alphabet() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte value (printable
    Latin-1 bytes stand for themselves, the others are shifted past U+0100)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out, shifted = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + shifted)
            shifted += 1
    return [out[b] for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]


def write_tiny_llama(path: str | Path, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 4,
                     n_head_kv: int = 2, n_ff: int = 64, seed: int = 0, quantize: bool = True,
                     architecture: str = "llama") -> Path:
    """A LLaMA GGUF with random weights (normal, scaled so activations stay O(1)), tied
    embeddings, Q8_0 for the big matrices when ``quantize`` (F32 otherwise)."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    path = Path(path)
    rng = np.random.default_rng(seed)
    alphabet = byte_alphabet()
    tokens = SPECIALS + alphabet + ["".join(m.split()) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    vocab = len(tokens)
    head_dim = n_embd // n_head
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)

    def mat(name: str, rows: int, cols: int, scale: float) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if quantize and cols % 32 == 0:
            w.add_tensor(name, gguf.quants.quantize(a, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(name, a)

    def vec(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", vocab, n_embd, 1.0)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_embd, n_embd, n_embd ** -0.5)
        mat(p + "attn_k.weight", n_head_kv * head_dim, n_embd, n_embd ** -0.5)
        mat(p + "attn_v.weight", n_head_kv * head_dim, n_embd, n_embd ** -0.5)
        mat(p + "attn_output.weight", n_embd, n_embd, n_embd ** -0.5)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd, n_embd ** -0.5)
        mat(p + "ffn_up.weight", n_ff, n_embd, n_embd ** -0.5)
        mat(p + "ffn_down.weight", n_embd, n_ff, n_ff ** -0.5)
    vec("output_norm.weight", n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
