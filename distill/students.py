"""Student initialisation from a teacher: layer map (depth pruning) and MoE -> dense expert merge.

Layer map: the student is the teacher's config with fewer layers; embeddings, final norm, output
head and the kept layers are copied. Default spacing is even with first and last kept (as in
distil-whisper): the first layer builds token features, the last shapes the output distribution.

MoE -> dense ("One Student Knows All Experts Know"): attention, norms, embeddings and head are
copied; each MoE block becomes one dense FFN built from its experts:
  uniform    elementwise mean of the experts' gate/up/down weights
  frequency  the same mean weighted by how often the router picks each expert on calibration text
  top_k      the k most-used experts side by side (intermediate size k x expert width), each
             expert's down-projection scaled by its normalised frequency, so the dense FFN computes
             sum_e w_e * expert_e(x) exactly
The weighted average is a heuristic start for KD, not an equivalent network: SwiGLU is nonlinear.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from distill import pruning
from distill.errors import DistillError
from distill.pruning import LAYER_KEY, even_layers, layer_map_student, renumbered_state, with_layers  # noqa: F401

if TYPE_CHECKING:
    from distill.context import RunContext
    from distill.recipe import StudentSpec

logger = logging.getLogger(__name__)

# MoE family -> (dense model_type, expert gate/up/down projection names). Routers are `gate`.
MOE_FAMILIES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "qwen3_moe": ("qwen3", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("mistral", ("w1", "w3", "w2")),
}
# Config fields a dense sibling keeps from its MoE parent.
SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
                 "initializer_range", "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias",
                 "attention_dropout", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                 "pad_token_id", "use_sliding_window", "sliding_window", "max_window_layers")


# ------------------------------------------------------------------------------------ anatomy
def decoder_body(model):
    """The transformer body of a causal LM (HF `base_model_prefix`, e.g. `model.model`)."""
    body = getattr(model, model.base_model_prefix, None)
    if body is None or body is model:
        raise DistillError(f"cannot find the decoder body of {type(model).__name__}",
                           "use a standard HF causal LM (Llama, Qwen3, Qwen3-MoE, Mistral, ...)")
    return body


def output_head(model) -> torch.Tensor:
    """The output-embedding weight [V, H] (tied or not)."""
    return model.get_output_embeddings().weight


def final_hidden(model, input_ids: torch.Tensor, all_layers: bool = False):
    """Final-norm hidden states [B, S, H] (and every layer's when all_layers) without the LM head.

    Skipping the head is what lets the losses build logits chunk by chunk. Models whose head does
    more than a matmul (logit soft-capping, scaling) are refused rather than silently mis-distilled.
    """
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        raise DistillError(f"{cfg.model_type} post-processes its logits (soft-capping/scaling), which "
                           "the chunked losses do not reproduce", "use a Llama/Qwen-style model")
    out = decoder_body(model)(input_ids=input_ids, output_hidden_states=all_layers, use_cache=False)
    if all_layers:
        return out.last_hidden_state, out.hidden_states
    return out.last_hidden_state


# ------------------------------------------------------------------------------------ layer map
# The layer map is depth pruning: its home is distill.pruning (with_layers, renumbered_state).


def resolve_layers(spec: StudentSpec, n_teacher: int) -> list[int]:
    """The teacher layers the student keeps: explicit `layers`, else evenly spaced `num_layers`."""
    return pruning.resolve_layers(spec.layers, spec.num_layers, n_teacher)


# ---------------------------------------------------------------------------------------- MoE
moe_blocks = pruning.moe_layers
_decoder_layers = pruning.decoder_layers


def _family(model) -> tuple[str, tuple[str, str, str]]:
    model_type = model.config.model_type
    if model_type not in MOE_FAMILIES or not moe_blocks(model):
        raise DistillError(
            f"student init 'moe_merge' needs a MoE teacher with a router and experts; the teacher is "
            f"'{model_type}' with no sparse MoE blocks",
            f"use init: layer_map for dense teachers; MoE families supported: {', '.join(MOE_FAMILIES)}",
        )
    return MOE_FAMILIES[model_type]


@torch.no_grad()
def router_frequencies(teacher, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """How often each expert is among the router's top-k, per MoE layer, on calibration text.

    blocks: [N, S] token ids. -> [n_moe_layers, n_experts] fp32, each row summing to 1.
    """
    from tqdm.auto import tqdm

    _family(teacher)
    top_k = teacher.config.num_experts_per_tok
    counts = None
    was_training = teacher.training
    teacher.eval()
    for start in tqdm(range(0, len(blocks), batch_size), desc="router counts", unit="batch", leave=False):
        out = teacher(input_ids=blocks[start : start + batch_size], output_router_logits=True)
        per_layer = []
        for logits in out.router_logits:  # [tokens, E] per MoE layer
            picked = logits.float().topk(top_k, dim=-1).indices
            per_layer.append(torch.bincount(picked.reshape(-1), minlength=logits.shape[-1]).float())
        batch_counts = torch.stack(per_layer)
        counts = batch_counts if counts is None else counts + batch_counts
    teacher.train(was_training)
    return counts / counts.sum(-1, keepdim=True)


def dense_config(moe_config, intermediate_size: int | None = None):
    """The dense sibling config of a MoE config: same attention/embeddings, one FFN per layer."""
    from transformers import AutoConfig

    dense_type, _ = MOE_FAMILIES[moe_config.model_type]
    fields = {k: getattr(moe_config, k) for k in SHARED_FIELDS if hasattr(moe_config, k)}
    expert_width = getattr(moe_config, "moe_intermediate_size", None) or moe_config.intermediate_size
    fields["intermediate_size"] = intermediate_size or expert_width
    # A MoE config without head_dim attends with hidden/heads; the dense family's default differs
    # (Qwen3Config: 128), so the copied attention weights would not fit without saying it.
    fields.setdefault("head_dim", moe_config.hidden_size // moe_config.num_attention_heads)
    return AutoConfig.for_model(dense_type, **fields)


def merge_weights(frequencies: torch.Tensor | None, n_experts: int, method: str, top_k: int) -> list[torch.Tensor]:
    """Per MoE layer, the [n_experts] fp32 expert weights of a merge, summing to 1.

    frequencies: [n_layers, n_experts] or None (uniform only). top_k zeroes all but the k most
    frequent experts and renormalises the rest.
    """
    if method == "uniform":
        n_layers = 1 if frequencies is None else frequencies.shape[0]
        return [torch.full((n_experts,), 1.0 / n_experts) for _ in range(n_layers)]
    if frequencies is None:
        raise ValueError(f"merge '{method}' needs router frequencies")
    out = []
    for freq in frequencies:
        if method == "frequency":
            w = freq.clone()
        elif method == "top_k":
            keep = freq.topk(top_k).indices
            w = torch.zeros_like(freq)
            w[keep] = freq[keep]
        else:
            raise ValueError(f"unknown merge '{method}' (valid: uniform, frequency, top_k)")
        total = w.sum()
        out.append(w / total if total > 0 else torch.full_like(w, 1.0 / len(w)))
    return out


def moe_to_dense(teacher, method: str = "frequency", frequencies: torch.Tensor | None = None,
                 top_k: int = 2, layers: list[int] | None = None):
    """A dense student from a MoE teacher (see the module docstring). -> (model, weights per layer).

    frequencies: [n_moe_layers, n_experts] from `router_frequencies` (not needed for uniform);
    layers: teacher layers to keep (default all).
    """
    _, (g_name, u_name, d_name) = _family(teacher)
    n_teacher = teacher.config.num_hidden_layers
    layers = list(range(n_teacher)) if layers is None else layers
    blocks = dict(moe_blocks(teacher))
    if len(blocks) != n_teacher:
        dense = sorted(set(range(n_teacher)) - set(blocks))
        raise DistillError(f"the MoE teacher has dense layers {dense[:5]} besides its MoE layers",
                           "moe_merge supports teachers whose every layer is a MoE block")
    n_experts = teacher.config.num_experts if hasattr(teacher.config, "num_experts") else teacher.config.num_local_experts
    weights = merge_weights(frequencies, n_experts, method, top_k)
    if len(weights) == 1 and n_teacher > 1:
        weights = weights * n_teacher
    expert_width = getattr(teacher.config, "moe_intermediate_size", None) or teacher.config.intermediate_size
    width = expert_width * (min(top_k, n_experts) if method == "top_k" else 1)
    cfg = with_layers(dense_config(teacher.config, width), layers)

    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_config(cfg)
    # Everything but the MoE blocks (attention, norms, embeddings, head) copies by name.
    state = {k: v for k, v in renumbered_state(teacher.state_dict(), layers).items()
             if ".mlp." not in k and ".block_sparse_moe." not in k}
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"unexpected teacher weights for the dense student: {unexpected[:3]}")
    with torch.no_grad():
        for j, t_idx in enumerate(layers):
            experts, w = blocks[t_idx].experts, weights[t_idx]
            mlp = _decoder_layers(student)[j].mlp
            if method == "top_k":
                keep = w.nonzero(as_tuple=True)[0].tolist()
                for name in (g_name, u_name):
                    rows = torch.cat([getattr(experts[e], name).weight for e in keep], dim=0)
                    getattr(mlp, _dense_name(name, g_name, u_name, d_name)).weight.copy_(rows)
                cols = torch.cat([getattr(experts[e], d_name).weight * w[e] for e in keep], dim=1)
                mlp.down_proj.weight.copy_(cols)
            else:
                for name in (g_name, u_name, d_name):
                    avg = sum(getattr(experts[e], name).weight * w[e] for e in range(n_experts) if w[e] > 0)
                    getattr(mlp, _dense_name(name, g_name, u_name, d_name)).weight.copy_(avg)
    student.to(next(teacher.parameters()).dtype)
    return student.eval(), weights


def _dense_name(name: str, g: str, u: str, d: str) -> str:
    return {g: "gate_proj", u: "up_proj", d: "down_proj"}[name]


# ------------------------------------------------------------------------------- entry point
def init_student(spec: StudentSpec, teacher, ctx: RunContext | None = None,
                 calibration: torch.Tensor | None = None) -> tuple[torch.nn.Module, dict]:
    """Student for init = layer_map | moe_merge. -> (model in eval mode, facts for the manifest).

    calibration: [N, S] token ids for router frequencies (merge frequency / top_k).
    """
    n_teacher = teacher.config.num_hidden_layers
    if spec.init == "layer_map":
        layers = resolve_layers(spec, n_teacher)
        logger.info("layer-map student: teacher layers %s of %d", layers, n_teacher)
        return layer_map_student(teacher, layers), {"layers": layers}
    if spec.init == "moe_merge":
        _family(teacher)
        layers = resolve_layers(spec, n_teacher)
        freq = None
        if spec.merge != "uniform":
            if calibration is None or len(calibration) == 0:
                raise DistillError(f"merge '{spec.merge}' needs calibration text for router counts",
                                   "give the stage training data, or use merge: uniform")
            freq = router_frequencies(teacher, calibration[: spec.calibration_blocks])
        student, weights = moe_to_dense(teacher, spec.merge, freq, spec.merge_top_k, layers)
        logger.info("moe->dense student (%s merge) over teacher layers %s", spec.merge, layers)
        info = {"layers": layers, "merge": spec.merge,
                "expert_weights": [[round(float(x), 4) for x in w] for w in weights]}
        if freq is not None:
            info["router_frequencies"] = [[round(float(x), 4) for x in f] for f in freq]
        return student, info
    raise ValueError(f"students.init_student handles layer_map / moe_merge, not '{spec.init}'")
