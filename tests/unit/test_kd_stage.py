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
    # compact, k=8 of 258 rows: 8 x 5 low id bits + a 17-bit vector + 8 x 4-bit log-probs + 6 bytes = 18,
    # plus shard headers
    assert cache["format"] == "compact" and 18 <= cache["bytes_per_token"] < 19
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


def test_kd_from_the_compact_cache_trains_like_kd_from_the_fp16_cache(tmp_path):
    """Same tiny MoE -> dense run, cache format fp16 vs compact (4-bit log-probs). The merged student
    starts close to the teacher (KD 1e-5 .. 5e-3 nats over 6 steps), so the KD term is compared to
    2 % + 2e-5 absolute (measured: <= 2.9e-6 apart) and the total/CE losses to 1e-4 relative
    (measured: <= 1.2e-5); a cache with wrong ids or values gives KD terms orders of magnitude apart."""
    def losses_of(fmt: str):
        result = runner.run(ROOT / "recipes/_tiny/moe-to-dense.yaml",
                            [f"output_dir={tmp_path / fmt}", f"stages.1.cache.format={fmt}", "stages.1.train.log_every=1"])
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["loss"], r["kd"], r["ce"]) for r in rows if r["stage"] == "dense" and "loss" in r], result

    fp16, r16 = losses_of("fp16")
    compact, rc = losses_of("compact")
    assert len(fp16) == len(compact) == 6
    assert r16.artifacts["dense"].extra["teacher_cache"]["bytes_per_token"] > rc.artifacts["dense"].extra[
        "teacher_cache"]["bytes_per_token"]
    for (loss_a, kd_a, ce_a), (loss_b, kd_b, ce_b) in zip(fp16, compact):
        assert abs(kd_a - kd_b) <= 0.02 * kd_a + 2e-5, (fp16, compact)
        assert loss_b == pytest.approx(loss_a, rel=1e-4) and ce_b == pytest.approx(ce_a, rel=1e-4)
    assert compact[-1][1] > 100 * compact[0][1]  # KD grows as the student moves: the term is not ~0 throughout


def test_cache_filled_apart_then_training_never_loads_the_teacher(tmp_path, monkeypatch):
    """The real MoE recipes' path on a tiny model: `distill cache` fills the offline cache from a
    teacher directory (accelerate's device_map path), then `distill run` with a pretrained-style
    student finds it complete and trains without loading the teacher at all."""
    from distill import models, teacher_cache
    from distill.models import build_from_config, byte_tokenizer
    from distill.stages.distill import fill_cache_only

    common = {"model_type": "qwen3", "vocab_size": 258, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 16, "max_position_embeddings": 128, "tie_word_embeddings": True}
    teacher_dir = tmp_path / "teacher"
    build_from_config({**common, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}, 0).save_pretrained(teacher_dir)
    byte_tokenizer().save_pretrained(teacher_dir)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(json.dumps({
        "name": "cache-apart", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "stages": [{"name": "kd", "kind": "distill", "teacher": str(teacher_dir), "teacher_mode": "offline",
                    "cache": {"dir": str(tmp_path / "cache"), "shard_blocks": 16},
                    "student": {"init": "config", "model": {"config": {**common, "hidden_size": 16,
                                                                       "intermediate_size": 32, "num_hidden_layers": 1}}},
                    "data": {"source": str(ROOT / "recipes/_tiny/data/train.txt"), "seq_len": 32},
                    "loss": {"top_k": 8, "ce_weight": 0.1},
                    "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 10, "log_every": 1}}]}))
    loads = []
    real_fill_load = teacher_cache.load_for_fill
    monkeypatch.setattr(teacher_cache, "load_for_fill", lambda *a: loads.append(a) or real_fill_load(*a))
    (summary,) = fill_cache_only(str(recipe_file), [])
    assert len(loads) == 1 and summary["fill_processes"] == 1 and summary["format"] == "compact"

    real_load = models.load_causal_lm

    def no_teacher(ref, *args, **kwargs):
        assert ref.source != str(teacher_dir), "the training run loaded the teacher"
        return real_load(ref, *args, **kwargs)

    monkeypatch.setattr(models, "load_causal_lm", no_teacher)
    result = runner.run(recipe_file, [])
    extra = result.artifacts["kd"].extra
    assert len(loads) == 1 and extra["teacher_cache"]["dir"] == str(tmp_path / "cache")
    assert extra["teacher_params"] > extra["student_params"] > 0  # read from the teacher's config
