"""The qwen3-asr evaluation adapter: a thin door to the model home, `distill.qwen3_asr`.

Loading, the package's prompt and `transcribe` live there, shared with the distillation stage, so
the harness measures the same transcription code that pseudo-labels the training data.
"""

from __future__ import annotations

from distill.qwen3_asr import Qwen3ASR, load_model


def load(path: str, device: str = "cpu", backend: str = "torch-eager",
         quantization_config=None) -> Qwen3ASR:
    """fp32 weights + processor from `path` behind `transcribe` (the dtype label follows the
    weights; the bnb loader relabels its models int8/nf4)."""
    model, processor = load_model(path, device, "float32", quantization_config,
                                  quantized=backend == "bitsandbytes")
    return Qwen3ASR(model=model, processor=processor, backend=backend, device=device)
