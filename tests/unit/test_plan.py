"""`distill plan`: meta-device counts equal the real models' counts; verdict logic on a tiny twin."""

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from distill import plan, students

ROOT = Path(__file__).resolve().parents[2]


def test_meta_counts_match_instantiated_models():
    cfg = AutoConfig.for_model("qwen3_moe", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=8, moe_intermediate_size=16, num_experts=4,
                               num_experts_per_tok=2)
    shape = plan.shape_of("teacher", cfg)
    real = AutoModelForCausalLM.from_config(cfg)
    assert shape.params == sum(p.numel() for p in real.parameters())
    expert = sum(p.numel() for p in students.moe_blocks(real)[0][1].experts[0].parameters())
    assert shape.active_params == shape.params - 2 * expert * (4 - 2)


def test_plan_report_for_the_tiny_moe_twin():
    text = plan.plan(str(ROOT / "recipes/_tiny/moe-to-dense.yaml"), [])
    assert "stage teacher (train)" in text and "stage dense (distill" in text
    assert "verdict" in text and "fits" in text
    assert "student  qwen3 " in text and "teacher  qwen3_moe" in text
