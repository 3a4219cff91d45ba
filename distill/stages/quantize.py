"""Quantize stage: INT8 / NF4 weights of the previous artifact, saved as they run, optionally gated.

- bnb-int8 / bnb-nf4: bitsandbytes quantizes at load; the quantized weights are serialized
  (config.json carries the quantization_config), so `size_bytes` is the real footprint and the
  evaluation harness reloads it like any HF model. On CPU these save memory, not time.
- torch-dynamic-int8: torch.ao dynamic INT8 Linear layers. Their packed weights are saved as the
  quantized state dict (`model.int8.pt`, read back with `weights_only=True`) beside config.json;
  the adapter rebuilds the module tree from the config, quantizes it (structure only) and loads
  that state dict. So `size_bytes` is the INT8 footprint, not that of an fp32 parent.
ONNX Runtime INT8/INT4 is the export stage (`kind: export`, `quantize:`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from distill import artifacts, gate, models
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.errors import DistillError
from distill.recipe import QuantizeStage
from distill.stages.common import check_compressible, copy_preprocessing, input_artifact, new_artifact

logger = logging.getLogger(__name__)

TORCH_INT8_FILE = "model.int8.pt"


def _bnb_config(method: str):
    from transformers import BitsAndBytesConfig

    if method == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True), {"bits": 8, "method": method}
    return (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.float32),
            {"bits": 4, "quant_type": "nf4", "method": method})


def _model_class(source: Artifact):
    from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration

    check_compressible(source, "quantize")
    if source.kind == "hf-whisper":
        return WhisperForConditionalGeneration
    if source.kind == "hf-causal-lm":
        return AutoModelForCausalLM
    raise DistillError(f"cannot quantize an artifact of kind '{source.kind}'",
                       "quantize a full-precision model (hf-causal-lm or hf-whisper); merge LoRA first")


def save_torch_dynamic_int8(model: torch.nn.Module, out: Path) -> torch.nn.Module:
    """torch.ao dynamic INT8 of every Linear, saved as its state dict + config (+ generation config)."""
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    torch.save(quantized.state_dict(), out / TORCH_INT8_FILE)
    return quantized


def run(spec: QuantizeStage, ctx: RunContext) -> Artifact:
    source = input_artifact(spec, ctx)
    cls = _model_class(source)
    out = artifacts.prepare_dir(ctx.artifact_dir())
    if spec.method in ("bnb-int8", "bnb-nf4"):
        config, quant = _bnb_config(spec.method)
        model = cls.from_pretrained(source.path, quantization_config=config, dtype=torch.float32,
                                    device_map={"": "cpu"})
        model.save_pretrained(out, safe_serialization=True)
        kind = "bnb"
        precision = {"dtype": quant.get("quant_type", "int8"), "bits": quant["bits"],
                     "weights": f"{quant.get('quant_type', 'int8')} (bitsandbytes, Linear layers)",
                     "activations": "float32"}
    else:
        model = cls.from_pretrained(source.path, dtype=torch.float32).eval()
        save_torch_dynamic_int8(model, out)
        kind = "torch-dynamic-quant"
        quant = {"method": spec.method, "dtype": "qint8", "modules": "Linear", "file": TORCH_INT8_FILE}
        precision = {"dtype": "qint8-dynamic", "bits": 8, "weights": "int8 per-tensor (Linear layers)",
                     "activations": "uint8 dynamic (per call)"}
    copy_preprocessing(Path(source.path), out)
    art = new_artifact(ctx, source, spec, kind, models.count_params(model),
                       {"quantization": quant, "precision": precision})
    art.size_bytes = artifacts.dir_size(out)
    if spec.gate is not None:
        art.extra["gate"] = gate.evaluate(spec.gate, source, art, ctx)
        logger.info(gate.describe(art.extra["gate"]))
    art = artifacts.finalize(art)
    logger.info("quantized %s -> %s: %.1f MB -> %.1f MB", source.artifact_id, spec.method,
                source.size_bytes / 1e6, art.size_bytes / 1e6)
    gate.enforce(art.extra.get("gate"), art.path)
    return art
