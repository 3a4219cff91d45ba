"""Student initialisation: layer map and MoE -> dense merges, checked against the teacher itself."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill import students
from distill.errors import DistillError
from distill.recipe import StudentSpec

COMMON = dict(vocab_size=50, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              max_position_embeddings=64, tie_word_embeddings=True)


def dense(layers=6, seed=0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("qwen3", intermediate_size=48, num_hidden_layers=layers, **COMMON)
    return AutoModelForCausalLM.from_config(cfg).eval()


def moe(layers=2, experts=4, top_k=2, seed=0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("qwen3_moe", moe_intermediate_size=24, intermediate_size=48, num_experts=experts,
                               num_experts_per_tok=top_k, norm_topk_prob=True, num_hidden_layers=layers, **COMMON)
    return AutoModelForCausalLM.from_config(cfg).eval()


IDS = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_layer_map_equals_teacher_with_the_same_layers_removed():
    teacher = dense(6)
    layers = [0, 2, 5]
    student = students.layer_map_student(teacher, layers)
    assert student.config.num_hidden_layers == 3
    reference = dense(6)
    reference.load_state_dict(teacher.state_dict())
    reference.model.layers = torch.nn.ModuleList([reference.model.layers[i] for i in layers])
    for j, layer in enumerate(reference.model.layers):
        layer.self_attn.layer_idx = j
    reference.config.num_hidden_layers = 3
    reference.config.layer_types = [reference.config.layer_types[i] for i in layers]
    assert torch.allclose(student(IDS).logits, reference(IDS).logits, atol=1e-5)
    # all layers kept -> the teacher itself
    full = students.layer_map_student(teacher, list(range(6)))
    assert torch.allclose(full(IDS).logits, teacher(IDS).logits, atol=1e-6)


def test_resolve_layers_defaults_and_errors():
    assert students.resolve_layers(StudentSpec(num_layers=3), 6) == [0, 2, 5]
    with pytest.raises(DistillError, match="out of range"):
        students.resolve_layers(StudentSpec(layers=[0, 7]), 6)
    with pytest.raises(DistillError, match="exceeds"):
        students.resolve_layers(StudentSpec(num_layers=9), 6)


def _same_experts(model):
    for _, block in students.moe_blocks(model):
        for e in block.experts[1:]:
            e.load_state_dict(block.experts[0].state_dict())


@torch.no_grad()
def test_uniform_merge_of_identical_experts_is_the_moe_itself():
    teacher = moe()
    _same_experts(teacher)  # routing weights sum to 1, so the MoE is exactly one expert
    student, weights = students.moe_to_dense(teacher, "uniform")
    assert student.config.model_type == "qwen3" and student.config.intermediate_size == 24
    assert all(torch.allclose(w, torch.full((4,), 0.25)) for w in weights)
    assert torch.allclose(student(IDS).logits, teacher(IDS).logits, atol=1e-5)


@torch.no_grad()
def test_top_k_merge_with_k_equal_experts_and_flat_router_is_exact():
    teacher = moe(experts=3, top_k=3)
    for _, block in students.moe_blocks(teacher):
        block.gate.weight.zero_()  # every expert gets weight 1/3 on every token
    freq = students.router_frequencies(teacher, IDS)
    assert torch.allclose(freq, torch.full_like(freq, 1 / 3))
    student, _ = students.moe_to_dense(teacher, "top_k", freq, top_k=3)
    assert student.config.intermediate_size == 3 * 24
    assert torch.allclose(student(IDS).logits, teacher(IDS).logits, atol=1e-5)


@torch.no_grad()
def test_router_frequencies_follow_the_router_and_weight_the_merge():
    teacher = moe(experts=4, top_k=2)
    for _, block in students.moe_blocks(teacher):
        block.gate.weight.zero_()
        block.gate.weight[1] = 5.0  # a skewed router, so the counts are far from uniform
    freq = students.router_frequencies(teacher, IDS)
    assert freq.shape == (2, 4) and torch.allclose(freq.sum(-1), torch.ones(2))
    # counted by hand from the router logits
    out = teacher(IDS, output_router_logits=True)
    for layer, logits in enumerate(out.router_logits):
        picked = logits.topk(2, dim=-1).indices.reshape(-1)
        hand = torch.bincount(picked, minlength=4).float() / picked.numel()
        assert torch.allclose(freq[layer], hand)
    _, weights = students.moe_to_dense(teacher, "frequency", freq)
    assert torch.allclose(weights[0], freq[0])
    student, weights = students.moe_to_dense(teacher, "top_k", freq, top_k=1)
    assert (weights[0] > 0).sum() == 1 and student.config.intermediate_size == 24


def test_moe_merge_needs_a_moe_teacher():
    with pytest.raises(DistillError, match="MoE teacher"):
        students.init_student(StudentSpec(init="moe_merge", merge="uniform"), dense(2))


def test_dense_config_copies_attention_shapes():
    teacher = moe()
    cfg = students.dense_config(teacher.config)
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size"):
        assert getattr(cfg, key) == getattr(teacher.config, key)
    student, info = students.init_student(StudentSpec(init="moe_merge", merge="frequency"), teacher,
                                          calibration=IDS)
    assert info["merge"] == "frequency" and len(info["router_frequencies"]) == 2
    # attention and embeddings are copied verbatim
    assert torch.equal(student.model.layers[1].self_attn.q_proj.weight, teacher.model.layers[1].self_attn.q_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
