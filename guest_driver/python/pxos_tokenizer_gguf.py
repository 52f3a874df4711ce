"""pxos_tokenizer_gguf: the host side of pxos_tokenizer, reading its metadata from a GGUF file.

`tokenizer_metadata(path)` returns the mapping `pxos_tokenizer.Tokenizer.from_metadata` takes:
every GGUF key "tokenizer.ggml.<key>" named in pxos_tokenizer.METADATA_KEYS that the file
has, under <key>, as plain JSON-able values (str, int, bool, lists of them). The daemon puts
exactly this mapping into the model metadata a guest reads. It needs the `gguf` package;
the guest-side module does not.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gguf


def _tokenizer_module():
    """pxos_tokenizer, imported from beside this file when the folder is not on sys.path."""
    mod = sys.modules.get("pxos_tokenizer")
    if mod is not None:
        return mod
    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:
        sys.path.append(str(here))  # pxos_tokenizer imports its sibling pxos_pretokenize
    spec = importlib.util.spec_from_file_location("pxos_tokenizer", here / "pxos_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pxos_tokenizer"] = mod
    spec.loader.exec_module(mod)
    return mod


_tok = _tokenizer_module()
METADATA_KEYS = _tok.METADATA_KEYS
TokenizerError = _tok.TokenizerError
GGUF_PREFIX = "tokenizer.ggml."


def tokenizer_metadata(path: str | Path) -> dict[str, object]:
    """The tokenizer keys of the GGUF file at path, "tokenizer.ggml." removed."""
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"reading GGUF file {path}: {e}") from e
    meta: dict[str, object] = {}
    for key in METADATA_KEYS:
        field = reader.fields.get(GGUF_PREFIX + key)
        if field is None:
            continue
        try:
            value = field.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as e:
            raise TokenizerError(f"GGUF key {GGUF_PREFIX}{key} of {path}: {e}") from e
        meta[key] = _plain(value)
    return meta


def _plain(value: object) -> object:
    """NumPy scalars (as gguf gives some values) become Python ones, lists stay lists."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value
