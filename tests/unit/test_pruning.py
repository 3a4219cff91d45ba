"""Pruning library on tiny random models: each pruned model is checked against its parent with the
removed parts masked out, so 'smaller' is proven to mean 'the same function minus what was cut'."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill import pruning, sparsity
from distill.errors import DistillError

COMMON = dict(vocab_size=50, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              max_position_embeddings=64, tie_word_embeddings=True)
IDS = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
CALIB = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(2))


def dense(model_type="qwen3", layers=2, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, intermediate_size=48, num_hidden_layers=layers, **{**COMMON, **kw})
    return AutoModelForCausalLM.from_config(cfg).eval()


def moe(experts=4, top_k=2, seed=0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("qwen3_moe", moe_intermediate_size=24, intermediate_size=48, num_experts=experts,
                               num_experts_per_tok=top_k, norm_topk_prob=True, num_hidden_layers=2, **COMMON)
    return AutoModelForCausalLM.from_config(cfg).eval()


@torch.no_grad()
def logits(model, ids=IDS):
    return model(input_ids=ids).logits


@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
@torch.no_grad()
def test_width_keeping_everything_reproduces_the_parent(model_type):
    parent = dense(model_type)
    imp = pruning.activation_importance(parent, CALIB)
    same, facts = pruning.width_prune(parent, imp, intermediate_size=48, num_heads=4, num_kv_heads=2)
    assert facts["kept_heads"] == [[0, 1, 2, 3]] * 2
    torch.testing.assert_close(logits(same), logits(parent), rtol=0, atol=0)


@torch.no_grad()
def test_width_pruned_equals_parent_with_cut_channels_and_heads_masked(tmp_path):
    parent = dense()
    imp = pruning.activation_importance(parent, CALIB)
    small, facts = pruning.width_prune(parent, imp, intermediate_size=24, num_heads=2)
    assert small.config.intermediate_size == 24 and small.config.num_attention_heads == 2
    assert small.config.num_key_value_heads == 2 and small.config.head_dim == 8
    masked = dense()
    masked.load_state_dict(parent.state_dict())
    for i, layer in enumerate(masked.model.layers):
        keep = imp["ffn"][i].topk(24).indices
        cut = torch.ones(48, dtype=torch.bool)
        cut[keep] = False
        layer.mlp.down_proj.weight[:, cut] = 0
        for h in range(4):
            if h not in facts["kept_heads"][i]:
                layer.self_attn.o_proj.weight[:, h * 8:(h + 1) * 8] = 0
    torch.testing.assert_close(logits(small), logits(masked), rtol=1e-5, atol=1e-5)
    # The most important channels are the ones kept
    assert set(imp["ffn"][0].topk(24).indices.tolist()) == set(
        i for i in range(48) if masked.model.layers[0].mlp.down_proj.weight[:, i].abs().sum() > 0)
    small.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert cfg.num_attention_heads == 2
    torch.testing.assert_close(logits(again), logits(small))


@torch.no_grad()
def test_head_pruning_keeps_gqa_groups():
    parent = dense(num_attention_heads=8, num_key_value_heads=2, head_dim=4)
    imp = pruning.activation_importance(parent, CALIB)
    small, facts = pruning.width_prune(parent, imp, num_heads=4)  # 2 of 4 heads in each of 2 groups
    for heads in facts["kept_heads"]:
        assert sorted(h // 4 for h in heads) == [0, 0, 1, 1]
    one_group, facts = pruning.width_prune(parent, imp, num_heads=2, num_kv_heads=1)
    for heads, kv in zip(facts["kept_heads"], facts["kept_kv_heads"], strict=True):
        assert len(kv) == 1 and all(h // 4 == kv[0] for h in heads)
    assert one_group.config.num_key_value_heads == 1
    # masked-parent equivalence for a KV-group cut too
    masked = dense(num_attention_heads=8, num_key_value_heads=2, head_dim=4)
    masked.load_state_dict(parent.state_dict())
    for i, layer in enumerate(masked.model.layers):
        for h in range(8):
            if h not in facts["kept_heads"][i]:
                layer.self_attn.o_proj.weight[:, h * 4:(h + 1) * 4] = 0
    torch.testing.assert_close(logits(one_group), logits(masked), rtol=1e-5, atol=1e-5)


def test_head_counts_that_break_gqa_are_refused():
    parent = dense()
    imp = pruning.activation_importance(parent, CALIB)
    with pytest.raises(DistillError, match="GQA"):
        pruning.width_prune(parent, imp, num_heads=3)  # 2 KV heads cannot share 3 query heads equally
    with pytest.raises(DistillError, match="GQA"):
        pruning.width_prune(parent, imp, num_heads=6)  # more than the 2 per group there are


@torch.no_grad()
def test_depth_layer_map_matches_students_alias():
    from distill import students

    parent = dense(layers=4)
    a = pruning.layer_map_student(parent, [0, 3])
    b = students.layer_map_student(parent, [0, 3])
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=0)
    assert pruning.resolve_layers(None, 2, 4) == [0, 3]


@torch.no_grad()
def test_two_four_mask_keeps_exactly_two_of_four():
    model = dense()
    facts = sparsity.sparsify(model, "2:4")
    assert facts["sparsity"] == pytest.approx(0.5)
    for _, lin in sparsity.prunable_linears(model):
        groups = (lin.weight != 0).reshape(lin.weight.shape[0], -1, 4).sum(-1)
        assert (groups == 2).all()
    size = sparsity.sparse_size(model, "2:4")
    dense_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert size["dense_bytes"] == dense_bytes  # zeros still take their bytes when stored dense
    # half the values + 2 bits per kept value: at exactly 50 % the same bytes as a bitmask
    assert size["semi_structured_2_4_bytes"] == size["bitmask_bytes"] < 0.6 * dense_bytes


@torch.no_grad()
def test_magnitude_sparsity_drops_the_smallest_weights():
    model = dense()
    before = {n: lin.weight.clone() for n, lin in sparsity.prunable_linears(model)}
    facts = sparsity.sparsify(model, "magnitude", 0.5)
    assert facts["sparsity"] == pytest.approx(0.5, abs=1e-3)
    for name, lin in sparsity.prunable_linears(model):
        kept = before[name][lin.weight != 0].abs()
        dropped = before[name][lin.weight == 0].abs()
        assert kept.min() >= dropped.max()
    assert model.model.embed_tokens.weight.ne(0).all()  # embeddings are not pruned
    size = sparsity.sparse_size(model, "magnitude")
    assert size["csr_bytes"] > size["bitmask_bytes"]  # at 50 % fp32, int32 indices cost more than a bitmask


@torch.no_grad()
def test_expert_pruning_equals_parent_with_removed_experts_never_routed(tmp_path):
    parent = moe()
    scores = pruning.reap_scores(parent, CALIB)
    assert scores["reap"].shape == (2, 4)
    assert torch.allclose(scores["frequency"].sum(-1), torch.ones(2))
    small, facts = pruning.prune_experts(parent, scores["reap"], 2)
    assert small.config.num_experts == 2
    for j, kept in enumerate(facts["kept_experts"]):
        assert set(kept) == set(scores["reap"][j].topk(2).indices.tolist())
    handles = []
    for j, (_, block) in enumerate(pruning.moe_layers(parent)):
        removed = [e for e in range(4) if e not in facts["kept_experts"][j]]
        handles.append(block.gate.register_forward_hook(
            lambda _m, _a, out, removed=removed: out.index_fill(-1, torch.tensor(removed), -1e9)))
    try:
        torch.testing.assert_close(logits(small), logits(parent), rtol=1e-5, atol=1e-5)
    finally:
        for h in handles:
            h.remove()
    small.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).num_experts == 2


@torch.no_grad()
def test_expert_pruning_keeping_all_reproduces_the_parent():
    parent = moe()
    same, _ = pruning.prune_experts(parent, torch.rand(2, 4), 4)
    torch.testing.assert_close(logits(same), logits(parent), rtol=0, atol=0)


@torch.no_grad()
def test_moe_merge_of_a_moe_config_without_head_dim_fits_the_attention():
    from distill import students

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen3_moe", vocab_size=50, hidden_size=32, num_attention_heads=4,
                               num_key_value_heads=2, moe_intermediate_size=24, num_experts=4,
                               num_experts_per_tok=2, num_hidden_layers=2, max_position_embeddings=64)
    teacher = AutoModelForCausalLM.from_config(cfg).eval()
    student, _ = students.moe_to_dense(teacher, "uniform")
    assert student.config.head_dim == 8  # hidden / heads, as the MoE attends
    assert logits(student).shape == logits(teacher).shape


@torch.no_grad()
def test_pruned_config_without_weights_matches_the_pruned_model():
    from distill.recipe import PruneStage

    text = {"source": "x.txt"}
    parent = dense(layers=4)
    width = PruneStage(kind="prune", method="width", ffn_ratio=0.5, num_heads=2, calibration=text)
    small, _ = pruning.width_prune(parent, pruning.activation_importance(parent, CALIB), 24, 2)
    planned = pruning.pruned_config(width, parent.config)
    assert (planned.intermediate_size, planned.num_attention_heads, planned.num_key_value_heads) == \
        (small.config.intermediate_size, small.config.num_attention_heads, small.config.num_key_value_heads)
    depth = PruneStage(kind="prune", method="depth", num_layers=3)
    assert pruning.pruned_config(depth, parent.config).num_hidden_layers == 3
    experts = PruneStage(kind="prune", method="experts", num_experts=2, calibration=text)
    assert pruning.pruned_config(experts, moe().config).num_experts == 2
