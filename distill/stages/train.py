"""Train stage: plain next-token training of one model (e.g. a MoE teacher built from a config).

Shares the training loop (schedule, checkpoints, exact resume, DDP) with distillation. For MoE
models the router load-balancing loss is added, so experts stay in use and a later MoE -> dense
merge has more than one trained expert to merge.
"""

from __future__ import annotations

import logging
import time

import torch

from distill import losses, models, students
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import text_blocks
from distill.recipe import TrainStage
from distill.stages.common import heldout_ce, save_model_artifact

logger = logging.getLogger(__name__)


def balance_loss(router_logits, num_experts: int, top_k: int) -> torch.Tensor:
    """The Switch-Transformer load-balancing loss, as the model family's HF code computes it."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    return load_balancing_loss_func(router_logits, num_experts, top_k)


def run(spec: TrainStage, ctx: RunContext) -> Artifact:
    model, tokenizer = models.load_causal_lm(spec.model, ctx, seed=ctx.seed)
    model.to(ctx.device)
    blocks, heldout = text_blocks(spec.data, tokenizer, ctx.seed)
    vocab = students.output_head(model).shape[0]
    is_moe = bool(students.moe_blocks(model))
    aux_weight = (spec.router_aux_weight if spec.router_aux_weight is not None
                  else getattr(model.config, "router_aux_loss_coef", 0.0)) if is_moe else 0.0

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        labels = losses.shift_labels(batch)
        out = students.decoder_body(model)(input_ids=batch, use_cache=False,
                                           output_router_logits=True if aux_weight else None)
        total, _, ce = losses.chunked_kd_ce(out.last_hidden_state, students.output_head(model), None, None,
                                            labels, kd_weight=0.0, ce_weight=1.0, chunk_size=1024)
        metrics = {"ce": float(ce)}
        if aux_weight:
            aux = balance_loss(out.router_logits, model.config.num_experts, model.config.num_experts_per_tok)
            total = total + aux_weight * aux
            metrics["router_aux"] = float(aux.detach())
        metrics["loss"] = float(total.detach())
        return total, metrics

    from distill.training import train

    t0 = time.perf_counter()
    model.train()
    final = train({"model": model}, step, blocks, spec.train, ctx,
                  eval_fn=lambda: heldout_ce(model, heldout, vocab))
    logger.info("stage %s done: %s", ctx.stage_name, {k: round(v, 4) for k, v in final.items()})
    return save_model_artifact(model, tokenizer, ctx, ctx.stage_name, lineage=[], stage=spec.model_dump(mode="json"),
                               extra={"final_metrics": final, "train_seconds": round(time.perf_counter() - t0, 2),
                                      "moe": is_moe})
