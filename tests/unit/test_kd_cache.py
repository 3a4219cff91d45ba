"""Offline teacher cache: contents vs the teacher, resume after a kill, refusal of a foreign cache."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill import losses, teacher_cache
from distill.errors import DistillError


def tiny(seed):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("qwen3", vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(cfg).eval()


TOKENS = torch.randint(0, 40, (7, 6), generator=torch.Generator().manual_seed(0))


def test_cache_holds_the_teachers_top_k_and_reports_bytes(tmp_path):
    teacher = tiny(0)
    summary = teacher_cache.fill(tmp_path, teacher, TOKENS, top_k=5, vocab=40, shard_blocks=3, batch_size=2)
    shards = sorted(tmp_path.glob("shard-*.safetensors"))
    assert len(shards) == 3 and summary["shards"] == 3
    assert summary["bytes"] == sum(p.stat().st_size for p in shards)
    assert summary["bytes_per_token"] == pytest.approx(summary["bytes"] / TOKENS.numel(), abs=0.01)
    cache = teacher_cache.TeacherCache(tmp_path, expect_teacher=teacher_cache.teacher_hash(teacher))
    rows = [6, 0, 4]
    ids, logp = cache.lookup(rows)
    with torch.no_grad():
        ref_ids, ref_logp = losses.top_k_logprobs(teacher(TOKENS[rows]).logits, 5)
    assert torch.equal(ids, ref_ids)
    assert torch.allclose(logp, ref_logp, atol=2e-3)  # stored as fp16


def test_fill_resumes_at_the_missing_shard(tmp_path):
    teacher = tiny(0)
    teacher_cache.fill(tmp_path, teacher, TOKENS, top_k=4, vocab=40, shard_blocks=3)
    first = (tmp_path / "shard-00000.safetensors").read_bytes()
    stamp = (tmp_path / "shard-00000.safetensors").stat().st_mtime_ns
    (tmp_path / "shard-00001.safetensors").unlink()  # as if killed before writing it
    (tmp_path / teacher_cache.SUMMARY).unlink()
    teacher_cache.fill(tmp_path, teacher, TOKENS, top_k=4, vocab=40, shard_blocks=3)
    assert (tmp_path / "shard-00001.safetensors").is_file()
    assert (tmp_path / "shard-00000.safetensors").stat().st_mtime_ns == stamp
    assert (tmp_path / "shard-00000.safetensors").read_bytes() == first


def test_a_cache_from_another_teacher_or_data_is_refused(tmp_path):
    teacher_cache.fill(tmp_path, tiny(0), TOKENS, top_k=4, vocab=40)
    with pytest.raises(DistillError, match="different teacher"):
        teacher_cache.fill(tmp_path, tiny(1), TOKENS, top_k=4, vocab=40)
    with pytest.raises(DistillError, match="different training data"):
        teacher_cache.fill(tmp_path, tiny(0), TOKENS.flip(0), top_k=4, vocab=40)
    with pytest.raises(DistillError, match="different teacher"):
        teacher_cache.TeacherCache(tmp_path, expect_teacher="0" * 64)
    assert json.loads((tmp_path / "meta.json").read_text())["ids_dtype"] == "uint16"
