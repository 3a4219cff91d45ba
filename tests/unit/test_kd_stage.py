"""The distillation stage end to end on tiny twins, vocab alignment and bad inputs."""

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from distill import runner
from distill.errors import DistillError
from distill.models import byte_tokenizer
from distill.stages.distill import align_vocab

ROOT = Path(__file__).resolve().parents[2]


def qwen3(vocab):
    cfg = AutoConfig.for_model("qwen3", vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    return AutoModelForCausalLM.from_config(cfg)


def test_padded_vocab_is_sliced_to_the_shared_rows(caplog):
    tok = byte_tokenizer()  # 258 tokens
    with caplog.at_level("INFO"):
        assert align_vocab(qwen3(264), qwen3(272), tok, tok) == 264
    assert "264" in caplog.text and "272" in caplog.text


def test_different_tokenizers_are_an_error_naming_both_sizes():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {f"w{i}": i for i in range(300)}, unk_token="w0")))
    with pytest.raises(DistillError) as info:
        align_vocab(qwen3(300), qwen3(272), other, byte_tokenizer())
    assert "300 tokens" in info.value.problem and "258 tokens" in info.value.problem
    with pytest.raises(DistillError, match="output rows"):
        align_vocab(qwen3(200), qwen3(272), byte_tokenizer(), byte_tokenizer())


def test_tiny_moe_to_dense_offline_run(tmp_path):
    result = runner.run(ROOT / "recipes/_tiny/moe-to-dense.yaml", [f"output_dir={tmp_path}"])
    art = result.artifacts["dense"]
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["lineage"] == [result.artifacts["teacher"].artifact_id]
    assert Path(manifest["extra"]["teacher_path"]) == result.artifacts["teacher"].path
    cache = manifest["extra"]["teacher_cache"]
    # k=8 ids (uint16) + k=8 fp16 log-probs per token, plus small safetensors headers
    assert 32 <= cache["bytes_per_token"] < 33
    init = manifest["extra"]["student_init"]
    assert init["merge"] == "frequency" and len(init["router_frequencies"]) == 2
    student = AutoModelForCausalLM.from_pretrained(art.path)
    assert student.config.model_type == "qwen3" and student.config.intermediate_size == 32
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "dense" and "eval_ce" in r for r in rows)


def test_hidden_state_loss_trains_projections_when_widths_differ(tmp_path):
    """A narrower student (32 vs 64) with a hidden-state loss gets learned, checkpointed projections."""
    overrides = [f"output_dir={tmp_path}", "eval=null", "stages.0.loss.hidden_weight=1.0",
                 "stages.0.loss.hidden_loss=cosine", "stages.0.train.steps=4", "stages.0.train.checkpoint_every=2"]
    result = runner.run(ROOT / "recipes/_tiny/pipeline.yaml", overrides)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    hidden = [r["hidden"] for r in rows if "hidden" in r]
    assert hidden and all(0 <= h <= 2 for h in hidden)
    ckpt = sorted((result.run_dir / "checkpoints" / "distill").glob("step-*"))[-1]
    assert (ckpt / "proj.safetensors").is_file()  # widths 32 vs 64 -> learned projections


def test_offline_mode_needs_top_k_and_no_hidden_loss():
    from distill import recipe

    data = recipe.read_yaml(ROOT / "recipes/_tiny/pipeline.yaml")
    with pytest.raises(DistillError, match="top_k"):
        recipe.build(data, ["stages.0.teacher_mode=offline"])
    with pytest.raises(DistillError, match="hidden"):
        recipe.build(data, ["stages.0.teacher_mode=offline", "stages.0.loss.top_k=4",
                            "stages.0.loss.hidden_weight=1"])


def test_student_larger_than_teacher_warns(tmp_path, caplog):
    overrides = [f"output_dir={tmp_path}", "eval=null", "stages.0.train.steps=3",
                 "stages.0.student.model.config.hidden_size=128", "stages.0.student.model.config.num_hidden_layers=4"]
    with caplog.at_level("WARNING"):
        runner.run(ROOT / "recipes/_tiny/pipeline.yaml", overrides)
    assert "larger than the teacher" in caplog.text


def test_non_finite_loss_stops_and_names_the_step(tmp_path):
    overrides = [f"output_dir={tmp_path}", "eval=null", "stages.0.train.steps=6", "stages.0.train.lr=1.0e+30",
                 "stages.0.train.max_grad_norm=null", "stages.0.train.checkpoint_every=1", "stages.0.train.warmup_steps=0"]
    with pytest.raises(DistillError) as info:
        runner.run(ROOT / "recipes/_tiny/pipeline.yaml", overrides)
    msg = info.value.one_line()
    assert "at step" in msg and "last good checkpoint" in msg
