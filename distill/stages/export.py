"""Export stage: ONNX (optimum-onnx) for edge/CPU serving, optionally ONNX Runtime dynamic INT8.

The exported directory is what `ORTModelForCausalLM` / `ORTModelForSpeechSeq2Seq.from_pretrained`
load, so the evaluation harness measures the exported artifact itself (not the model it came
from). With `quantize: int8-dynamic` each graph is replaced by its INT8 version under the same
file name, so the directory stays loadable as is and `size_bytes` is the INT8 footprint.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from distill import artifacts
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.errors import DistillError
from distill.recipe import ExportStage
from distill.stages.common import copy_preprocessing, input_artifact, new_artifact

logger = logging.getLogger(__name__)


def _ort_class(kind: str):
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSpeechSeq2Seq

    if kind == "hf-whisper":
        return ORTModelForSpeechSeq2Seq
    if kind == "hf-causal-lm":
        return ORTModelForCausalLM
    raise DistillError(f"cannot export an artifact of kind '{kind}' to ONNX",
                       "export a full-precision model (hf-causal-lm or hf-whisper); merge LoRA first")


def quantize_int8_dynamic(out: Path) -> list[str]:
    """Replace every .onnx graph in `out` by its ORT dynamic-INT8 version (same file name)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    done = []
    for graph in sorted(out.glob("*.onnx")):
        tmp = out / f".{graph.stem}-int8"
        quantizer = ORTQuantizer.from_pretrained(out, file_name=graph.name)
        quantizer.quantize(save_dir=tmp, quantization_config=config)
        produced = next(tmp.glob("*.onnx"))
        for leftover in (graph, graph.with_name(graph.name + "_data"), graph.with_suffix(".onnx.data")):
            leftover.unlink(missing_ok=True)
        produced.rename(graph)
        shutil.rmtree(tmp)
        done.append(graph.name)
    return done


def run(spec: ExportStage, ctx: RunContext) -> Artifact:
    source = input_artifact(spec, ctx)
    cls = _ort_class(source.kind)
    out = artifacts.prepare_dir(ctx.artifact_dir())
    logger.info("exporting %s to ONNX", source.artifact_id)
    model = cls.from_pretrained(source.path, export=True)
    model.save_pretrained(out)
    copy_preprocessing(Path(source.path), out)
    extra: dict = {"format": "onnx", "graphs": sorted(p.name for p in out.glob("*.onnx"))}
    if spec.quantize == "int8-dynamic":
        extra["quantization"] = {"method": "ort-int8-dynamic", "per_channel": False,
                                 "graphs": quantize_int8_dynamic(out)}
    params = source.params
    art = artifacts.finalize(new_artifact(ctx, source, spec, "onnx", params, extra))
    logger.info("exported %s: %.1f MB (input %.1f MB)", art.artifact_id, art.size_bytes / 1e6,
                source.size_bytes / 1e6)
    return art
