"""Quantize stage: INT8 / NF4 weights of the previous artifact, saved so they can be re-evaluated.

- bnb-int8 / bnb-nf4: bitsandbytes quantizes at load; the quantized weights are serialized
  (config.json carries the quantization_config), so `size_bytes` is the real footprint and the
  evaluation harness reloads it like any HF model. On CPU these save memory, not time.
- torch-dynamic-int8: torch.ao dynamic INT8 Linear layers. They cannot be saved as a HF directory,
  so the artifact keeps fp32 weights and the adapter quantizes at load (deterministic); the INT8
  serialized size is measured here and recorded in the manifest's `extra.quantized_size_bytes`.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch

from distill import artifacts, models
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.errors import DistillError
from distill.recipe import QuantizeStage
from distill.stages.common import copy_preprocessing, input_artifact, new_artifact

logger = logging.getLogger(__name__)


def _bnb_config(method: str):
    from transformers import BitsAndBytesConfig

    if method == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True), {"bits": 8, "method": method}
    return (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.float32),
            {"bits": 4, "quant_type": "nf4", "method": method})


def _model_class(source: Artifact):
    from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration

    if source.kind == "hf-whisper":
        return WhisperForConditionalGeneration
    if source.kind == "hf-causal-lm":
        return AutoModelForCausalLM
    raise DistillError(f"cannot quantize an artifact of kind '{source.kind}'",
                       "quantize a full-precision model (hf-causal-lm or hf-whisper); merge LoRA first")


def serialized_size(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def run(spec: QuantizeStage, ctx: RunContext) -> Artifact:
    source = input_artifact(spec, ctx)
    cls = _model_class(source)
    out = artifacts.prepare_dir(ctx.artifact_dir())
    extra: dict = {}
    if spec.method in ("bnb-int8", "bnb-nf4"):
        config, extra["quantization"] = _bnb_config(spec.method)
        model = cls.from_pretrained(source.path, quantization_config=config, dtype=torch.float32,
                                    device_map={"": "cpu"})
        model.save_pretrained(out, safe_serialization=True)
        kind = "bnb"
    elif spec.method == "torch-dynamic-int8":
        model = cls.from_pretrained(source.path, dtype=torch.float32)
        model.save_pretrained(out, safe_serialization=True)
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        extra["quantization"] = {"method": spec.method, "dtype": "qint8", "modules": "Linear"}
        extra["quantized_size_bytes"] = serialized_size(quantized)
        kind = "torch-dynamic-quant"
    else:
        raise DistillError(f"quantize method '{spec.method}' is done by the export stage",
                           "use `kind: export` with `quantize: int8-dynamic` for ONNX Runtime INT8")
    copy_preprocessing(Path(source.path), out)
    art = artifacts.finalize(new_artifact(ctx, source, spec, kind, models.count_params(model), extra))
    logger.info("quantized %s -> %s: %.1f MB -> %.1f MB", source.artifact_id, spec.method,
                source.size_bytes / 1e6, extra.get("quantized_size_bytes", art.size_bytes) / 1e6)
    return art
