"""Pruning: smaller causal LMs cut from a trained one, each a plain HF model that loads in transformers.

depth      keep a subset of decoder layers (layer map), weights copied; even spacing with first and
           last kept (as distil-whisper), or explicit indices
width      Minitron-style (Muralidharan et al. 2024): FFN channels and attention heads ranked by their
           mean activation magnitude on calibration text, the least important removed. Heads are cut
           inside each GQA group alike (every KV head keeps the same number of query heads) and whole
           KV groups can go too, so the result is again a regular GQA attention
experts    REAP-style (router-weighted expert activation pruning): per MoE layer each expert scores
           mean over the tokens routed to it of gate_weight * ||expert(x)||_2; the lowest-scoring
           experts and their router rows are removed -> a MoE with fewer experts
Unstructured sparsity (magnitude, 2:4) lives in distill.sparsity.
"""

from __future__ import annotations

import copy
import logging
import re

import torch

from distill.errors import DistillError
from distill.preflight import check_heads

logger = logging.getLogger(__name__)

LAYER_KEY = re.compile(r"(^|\.)layers\.(\d+)\.")


# ------------------------------------------------------------------------------------- anatomy
def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers of a HF causal LM (`model.model.layers` and alike)."""
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise DistillError(f"cannot find the decoder layers of {type(model).__name__}",
                           "prune a Llama/Qwen/Mistral-style causal LM (model.layers)")
    return list(layers)


# ------------------------------------------------------------------------------- depth (layer map)
def even_layers(n_keep: int, n_total: int) -> list[int]:
    """Evenly spaced layer indices for a shallower model, first and last always kept."""
    from distill.losses import even_layer_map

    return even_layer_map(n_keep, n_total)


def resolve_layers(layers: list[int] | None, num_layers: int | None, n_total: int,
                   what: str = "student") -> list[int]:
    """The layers kept: explicit `layers`, else `num_layers` evenly spaced (default all)."""
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n_total]
        if bad:
            raise DistillError(f"{what}.layers {bad} out of range: the model has {n_total} layers "
                               f"(0..{n_total - 1})", f"use indices between 0 and {n_total - 1}")
        return list(layers)
    n = num_layers or n_total
    if n > n_total:
        raise DistillError(f"{what}.num_layers={n} exceeds the model's {n_total} layers",
                           f"use num_layers <= {n_total} (or init: config for a bigger student)")
    return even_layers(n, n_total)


def with_layers(config, layers: list[int]):
    """A copy of `config` keeping only `layers` (per-layer config lists sliced alike)."""
    cfg = copy.deepcopy(config)
    n_total = cfg.num_hidden_layers
    cfg.num_hidden_layers = len(layers)
    if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == n_total:
        cfg.layer_types = [cfg.layer_types[i] for i in layers]
    if isinstance(getattr(cfg, "mlp_only_layers", None), list):
        cfg.mlp_only_layers = [j for j, i in enumerate(layers) if i in cfg.mlp_only_layers]
    if getattr(cfg, "max_window_layers", None) is not None:
        cfg.max_window_layers = sum(1 for i in layers if i < cfg.max_window_layers)
    return cfg


def renumbered_state(state: dict[str, torch.Tensor], layers: list[int]) -> dict[str, torch.Tensor]:
    """State dict with layer `layers[j]` renamed to layer j and other layers dropped."""
    position = {t: s for s, t in enumerate(layers)}
    out = {}
    for key, value in state.items():
        m = LAYER_KEY.search(key)
        if m is None:
            out[key] = value
        elif int(m.group(2)) in position:
            new = f"{m.group(1)}layers.{position[int(m.group(2))]}."
            out[key[: m.start()] + new + key[m.end():]] = value
    return out


def load_into(config, state: dict[str, torch.Tensor], like):
    """A fresh causal LM from `config` holding `state` (every weight must be set), in `like`'s dtype."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"pruned model left weights unset: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.to(next(like.parameters()).dtype)
    return model.eval()


def layer_map_student(teacher, layers: list[int]):
    """A copy of `teacher` keeping `layers` (in order), weights copied. -> new model (eval mode)."""
    cfg = with_layers(teacher.config, layers)
    return load_into(cfg, renumbered_state(teacher.state_dict(), layers), teacher)


# --------------------------------------------------------------------------- calibration stats
@torch.no_grad()
def activation_importance(model, blocks: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Minitron activation importance on calibration blocks [N, S].

    -> {"ffn": [L, I] mean |input of down_proj| per FFN channel,
        "heads": [L, H] mean L2 norm of each head's attention output (input of o_proj)}.
    """
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    ffn = [None] * len(layers)
    heads = [None] * len(layers)
    tokens = 0

    def ffn_hook(i):
        def hook(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).abs().sum(0).float()
            ffn[i] = x if ffn[i] is None else ffn[i] + x
        return hook

    def head_hook(i):
        def hook(_module, args):
            x = args[0].reshape(-1, cfg.num_attention_heads, head_dim).float().norm(dim=-1).sum(0)
            heads[i] = x if heads[i] is None else heads[i] + x
        return hook

    handles = []
    for i, layer in enumerate(layers):
        if hasattr(getattr(layer, "mlp", None), "down_proj"):
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(ffn_hook(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i)))
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc="importance", unit="batch", leave=False):
            batch = blocks[start : start + batch_size]
            model(input_ids=batch, use_cache=False)
            tokens += batch.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {"heads": torch.stack(heads) / tokens}
    if all(f is not None for f in ffn):
        out["ffn"] = torch.stack(ffn) / tokens
    return out


# ------------------------------------------------------------------------------------ width
def head_groups(cfg) -> tuple[int, int, int]:
    """(query heads, KV heads, query heads per KV head) of a config."""
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    return n_heads, n_kv, n_heads // n_kv


def _rows(linear: torch.nn.Linear, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = linear.bias[index] if linear.bias is not None else None
    return linear.weight[index], bias


def width_prune(model, importance: dict[str, torch.Tensor], intermediate_size: int | None = None,
                num_heads: int | None = None, num_kv_heads: int | None = None):
    """A dense model with fewer FFN channels and/or attention heads, the most important kept.

    importance: from `activation_importance`. Kept channels/heads stay in their original order,
    so keeping everything reproduces the parent exactly. -> (model, facts).
    """
    cfg = copy.deepcopy(model.config)
    n_heads, n_kv, group = head_groups(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    keep_heads, keep_kv = check_heads(n_heads, n_kv, num_heads, num_kv_heads)
    per_group = keep_heads // keep_kv
    width = cfg.intermediate_size
    keep_ffn = width if intermediate_size is None else intermediate_size
    if not 1 <= keep_ffn <= width:
        raise DistillError(f"intermediate_size={keep_ffn} is outside 1..{width}",
                           f"keep between 1 and {width} FFN channels")
    if keep_ffn < width and "ffn" not in importance:
        raise DistillError("this model has no dense FFN (down_proj) to width-prune",
                           "prune MoE models with method: experts")
    state = model.state_dict()
    kept_heads, kept_kv, kept_ffn = [], [], []
    for i, layer in enumerate(decoder_layers(model)):
        prefix = _prefix_of(model, layer)
        score = importance["heads"][i].view(n_kv, group)
        kv = score.sum(1).topk(keep_kv).indices.sort().values
        q_idx = torch.cat([kv_i * group + score[kv_i].topk(per_group).indices.sort().values for kv_i in kv])
        kv_rows = torch.cat([torch.arange(k * head_dim, (k + 1) * head_dim) for k in kv])
        q_rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in q_idx])
        attn = layer.self_attn
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            w, b = _rows(getattr(attn, name), rows)
            state[f"{prefix}self_attn.{name}.weight"] = w
            if b is not None:
                state[f"{prefix}self_attn.{name}.bias"] = b
        state[f"{prefix}self_attn.o_proj.weight"] = attn.o_proj.weight[:, q_rows]
        kept_heads.append(q_idx.tolist())
        kept_kv.append(kv.tolist())
        if keep_ffn < width:
            ch = importance["ffn"][i].topk(keep_ffn).indices.sort().values
            mlp = layer.mlp
            for name in ("gate_proj", "up_proj"):
                w, b = _rows(getattr(mlp, name), ch)
                state[f"{prefix}mlp.{name}.weight"] = w
                if b is not None:
                    state[f"{prefix}mlp.{name}.bias"] = b
            state[f"{prefix}mlp.down_proj.weight"] = mlp.down_proj.weight[:, ch]
            kept_ffn.append(len(ch))
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = keep_heads, keep_kv, head_dim
    cfg.intermediate_size = keep_ffn
    pruned = load_into(cfg, {k: v.clone() for k, v in state.items()}, model)
    facts = {"num_heads": keep_heads, "num_kv_heads": keep_kv, "intermediate_size": keep_ffn,
             "kept_heads": kept_heads, "kept_kv_heads": kept_kv}
    return pruned, facts


def pruned_config(spec, config):
    """The config a prune stage produces from `config`, without weights (for `distill plan`)."""
    cfg = copy.deepcopy(config)
    if spec.method == "depth":
        return with_layers(cfg, resolve_layers(spec.keep_layers, spec.num_layers, cfg.num_hidden_layers, "prune"))
    if spec.method == "width":
        n_heads, n_kv, _ = head_groups(cfg)
        cfg.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        cfg.num_attention_heads, cfg.num_key_value_heads = check_heads(n_heads, n_kv, spec.num_heads,
                                                                       spec.num_kv_heads)
        if spec.intermediate_size or spec.ffn_ratio:
            cfg.intermediate_size = spec.intermediate_size or max(1, round(cfg.intermediate_size * (1 - spec.ffn_ratio)))
    if spec.method == "experts":
        n_exp = _n_experts(cfg)
        kept = spec.num_experts or max(1, round(n_exp * (1 - spec.experts_ratio)))
        setattr(cfg, "num_experts" if hasattr(cfg, "num_experts") else "num_local_experts", kept)
        cfg.num_experts_per_tok = min(cfg.num_experts_per_tok, kept)
    return cfg  # magnitude / 2:4 keep every shape


def _prefix_of(model, layer) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name + "."
    raise RuntimeError("layer not found in model")


# ------------------------------------------------------------------------------------ experts
def moe_layers(model) -> list[tuple[int, torch.nn.Module]]:
    """(layer index, sparse MoE block) for every decoder layer with a router (`gate`) and experts."""
    found = []
    for i, layer in enumerate(decoder_layers(model)):
        block = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe", None)
        if block is not None and hasattr(block, "gate") and hasattr(block, "experts"):
            found.append((i, block))
    return found


def _n_experts(cfg) -> int:
    return getattr(cfg, "num_experts", None) or cfg.num_local_experts


@torch.no_grad()
def reap_scores(model, blocks: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per MoE layer and expert: REAP score and router frequency on calibration blocks [N, S].

    score_e = mean over tokens routed to e of (normalised gate weight) * ||expert_e(x)||_2.
    -> {"reap": [L_moe, E], "frequency": [L_moe, E] (share of top-k picks)}.
    """
    from tqdm.auto import tqdm

    cfg = model.config
    blocks_moe = moe_layers(model)
    if not blocks_moe:
        raise DistillError(f"'{cfg.model_type}' has no sparse MoE blocks to prune experts from",
                           "use method: width or depth for dense models")
    n_exp, top_k = _n_experts(cfg), cfg.num_experts_per_tok
    normalise = getattr(cfg, "norm_topk_prob", True)  # Mixtral always renormalises
    score = torch.zeros(len(blocks_moe), n_exp)
    picks = torch.zeros(len(blocks_moe), n_exp)

    def hook(j):
        def fn(block, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            probs = torch.softmax(block.gate(x).float(), dim=-1)
            w, idx = probs.topk(top_k, dim=-1)
            if normalise:
                w = w / w.sum(-1, keepdim=True)
            for e in range(n_exp):
                routed = (idx == e)
                tok = routed.any(-1)
                if not tok.any():
                    continue
                gate_w = (w * routed).sum(-1)[tok]
                out = block.experts[e](x[tok]).float().norm(dim=-1)
                score[j, e] += (gate_w * out).sum()
                picks[j, e] += tok.sum()
        return fn

    handles = [block.register_forward_pre_hook(hook(j)) for j, (_, block) in enumerate(blocks_moe)]
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc="expert scores", unit="batch", leave=False):
            model(input_ids=blocks[start : start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {"reap": score / picks.clamp(min=1), "frequency": picks / picks.sum(-1, keepdim=True)}


def prune_experts(model, scores: torch.Tensor, num_experts: int):
    """A MoE keeping the `num_experts` highest-scoring experts per layer (router rows sliced alike).

    scores: [L_moe, E]. top-k per token becomes min(top_k, num_experts). -> (model, facts).
    """
    cfg = copy.deepcopy(model.config)
    n_exp = _n_experts(cfg)
    if not 1 <= num_experts <= n_exp:
        raise DistillError(f"num_experts={num_experts} is outside 1..{n_exp}",
                           f"keep between 1 and {n_exp} experts")
    state = model.state_dict()
    kept = []
    for j, (_, block) in enumerate(moe_layers(model)):
        prefix = _prefix_of(model, block)
        keep = scores[j].topk(num_experts).indices.sort().values.tolist()
        kept.append(keep)
        for key in [k for k in state if k.startswith(prefix + "experts.")]:
            del state[key]
        for new, old in enumerate(keep):
            for name, value in block.experts[old].state_dict().items():
                state[f"{prefix}experts.{new}.{name}"] = value
        state[f"{prefix}gate.weight"] = block.gate.weight[keep]
    if hasattr(cfg, "num_experts"):
        cfg.num_experts = num_experts
    else:
        cfg.num_local_experts = num_experts
    cfg.num_experts_per_tok = min(cfg.num_experts_per_tok, num_experts)
    pruned = load_into(cfg, {k: v.clone() for k, v in state.items()}, model)
    return pruned, {"num_experts": num_experts, "num_experts_per_tok": cfg.num_experts_per_tok,
                    "kept_experts": kept}
