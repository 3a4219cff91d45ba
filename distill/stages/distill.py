"""Distillation stage: teach a student to match a teacher's token distributions.

The KD step reads top to bottom: student forward -> teacher forward under no_grad -> KD loss
(+ CE on the data) -> backward. The student and (when it has no directory of its own) the teacher
are saved as artifacts so every model in the lineage can be evaluated.
"""

from __future__ import annotations

import logging

import torch

from distill import artifacts, losses, models
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import text_blocks
from distill.errors import DistillError
from distill.recipe import DistillStage

logger = logging.getLogger(__name__)


def init_student(spec: DistillStage, teacher, ctx: RunContext):
    """The student model, per `student.init` (config / model; richer inits live in students.py)."""
    init = spec.student.init
    if init in ("config", "model"):
        student, _ = models.load_causal_lm(spec.student.model, ctx, seed=ctx.seed + 1)
        return student
    from distill import students

    return students.init_student(spec.student, teacher, ctx)


def check_vocab(student, teacher) -> int:
    """Number of shared vocabulary rows to compare; padded-vocab mismatches are sliced."""
    s_vocab = student.get_output_embeddings().weight.shape[0]
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        logger.warning("vocab sizes differ (student %d, teacher %d): comparing the first %d ids",
                       s_vocab, t_vocab, min(s_vocab, t_vocab))
    return min(s_vocab, t_vocab)


def save_model_artifact(model, tokenizer, ctx: RunContext, name: str, lineage: list[str],
                        stage: dict | None, extra: dict | None = None) -> Artifact:
    out = artifacts.prepare_dir(ctx.artifact_dir(name))
    models.save_pretrained(model, tokenizer, out)
    art = Artifact(path=out, artifact_id=ctx.artifact_id(name), kind="hf-causal-lm",
                   adapter="hf-causal-lm", lineage=lineage, stage=stage,
                   recipe_sha256=ctx.recipe_sha256, run_id=ctx.run_id,
                   params=models.count_params(model), extra=extra or {})
    return artifacts.finalize(art)


def teacher_artifact(spec: DistillStage, teacher, tokenizer, ctx: RunContext) -> str:
    """An evaluable location for the teacher: its own dir if it has one, else saved in the run."""
    if spec.teacher.source is not None:
        return models.resolve_source(spec.teacher.source, ctx)
    name = f"{ctx.stage_name}-teacher"
    if artifacts.is_complete(ctx.artifact_dir(name)):
        return str(ctx.artifact_dir(name))
    art = save_model_artifact(teacher, tokenizer, ctx, name, lineage=[],
                              stage={"kind": "teacher", "config": spec.teacher.config})
    return str(art.path)


def run(spec: DistillStage, ctx: RunContext) -> Artifact:
    teacher, tokenizer = models.load_causal_lm(spec.teacher, ctx, seed=ctx.seed)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_path = teacher_artifact(spec, teacher, tokenizer, ctx)
    teacher_id = (artifacts.load(teacher_path).artifact_id if artifacts.is_complete(teacher_path)
                  else spec.teacher.source)
    student = init_student(spec, teacher, ctx)
    vocab = check_vocab(student, teacher)
    blocks, heldout = text_blocks(spec.data, tokenizer, ctx.seed)
    if spec.teacher_mode == "offline":
        raise DistillError("teacher_mode 'offline' is not available in this version",
                           "use teacher_mode: online")
    loss_spec = spec.loss

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        labels = losses.shift_labels(batch)
        s_logits = student(input_ids=batch).logits[..., :vocab]
        with torch.no_grad():
            t_logits = teacher(input_ids=batch).logits[..., :vocab]
        kd = losses.kd_loss(s_logits, t_logits, labels, kind=loss_spec.kind,
                            temperature=loss_spec.temperature, beta=loss_spec.beta,
                            chunk_size=loss_spec.chunk_size)
        total = loss_spec.kd_weight * kd
        metrics = {"kd": kd.item()}
        if loss_spec.ce_weight:
            ce = losses.ce_loss(s_logits, labels)
            total = total + loss_spec.ce_weight * ce
            metrics["ce"] = ce.item()
        metrics["loss"] = total.item()
        return total, metrics

    def heldout_loss() -> dict[str, float]:
        if heldout is None:
            return {}
        with torch.no_grad():
            ce = sum(losses.ce_loss(student(input_ids=b[None]).logits, losses.shift_labels(b[None])).item()
                     for b in heldout) / len(heldout)
        return {"eval_ce": ce}

    from distill.training import train

    final = train({"student": student}, step, blocks, spec.train, ctx, eval_fn=heldout_loss)
    logger.info("stage %s done: %s", ctx.stage_name, {k: round(v, 4) for k, v in final.items()})
    stage_dict = spec.model_dump(mode="json")
    return save_model_artifact(student, tokenizer, ctx, ctx.stage_name, lineage=[teacher_id],
                               stage=stage_dict, extra={"teacher_path": teacher_path, "final_metrics": final})
