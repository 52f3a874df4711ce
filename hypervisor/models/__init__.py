"""Models loaded once by the operator and shared read-only by every VM (docs/models.md).

``gguf_file`` reads a GGUF file (architecture, tokenizer, dequantized tensors); ``store``
keeps loaded models as read-only pxOS buffers and answers the guests' MODEL_OPEN.
"""

from .gguf_file import LLAMA_FAMILY, ModelFile, open_gguf, smollm2_path
from .store import MAX_MODELS, ModelInfo, ModelOpen, ModelStore

__all__ = ["LLAMA_FAMILY", "MAX_MODELS", "ModelFile", "ModelInfo", "ModelOpen", "ModelStore", "open_gguf",
           "smollm2_path"]
