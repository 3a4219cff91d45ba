"""Helpers shared by stages (no stage module imports another): input models, artifacts, held-out CE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from distill import artifacts, models
from distill.artifacts import Artifact, ArtifactKind
from distill.context import RunContext
from distill.errors import DistillError

if TYPE_CHECKING:
    import torch


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


def save_model_artifact(model, tokenizer, ctx: RunContext, name: str, lineage: list[str],
                        stage: dict | None, extra: dict | None = None) -> Artifact:
    """A trained causal LM saved as this stage's artifact (manifest written last)."""
    out = artifacts.prepare_dir(ctx.artifact_dir(name))
    models.save_pretrained(model, tokenizer, out)
    art = Artifact(path=out, artifact_id=ctx.artifact_id(name), kind=ArtifactKind.HF_CAUSAL_LM,
                   adapter=ArtifactKind.HF_CAUSAL_LM, lineage=lineage, stage=stage,
                   recipe_sha256=ctx.recipe_sha256, run_id=ctx.run_id,
                   params=models.count_params(model), extra=extra or {})
    return artifacts.finalize(art)


def heldout_ce(model, heldout: torch.Tensor | None, vocab: int, batch_size: int = 8) -> dict[str, float]:
    """Mean next-token CE (nats) and perplexity on held-out blocks, chunked (no [B, S, V])."""
    import torch

    from distill import losses, students

    if heldout is None or len(heldout) == 0:
        return {}
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(heldout), batch_size):
            batch = heldout[i : i + batch_size]
            labels = losses.shift_labels(batch)
            hidden = students.final_hidden(model, batch)
            _, _, ce = losses.chunked_kd_ce(hidden, students.output_head(model)[:vocab], None, None, labels,
                                            kd_weight=0.0, ce_weight=1.0, chunk_size=1024)
            n = int((labels != -100).sum())
            total, count = total + float(ce) * n, count + n
    ce = total / count
    return {"eval_ce": ce, "eval_ppl": float(torch.tensor(ce).exp())}
