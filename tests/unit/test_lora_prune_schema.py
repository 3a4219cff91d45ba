"""LoRA / prune recipe checks that need no model: schema rules and config-level preflight."""

import pytest

from distill import recipe
from distill.errors import DistillError

TEXT = {"source": "recipes/_tiny/data/train.txt", "seq_len": 64}
INLINE = {"config": {"model_type": "qwen3", "num_hidden_layers": 4, "num_attention_heads": 8,
                     "num_key_value_heads": 2, "intermediate_size": 64, "hidden_size": 32, "head_dim": 4}}


def checked(*stages):
    r = recipe.build({"name": "t", "stages": list(stages)})
    recipe.check_references(r)
    return r


def test_lora_defaults_to_q_and_v_projections():
    r = checked({"kind": "lora", "model": INLINE, "data": TEXT})
    assert r.stages[0].target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("bad, needle", [
    ({"rank": 0}, "rank"), ({"rank": -4}, "rank"), ({"dropout": 1.0}, "dropout"),
    ({"target_modules": []}, "target_modules is empty"), ({"objective": "kd"}, "needs `teacher`"),
    ({"speech": {"source": "asset:tts-en"}}, "exactly one of `data`"),
])
def test_lora_bad_fields(bad, needle):
    with pytest.raises(DistillError, match=needle):
        checked({"kind": "lora", "model": INLINE, "data": TEXT, **bad})


def test_lora_after_a_torch_int8_or_onnx_stage_is_refused():
    base = {"kind": "train", "name": "base", "model": INLINE, "data": TEXT}
    for before in ({"kind": "quantize", "method": "torch-dynamic-int8"}, {"kind": "export"}):
        with pytest.raises(DistillError, match="not full-precision or bitsandbytes"):
            checked(base, before, {"kind": "lora", "data": TEXT})
    checked(base, {"kind": "quantize", "method": "bnb-nf4"}, {"kind": "lora", "data": TEXT})  # QLoRA base


@pytest.mark.parametrize("bad, needle", [
    ({"method": "magnitude", "sparsity": 0.0}, "sparsity"), ({"method": "magnitude", "sparsity": 1.0}, "sparsity"),
    ({"method": "width", "ffn_ratio": 1.5, "calibration": TEXT}, "ffn_ratio"),
    ({"method": "experts", "experts_ratio": 0.0, "calibration": TEXT}, "experts_ratio"),
    ({"method": "width", "ffn_ratio": 0.5}, "give `calibration`"),
    ({"method": "width", "ffn_ratio": 0.5, "calibration": TEXT, "calibration_blocks": 2}, "calibration_blocks"),
    ({"method": "width", "num_heads": 10, "calibration": TEXT}, "breaks GQA grouping"),  # 5 per group > 4
    ({"method": "width", "num_heads": 5, "calibration": TEXT}, "breaks GQA grouping"),
    ({"method": "width", "num_heads": 4, "num_kv_heads": 3, "calibration": TEXT}, "multiple of num_kv_heads"),
    ({"method": "depth", "num_layers": 6}, "exceeds the model's 4 layers"),
    ({"method": "depth", "sparsity": 0.5}, "does not use"),
    ({"method": "experts", "num_experts": 2, "calibration": TEXT}, "needs a MoE model"),
])
def test_prune_bad_input(bad, needle):
    with pytest.raises(DistillError, match=needle):
        checked({"kind": "prune", "model": INLINE, **bad})


def test_prune_gqa_consistent_cuts_pass():
    checked({"kind": "prune", "model": INLINE, "method": "width", "num_heads": 6, "calibration": TEXT})
    checked({"kind": "prune", "model": INLINE, "method": "width", "num_heads": 2, "num_kv_heads": 1,
             "calibration": TEXT})
