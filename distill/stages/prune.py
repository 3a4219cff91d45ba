"""Prune stage: a smaller (or sparser) causal LM from the previous artifact; see distill.pruning.

Structured methods (depth, width, experts) write a smaller dense HF model whose config loads in
plain transformers; unstructured ones (magnitude, 2:4) write the same shapes with zeros and record
what a sparse format would take. Recovery is the next stage: `kind: distill` with
`student: {init: model, model: stage:<this stage>}` and the parent as teacher.
"""

from __future__ import annotations

import logging
import time

import torch

from distill import artifacts, models, pruning, sparsity
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import text_blocks
from distill.errors import DistillError
from distill.preflight import check_prune, read_config
from distill.recipe import ModelRef, PruneStage
from distill.stages.common import input_artifact, new_artifact

logger = logging.getLogger(__name__)


def calibration(spec: PruneStage, tokenizer, ctx: RunContext) -> torch.Tensor:
    """[calibration_blocks, seq_len] token ids, or a DistillError when the text is too short."""
    blocks, _ = text_blocks(spec.calibration, tokenizer, ctx.seed)
    if len(blocks) < spec.calibration_blocks:
        raise DistillError(f"stage '{ctx.stage_name}': calibration text yields {len(blocks)} blocks of "
                           f"{spec.calibration.seq_len} tokens, fewer than calibration_blocks="
                           f"{spec.calibration_blocks}", "give more calibration text or fewer blocks")
    return blocks.tokens[: spec.calibration_blocks]


def _kept(total: int, size: int | None, ratio: float | None) -> int | None:
    if size is not None:
        return size
    return None if ratio is None else max(1, round(total * (1 - ratio)))


def prune(spec: PruneStage, model, tokenizer, ctx: RunContext):
    """-> (pruned model, facts for the manifest)."""
    cfg = model.config
    if spec.method == "depth":
        layers = pruning.resolve_layers(spec.keep_layers, spec.num_layers, cfg.num_hidden_layers, "prune")
        return pruning.layer_map_student(model, layers), {"layers": layers}
    if spec.method == "width":
        calib = calibration(spec, tokenizer, ctx)
        importance = pruning.activation_importance(model, calib)
        width = _kept(cfg.intermediate_size, spec.intermediate_size, spec.ffn_ratio)
        pruned, facts = pruning.width_prune(model, importance, width, spec.num_heads, spec.num_kv_heads)
        facts["calibration_tokens"] = int(calib.numel())
        return pruned, facts
    if spec.method == "experts":
        calib = calibration(spec, tokenizer, ctx)
        scores = pruning.reap_scores(model, calib)
        n_exp = getattr(cfg, "num_experts", None) or cfg.num_local_experts
        pruned, facts = pruning.prune_experts(model, scores["reap"],
                                              _kept(n_exp, spec.num_experts, spec.experts_ratio))
        facts.update(calibration_tokens=int(calib.numel()),
                     reap_scores=[[round(float(x), 4) for x in row] for row in scores["reap"]],
                     router_frequencies=[[round(float(x), 4) for x in row] for row in scores["frequency"]])
        return pruned, facts
    facts = sparsity.sparsify(model, spec.method, spec.sparsity)
    facts["size"] = sparsity.sparse_size(model, spec.method)
    return model, facts


def run(spec: PruneStage, ctx: RunContext) -> Artifact:
    source = input_artifact(spec, ctx)
    if source.kind != "hf-causal-lm":
        raise DistillError(f"stage '{ctx.stage_name}': cannot prune an artifact of kind '{source.kind}'",
                           "prune a full-precision causal LM (prune before quantize/export)")
    check_prune(spec, read_config(source.path), f"stage '{ctx.stage_name}'")
    model, tokenizer = models.load_causal_lm(ModelRef(source=str(source.path)), ctx)
    parent_params = models.count_params(model)
    t0 = time.perf_counter()
    pruned, facts = prune(spec, model, tokenizer, ctx)
    params = models.count_params(pruned)
    logger.info("pruned %s (%s): %d -> %d params (%.1f %%)", source.artifact_id, spec.method,
                parent_params, params, 100 * params / parent_params)
    out = artifacts.prepare_dir(ctx.artifact_dir())
    models.save_pretrained(pruned, tokenizer, out)
    extra = {"method": spec.method, "parent_params": parent_params, "prune_seconds":
             round(time.perf_counter() - t0, 2), **facts}
    return artifacts.finalize(new_artifact(ctx, source, spec, "hf-causal-lm", params, extra))
