"""Helpers shared by the stages that transform a model (lora, prune, quantize, export)."""

from __future__ import annotations

import json
from pathlib import Path

from distill import artifacts, models
from distill.artifacts import Artifact, ArtifactKind
from distill.context import RunContext
from distill.errors import DistillError


def kind_of(path: Path) -> ArtifactKind:
    """Artifact kind of a plain HF directory, from its config.json."""
    config = json.loads((Path(path) / "config.json").read_text())
    return artifacts.kind_for_model_type(config.get("model_type"))


def input_artifact(spec, ctx: RunContext) -> Artifact:
    """The model a stage transforms: `spec.model` when given, else the previous stage's output."""
    if spec.model is None:
        previous = ctx.previous()
        if previous is None:
            raise DistillError(f"stage '{ctx.stage_name}' has no input model",
                               "give it `model:` or put a stage before it")
        return previous
    if spec.model.source is None:
        raise DistillError(f"stage '{ctx.stage_name}': an inline config is not a trained model",
                           "give `model:` a path, asset:<id> or stage:<name>")
    where = models.resolve_source(spec.model.source, ctx)
    path = Path(where)
    if artifacts.is_complete(path):
        return artifacts.load(path)
    if not path.is_dir():
        raise DistillError(f"stage '{ctx.stage_name}' needs a local model, got '{where}'",
                           "download it first, or use asset:<id>")
    kind = kind_of(path)
    return Artifact(path=path, artifact_id=spec.model.source, kind=kind, adapter=kind,
                    size_bytes=artifacts.dir_size(path))


QUANTIZED_KINDS = (ArtifactKind.BNB, ArtifactKind.TORCH_DYNAMIC_QUANT, ArtifactKind.ONNX, ArtifactKind.CT2)


def check_compressible(source: Artifact, action: str) -> None:
    """An input that is already quantized or exported cannot be quantized/exported again."""
    quant = (source.extra or {}).get("quantization") or {}
    if source.kind in QUANTIZED_KINDS or quant:
        what = quant.get("method") or source.kind
        raise DistillError(f"cannot {action} '{source.artifact_id}': it is already quantized/exported "
                           f"({what}); a second rounding would stack on weights that are no longer "
                           "the model's", "point `model:` at the full-precision model it came from "
                           "and give each format its own stage")


def copy_preprocessing(src: Path, out: Path) -> None:
    """Processor (feature extractor + tokenizer) or tokenizer files travel with the weights."""
    from transformers import AutoProcessor, AutoTokenizer

    try:
        AutoProcessor.from_pretrained(src).save_pretrained(out)
    except (OSError, ValueError, TypeError):
        AutoTokenizer.from_pretrained(src).save_pretrained(out)


def new_artifact(ctx: RunContext, source: Artifact, spec, kind: str, params: int | None,
                 extra: dict) -> Artifact:
    """Manifest for this stage's output (call `artifacts.finalize` on it after saving files)."""
    return Artifact(path=ctx.artifact_dir(), artifact_id=ctx.artifact_id(), kind=kind, adapter=kind,
                    lineage=[source.artifact_id, *source.lineage], stage=spec.model_dump(mode="json"),
                    recipe_sha256=ctx.recipe_sha256, run_id=ctx.run_id, params=params,
                    extra={"input_path": str(source.path), "source_size_bytes": source.size_bytes,
                           **extra})
