"""dtype names <-> torch dtypes, and the dtype label a record gives a loaded model.

A leaf module (imports nothing from distill; torch only inside functions) so model loading for
training, the evaluation adapters and the model families (Whisper, Qwen3-ASR) share one copy
without importing each other.
"""

from __future__ import annotations

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str):
    """'float32' | 'bfloat16' | 'float16' -> the torch dtype."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def dtype_name(model) -> str:
    """The dtype of a model's first parameter, as a record names it ('float32', 'bfloat16', ...)."""
    try:
        return str(next(model.parameters()).dtype).removeprefix("torch.")
    except (StopIteration, AttributeError):
        return "float32"


def bnb_dtype(model) -> str:
    """The record's dtype label of a bitsandbytes-loaded model: int8, nf4 or fp4 (its float32
    convs/embeddings would otherwise name the dtype)."""
    cfg = model.config.quantization_config
    return "int8" if getattr(cfg, "load_in_8bit", False) else getattr(cfg, "bnb_4bit_quant_type", "4bit")
