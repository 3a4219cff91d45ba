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



def test_per_device_figures_follow_the_parallel_mode_and_the_offline_cache():
    """ddp replicates the student on every device, fsdp divides it; offline, training holds no
    teacher and the cache fill spreads it over each filling process's devices."""
    from distill import recipe

    def rows(overrides):
        r = recipe.load(ROOT / "recipes/_tiny/moe-to-dense.yaml", overrides)
        cfg = dict(r.stages[0].model.config)
        t_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        stage = r.stages[1]
        teacher, student = plan.shape_of("teacher", t_cfg), plan.shape_of("student", plan.student_config(stage, t_cfg, {}))
        return stage, teacher, student, {label: fn for label, fn in plan.device_rows(stage, teacher, student)}

    _, _, student, ddp = rows(["stages.1.train.parallel=ddp"])
    stage, teacher, _, fsdp = rows(["stages.1.train.parallel=fsdp"])
    adam = "AdamW moments (2 x fp32)"
    assert ddp[adam](8) == ddp[adam](1) == 8 * student.params
    assert fsdp[adam](8) == fsdp[adam](1) / 8
    assert fsdp["FSDP: gathered blocks (2 x fp32)"](2) > 0 == ddp["FSDP: gathered blocks (2 x fp32)"](2)
    assert fsdp["teacher weights (offline: not loaded)"](1) == 0
    text = "\n".join(plan.cache_fill_plan(stage, teacher, student, 80.0))
    assert "8 process(es) x 1 device(s)" in text and "1 process(es) x 8 device(s)" in text
    assert "18 bytes/token" in text  # compact, k=8 of 258 rows, 4-bit log-probs
