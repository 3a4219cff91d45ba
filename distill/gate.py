"""Parity gates, and the recipe checks of the stages that compress a model (quantize, export).

A gate names one evaluation task, a metric and a tolerance. The stage that carries it scores its
input and its output on the same held-out items with the evaluation harness (`score_task`, the
code `distill eval` runs) and fails the recipe when the output is worse by more than the
tolerance. The artifact is kept, its manifest says `gate.status: failed` with both numbers, and a
`distill run --resume` stops at it again instead of building on it.

`check_recipe` runs at `distill validate` and at the start of `distill run` (before anything is
written) and must stay free of torch: it reads recipes, task YAMLs and small JSON files only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError

logger = logging.getLogger(__name__)

TASK_MODALITY = {"multiple_choice": "lm", "perplexity": "lm", "asr": "asr"}
SPEECH_MODEL_TYPES = ("whisper", "qwen3_asr")
PERCENT_METRICS = ("wer", "wer_ortho", "cer", "acc", "acc_macro")  # stored as fractions
LOGPROB_DRIFT = "max_abs_logprob_diff"  # LMs on a perplexity task: max |delta log p| per token
ONNX_EXPORTABLE = {  # model_type -> why not, for the types optimum-onnx cannot export here
    "qwen3_asr": "optimum-onnx 0.1.0 has no ONNX config for Qwen3-ASR (qwen3_asr)",
}
EXIT_GATE_FAILED = 3  # not bad input (2): the recipe ran and its output failed a check


class GateFailed(DistillError):
    """An artifact drifted from its input further than its gate allows."""

    exit_code = EXIT_GATE_FAILED


@dataclass
class ModelInfo:
    """What validation can know about a stage's input without loading it."""

    model_type: str | None = None  # None: not knowable yet (hub id, asset not installed)
    quantized: str | None = None  # method/format of an already quantized or exported model

    @property
    def modality(self) -> str | None:
        if self.model_type is None:
            return None
        return "asr" if self.model_type in SPEECH_MODEL_TYPES else "lm"


# ------------------------------------------------------------------------------ validation
def _dir_info(path: Path) -> ModelInfo:
    manifest, config = path / "manifest.json", path / "config.json"
    info = ModelInfo()
    if config.is_file():
        cfg = json.loads(config.read_text())
        info.model_type = cfg.get("model_type")
        if (cfg.get("quantization_config") or {}).get("quant_method"):
            info.quantized = cfg["quantization_config"]["quant_method"]
    if manifest.is_file():
        art = json.loads(manifest.read_text())
        if art.get("kind") in ("bnb", "torch-dynamic-quant", "onnx", "ct2"):
            info.quantized = (art.get("extra", {}).get("quantization") or {}).get("method") or art["kind"]
    if any(path.glob("*.onnx")):
        info.quantized = info.quantized or "onnx"
    return info


def _source_info(source: str, outputs: dict[str, ModelInfo]) -> ModelInfo:
    if source.startswith("stage:"):
        return outputs.get(source.removeprefix("stage:"), ModelInfo())
    path = _source_path(source)  # None: an asset not installed yet (check_references notes it)
    return _dir_info(path) if path is not None else ModelInfo()


def _ref_info(ref, outputs: dict[str, ModelInfo]) -> ModelInfo:
    if ref is None:
        return ModelInfo()
    if ref.config is not None:
        return ModelInfo(model_type=ref.config.get("model_type"))
    return _source_info(ref.source, outputs)


def _output_info(stage, given: ModelInfo) -> ModelInfo:
    """What a stage produces, from what it was given."""
    kind = stage.kind
    if kind == "distill":
        student = stage.student.model
        return _ref_info(student, {}) if student is not None else ModelInfo(given.model_type)
    if kind == "distill-asr":
        return ModelInfo("whisper")
    if kind == "quantize":
        return ModelInfo(given.model_type, stage.method)
    if kind == "export":
        quant = getattr(stage, "quantize", "none")
        return ModelInfo(given.model_type, f"{stage.format}-{quant}" if quant != "none" else stage.format)
    return ModelInfo(given.model_type, given.quantized)


def stage_inputs(recipe) -> list[ModelInfo]:
    """Per stage, what validation knows about the model it transforms (its teacher for distill)."""
    from distill.recipe import stage_name

    outputs: dict[str, ModelInfo] = {}
    previous = ModelInfo()
    infos = []
    for i, stage in enumerate(recipe.stages):
        ref = getattr(stage, "model", None) or getattr(stage, "teacher", None)
        given = _ref_info(ref, outputs) if ref is not None else previous
        infos.append(given)
        previous = _output_info(stage, given)
        outputs[stage_name(i, stage)] = previous
    return infos


def check_recipe(recipe, strict: bool = False) -> None:
    """Bad compression input fails here, before a run directory exists (DistillError, exit 2).
    `strict` (the start of `distill run`) also reads the calibration data against its model's
    tokenizer/processor, which needs transformers."""
    for i, (stage, given) in enumerate(zip(recipe.stages, stage_inputs(recipe))):
        where = f"stages.{i} ({stage.kind})"
        if stage.kind in ("quantize", "export"):
            check_input(where, stage, given)
        if strict and getattr(stage, "calibration", None) is not None and stage.kind == "export":
            check_calibration(where, stage)
        if stage.kind == "distill-asr":  # student levers vs the teacher's config.json
            from distill.speech import check_student_levers

            check_student_levers(where, stage)
        gate = getattr(stage, "gate", None)
        if gate is not None:
            check_gate(where, gate, given.modality)


def check_input(where: str, stage, given: ModelInfo) -> None:
    if given.quantized:
        raise DistillError(f"{where}: its input is already quantized/exported ({given.quantized}); "
                           "quantizing it again would stack two roundings on weights that are no "
                           "longer the model's", "point `model:` at the full-precision model (e.g. the "
                           "stage before the quantize/export stage) and give each format its own stage")
    if stage.kind == "export" and given.model_type in ONNX_EXPORTABLE:
        raise DistillError(f"{where}: cannot export this model to {stage.format}: "
                           f"{ONNX_EXPORTABLE[given.model_type]}",
                           "compress it with `kind: quantize` (method bnb-int8, bnb-nf4 or "
                           "torch-dynamic-int8), which loads Qwen3-ASR through its own classes")


def check_calibration(where: str, stage) -> None:
    """Enough calibration items for an export whose input exists now (an earlier stage's output
    does not yet: the stage checks it first thing, before writing)."""
    from types import SimpleNamespace

    from distill.onnx_quant import calibration_inputs

    ref = stage.model
    if ref is None or ref.source is None or ref.source.startswith("stage:"):
        return
    path = _source_path(ref.source)
    if path is not None and (path / "config.json").is_file():
        try:
            calibration_inputs(stage, SimpleNamespace(path=path))
        except DistillError as exc:
            raise DistillError(f"{where}: {exc.problem}", exc.fix) from None


def _source_path(source: str) -> Path | None:
    if source.startswith("asset:"):
        try:
            from distill.assets import asset_path

            return Path(asset_path(source.removeprefix("asset:")))
        except (DistillError, ImportError):
            return None
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def check_gate(where: str, gate, modality: str | None) -> None:
    from distill.evaluation.tasks import load_task

    try:
        task = load_task(gate.task)
    except DistillError as exc:
        raise DistillError(f"{where}.gate: {exc.problem}", exc.fix) from None
    if gate.metric == LOGPROB_DRIFT:
        if task.type != "perplexity":
            raise DistillError(f"{where}.gate: {LOGPROB_DRIFT} compares token log-probs on a "
                               f"perplexity task; '{gate.task}' is {task.type}",
                               "use e.g. task: text-en-ppl (or smoke-ppl)")
        if gate.unit != "abs":
            raise DistillError(f"{where}.gate: {LOGPROB_DRIFT} is an absolute difference",
                               "set unit: abs")
    elif gate.metric is not None and gate.metric not in task.metrics:
        raise DistillError(f"{where}.gate: task '{gate.task}' has no metric '{gate.metric}'",
                           f"use one of: {', '.join([*task.metrics, LOGPROB_DRIFT] if task.type == 'perplexity' else task.metrics)}")
    task_modality = TASK_MODALITY[task.type]
    if modality is not None and modality != task_modality:
        raise DistillError(f"{where}.gate: task '{gate.task}' scores {task_modality} models but this "
                           f"stage's model is an {modality} model",
                           "gate speech models on an ASR task (e.g. asterisk-en) and language models "
                           "on an LM task (e.g. text-en-ppl, mmlu-mini-0shot)")


# ---------------------------------------------------------------------------------- runtime
def drift(metric: str, source: float, result: float, higher_is_better: bool, unit: str) -> float:
    """How much worse `result` is than `source` (negative = better), in the gate's unit.

    abs: percentage points for percent metrics (WER 0.050 -> 0.056 is 0.6), raw units otherwise;
    rel: percent of the source value.
    """
    worse = (source - result) if higher_is_better else (result - source)
    if unit == "rel":
        return 100.0 * worse / abs(source) if source else (0.0 if worse == 0 else float("inf"))
    return 100.0 * worse if metric in PERCENT_METRICS else worse


def _cache_path(ctx, artifact_id: str, gate) -> Path:
    safe = artifact_id.replace("/", "__").replace(":", "_")
    return ctx.run_dir / "gates" / f"{safe}__{gate.task}__{gate.limit}.json"


def _score(path: str, gate, ctx, artifact_id: str, cache: bool, manifest=None) -> dict:
    """Harness score of one model on the gate's items; the input's score is cached in the run
    directory, so several stages gating one source score it once (and a resume reuses it)."""
    from distill.evaluation.harness import score_task

    where = _cache_path(ctx, artifact_id, gate)
    if cache and where.is_file():
        return json.loads(where.read_text())
    found = score_task(path, gate.task, gate.limit, device=ctx.device, manifest=manifest)
    if cache:
        from distill.artifacts import write_json_atomic

        where.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(where, found)
    return found


def _logprob_drift(gate, source, result, ctx) -> dict[str, Any]:
    """Max |delta log p| over every token position of the gate's documents (input's cached)."""
    from distill.evaluation.harness import task_token_logprobs

    where = _cache_path(ctx, source.artifact_id, gate).with_suffix(".logprobs.json")
    if where.is_file():
        src = json.loads(where.read_text())
    else:
        src = task_token_logprobs(str(source.path), gate.task, gate.limit, device=ctx.device)
        from distill.artifacts import write_json_atomic

        where.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(where, {"logprobs": src})
        src = {"logprobs": src}
    out = task_token_logprobs(str(result.path), gate.task, gate.limit, device=ctx.device, manifest=result)
    diffs = [abs(a - b) for xs, ys in zip(src["logprobs"], out) for a, b in zip(xs, ys)]
    worst = max(diffs) if diffs else 0.0
    return {"status": "passed" if worst <= gate.tolerance else "failed", "task": gate.task,
            "metric": LOGPROB_DRIFT, "higher_is_better": False, "limit": gate.limit, "n": len(diffs),
            "source": {"artifact": source.artifact_id, "value": 0.0},
            "result": {"artifact": result.artifact_id, "value": worst,
                       "mean_abs_logprob_diff": sum(diffs) / max(1, len(diffs))},
            "drift": round(worst, 6), "tolerance": gate.tolerance, "unit": gate.unit}


def evaluate(gate, source, result, ctx) -> dict[str, Any]:
    """Score input and output (Artifacts) on the gate's task; the comparison for the manifest."""
    if gate.metric == LOGPROB_DRIFT:
        return _logprob_drift(gate, source, result, ctx)
    src = _score(str(source.path), gate, ctx, source.artifact_id, cache=True)
    out = _score(str(result.path), gate, ctx, result.artifact_id, cache=False, manifest=result)
    metric = gate.metric or src["metric_order"][0]
    hib = src["higher_is_better"][metric]
    d = drift(metric, src["metrics"][metric], out["metrics"][metric], hib, gate.unit)
    return {"status": "passed" if d <= gate.tolerance else "failed", "task": gate.task,
            "metric": metric, "higher_is_better": hib, "limit": gate.limit, "n": out["n"],
            "source": {"artifact": source.artifact_id, "value": src["metrics"][metric],
                       "backend": src["backend"], "dtype": src["dtype"]},
            "result": {"artifact": result.artifact_id, "value": out["metrics"][metric],
                       "backend": out["backend"], "dtype": out["dtype"]},
            "drift": round(d, 6), "tolerance": gate.tolerance, "unit": gate.unit}


def describe(check: dict) -> str:
    unit = "points" if check["unit"] == "abs" and check["metric"] in PERCENT_METRICS else \
        ("%" if check["unit"] == "rel" else "")
    scale = 100.0 if check["metric"] in PERCENT_METRICS else 1.0
    return (f"gate {check['status']}: {check['task']} {check['metric']} {check['source']['value'] * scale:.4g}"
            f" (input) -> {check['result']['value'] * scale:.4g} (output), n={check['n']} (limit "
            f"{check['limit']}), drift "
            f"{check['drift']:+.4g} {unit}, tolerance {check['tolerance']:g} {unit}")


def enforce(check: dict | None, artifact_path: Path) -> None:
    """Raise GateFailed for a failed gate (after the artifact and its manifest are written)."""
    if check and check.get("status") == "failed":
        raise GateFailed(f"{describe(check)}; artifact kept at {artifact_path} (manifest gate.status: "
                         "failed)", "loosen the gate's tolerance, or pick a gentler format (e.g. int8 "
                         "instead of int4, a smaller block_size, per_channel: true)")
