"""Bad input to `distill eval`, caught before a record is written (and mostly before weights load).

Every check raises one DistillError: arguments out of range, a results directory that cannot hold
records, a stage directory a killed run left without its manifest (README: never an artifact),
weight files that are empty, cut short or not safetensors, weights a safe loader refuses, NaN/inf
weights, and metrics that came out NaN/inf. A record with `null` metrics is never written.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

from distill.errors import DistillError

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "*.gguf")


def check_args(model: str, batch_size: int | None, threads: int | None, results_dir: Path) -> None:
    """Arguments and the results directory, before anything loads."""
    from distill import checks, config_checks

    if batch_size is not None and batch_size < 1:
        raise DistillError(f"--batch-size {batch_size} is not positive", "pass --batch-size N with N >= 1")
    if threads is not None and threads < 1:
        raise DistillError(f"--threads {threads} is not positive", "pass --threads N with N >= 1, or omit it")
    checks.check_writable_dir(results_dir, "--results-dir")
    path = Path(model).expanduser()
    if path.is_dir():
        check_not_killed_stage(path)
    elif not model.startswith("asset:") and config_checks.is_hub_id(model, _looks_local):
        config_checks.require_hub([("model", model)])


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def check_not_killed_stage(path: Path) -> None:
    """A run's `artifacts/<stage>/` without manifest.json is an unfinished stage, not a model."""
    from distill import artifacts

    run_dir = path.resolve().parent.parent
    if path.resolve().parent.name == "artifacts" and not artifacts.is_complete(path) \
            and (run_dir / "recipe.resolved.yaml").is_file():
        raise DistillError(f"'{path}' is an unfinished stage of run '{run_dir.name}' (no manifest.json: "
                           "the stage was killed or failed before finishing)",
                           f"finish it with `distill run --resume {run_dir}`, then evaluate")


def check_weight_files(source: str, kind: str) -> None:
    """Weight files of a local model directory are present and whole (headers vs sizes)."""
    from distill.artifacts import safetensors_problem

    path = Path(source)
    if not path.is_dir():
        return  # a hub id
    for file in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            raise DistillError(f"weight file '{file}' is damaged: {problem}",
                               "re-create the model (re-run its stage or reinstall the asset)")
    if kind in ("hf-causal-lm", "hf-whisper") and not any(any(path.glob(g)) for g in WEIGHT_GLOBS):
        raise DistillError(f"'{path}' has a config but no weight files (*.safetensors / *.bin)",
                           "re-create the model (re-run its stage or reinstall the asset)")


def load_adapter(factory, ref, device: str):
    """The adapter for `ref`; a weight file a loader refuses or cannot parse is one error line."""
    try:
        return factory(ref.source, device, ref.manifest)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        if _refused_pickle(exc):
            raise DistillError(f"'{ref.source}': a weight file holds pickled objects or code, not plain "
                               "tensors; refused (weights_only=True), nothing was run",
                               "use safetensors weights from a source you trust") from None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DistillError(f"cannot load '{ref.source}' ({ref.adapter}): {type(exc).__name__}: {first}",
                           "check its weight and config files; re-create the model if they are damaged") from None


def _refused_pickle(exc: BaseException | None) -> bool:
    """Whether a safe (weights_only) unpickler refused the file, anywhere in the exception chain
    (transformers re-raises it as an OSError about the checkpoint)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def check_finite_weights(adapter, name: str) -> None:
    """NaN/inf in floating-point weights: every metric would be meaningless."""
    model = getattr(adapter, "model", None)
    if not hasattr(model, "named_parameters"):
        return
    import torch

    for pname, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise DistillError(f"'{name}' has NaN/inf weights (first: {pname})",
                               "the model diverged or its file is damaged: evaluate an earlier checkpoint")


def check_finite_metrics(task: str, found: list[dict]) -> None:
    for m in found:
        if not math.isfinite(m["value"]):
            raise DistillError(f"task {task}: {m['metric']} came out {m['value']} (non-finite model outputs); "
                               "no record written", "check the model's weights and dtype")
