"""Export stage: a model in the runtime users deploy it with, optionally quantized, optionally gated.

`format: onnx` (optimum-onnx + ONNX Runtime):
  1. export with optimum's post-processing: Whisper gets ONE merged decoder graph (with and without
     past behind an `If`, weights stored once) and its tied embedding/output head stored once;
  2. quantize every graph in place (`distill.onnx_quant`): INT8 dynamic (per channel, the kernels
     of this CPU's best instruction set), INT8 static (activation ranges from calibration data),
     or INT4 weight-only MatMulNBits (RTN / HQQ / GPTQ, block-wise);
  3. ONNX Runtime offline graph optimisation (fusions), saved in place;
  4. the directory loads as is in `ORTModelForSpeechSeq2Seq` / `ORTModelForCausalLM`.

Each format is one function called from `run`: adding a format is one more branch there.
Bad input (an architecture optimum cannot export, an already quantized input, too little
calibration data) fails before the artifact directory is created.
"""

from __future__ import annotations

import logging
from pathlib import Path

from distill import artifacts, ct2, gate, onnx_quant
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.errors import DistillError
from distill.recipe import ExportStage
from distill.stages.common import check_compressible, copy_preprocessing, input_artifact, new_artifact

logger = logging.getLogger(__name__)

OPTIMUM_TASK = {"hf-whisper": "automatic-speech-recognition-with-past",
                "hf-causal-lm": "text-generation-with-past"}
MERGED_AWAY = ("decoder_model.onnx", "decoder_with_past_model.onnx")  # replaced by the merged graph


def check_exportable(source: Artifact) -> str:
    """The optimum task for this artifact, or a DistillError naming the supported path."""
    check_compressible(source, "export")
    model_type = onnx_quant.model_type(source.path)
    if model_type in gate.ONNX_EXPORTABLE:
        raise DistillError(f"cannot export '{source.artifact_id}' to ONNX: "
                           f"{gate.ONNX_EXPORTABLE[model_type]}",
                           "compress it with `kind: quantize` (bnb-int8, bnb-nf4 or torch-dynamic-int8)")
    if source.kind not in OPTIMUM_TASK:
        raise DistillError(f"cannot export an artifact of kind '{source.kind}' to ONNX",
                           "export a full-precision model (hf-causal-lm or hf-whisper); merge LoRA first")
    return OPTIMUM_TASK[source.kind]


def trace_shapes(path: Path) -> dict:
    """Dummy-input shapes optimum traces with, where its defaults do not fit the model: a Whisper
    whose window was cut (`max_source_positions` < 1500) refuses optimum's 3000-frame features, so
    it is traced with its own window's frames (the graph's frame axis stays dynamic either way)."""
    config = onnx_quant.model_config(path)
    if config.get("model_type") == "whisper":
        return {"nb_max_frames": 2 * int(config.get("max_source_positions", 1500))}
    return {}


def export_onnx(spec: ExportStage, source: Artifact, out: Path, task: str, calibration) -> dict:
    """Export + quantize + optimise into `out`; returns the manifest's `extra` entries."""
    from optimum.exporters.onnx import main_export

    logger.info("exporting %s to ONNX (%s)", source.artifact_id, task)
    # Post-processing on (the default): merged decoder, tied weights deduplicated.
    main_export(str(source.path), out, task=task, do_validation=False, library_name="transformers",
                **trace_shapes(Path(source.path)))
    if (out / "decoder_model_merged.onnx").is_file():
        for name in MERGED_AWAY:
            (out / name).unlink(missing_ok=True)
    graphs = sorted(p.name for p in out.glob("*.onnx"))
    copy_preprocessing(Path(source.path), out)
    extra: dict = {"format": "onnx", "runtime": "onnxruntime", "graphs": graphs,
                   "merged_decoder": "decoder_model_merged.onnx" in graphs}
    if spec.quantize != "none":
        extra["quantization"] = onnx_quant.quantize(out, graphs, spec, calibration)
    if spec.optimize:
        extra["optimization"] = onnx_quant.optimize(out, graphs)
    extra["precision"] = onnx_quant.precision(spec)
    return extra


def run(spec: ExportStage, ctx: RunContext) -> Artifact:
    source = input_artifact(spec, ctx)
    if spec.format == "ct2":  # CTranslate2: distill.ct2 (checked before the directory exists)
        check_compressible(source, "export")
        ct2.check_source(Path(source.path), source.kind)
        ct2.check_buckets(Path(source.path), source.kind, spec.window_buckets)
        out = artifacts.prepare_dir(ctx.artifact_dir())
        extra = ct2.convert(Path(source.path), out, source.kind, spec.quantization or "int8",
                            spec.window_buckets, spec.bucket_padding_s)
    else:
        task = check_exportable(source)
        calibration = onnx_quant.calibration_inputs(spec, source) if spec.calibration else None
        out = artifacts.prepare_dir(ctx.artifact_dir())
        extra = export_onnx(spec, source, out, task, calibration)
    art = new_artifact(ctx, source, spec, spec.format, source.params, extra)
    art.size_bytes = artifacts.dir_size(out)
    if spec.gate is not None:
        art.extra["gate"] = gate.evaluate(spec.gate, source, art, ctx)
        logger.info(gate.describe(art.extra["gate"]))
    art = artifacts.finalize(art)
    logger.info("exported %s: %.1f MB (input %.1f MB), %s", art.artifact_id, art.size_bytes / 1e6,
                source.size_bytes / 1e6, extra["precision"])
    gate.enforce(art.extra.get("gate"), art.path)
    return art
