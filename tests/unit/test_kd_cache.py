"""Offline teacher cache: contents vs the teacher, resume after a kill, refusal of a foreign cache, the
compact format (packed ids, quantised log-probs, tail mass kept), filling by several processes."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill import cache_codec, losses, teacher_cache
from distill.context import Processes
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


# ------------------------------------------------------------------------------ compact format
def test_compact_codec_keeps_ids_and_tail_mass_in_the_bytes_it_promises():
    vocab, k = 151_936, 64  # Qwen3's rows: 18 bits at fixed width, 11 low bits + 139-bit vector here
    logp = torch.log_softmax(torch.randn(50, vocab, generator=torch.Generator().manual_seed(0)) * 3, -1)
    values, ids = logp.topk(k, -1)
    order = ids.argsort(-1)  # decoded ids come back ascending
    ids, values = ids.gather(-1, order), values.gather(-1, order)
    tail = -torch.expm1(torch.logsumexp(values, -1))
    assert cache_codec.ef_layout(vocab, k) == (11, 139)
    errors = []
    for bits in (1, 2, 4, 8):
        enc = cache_codec.encode_compact(ids, values, vocab, bits)
        nbytes = sum(t.shape[1] * t.element_size() for t in enc.values())
        assert nbytes == cache_codec.compact_bytes_per_token(k, vocab, bits) == 88 + 18 + 8 * bits + 6
        out_ids, out_logp = cache_codec.decode_compact(enc, k, vocab, bits)
        assert torch.equal(out_ids, ids)
        assert torch.allclose(-torch.expm1(torch.logsumexp(out_logp, -1)), tail, rtol=2e-3, atol=1e-5)
        top = out_logp.gather(-1, values.argmax(-1, keepdim=True))[:, 0]
        assert (top >= out_logp.max(-1).values - 1e-6).all()  # the top token stays on top (ties at 1 bit)
        errors.append(float((out_logp - values).abs().mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.02  # more bits, closer values
    assert cache_codec.compact_bytes_per_token(k, vocab, 4) == 144  # <= 150 at k=64 (fp16: 384)


def test_compact_cache_file_reads_back_what_the_teacher_gave(tmp_path):
    teacher = tiny(0)
    summary = teacher_cache.fill(tmp_path, teacher, TOKENS, top_k=5, vocab=40, shard_blocks=3, fmt="compact",
                                 logp_bits=8)
    per_token = cache_codec.compact_bytes_per_token(5, 40, 8)  # 3 low bits x 5 + 15-bit vector + 5 + 6
    assert per_token == 15 and summary["format"] == "compact"
    assert per_token * TOKENS.numel() < summary["bytes"] < per_token * TOKENS.numel() + 3 * 500  # + headers
    ids, logp = teacher_cache.TeacherCache(tmp_path).lookup([6, 0, 4])
    with torch.no_grad():
        ref_ids, ref_logp = losses.top_k_logprobs(teacher(TOKENS[[6, 0, 4]]).logits, 5)
    order = ref_ids.argsort(-1)
    assert torch.equal(ids, ref_ids.gather(-1, order))
    assert torch.allclose(logp, ref_logp.gather(-1, order), atol=0.05)


def test_a_version_1_cache_is_still_read(tmp_path):
    teacher = tiny(0)
    teacher_cache.fill(tmp_path, teacher, TOKENS, top_k=4, vocab=40, shard_blocks=3)  # fp16 layout = v1
    meta = json.loads((tmp_path / "meta.json").read_text())
    for key in ("format", "fill_processes"):
        meta.pop(key)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    ids, logp = teacher_cache.TeacherCache(tmp_path).lookup([1])
    assert ids.shape == logp.shape == (1, 6, 4)
    with pytest.raises(DistillError, match="different cache.format"):  # a compact run does not reuse it
        teacher_cache.fill(tmp_path, teacher, TOKENS, top_k=4, vocab=40, shard_blocks=3, fmt="compact")


# ------------------------------------------------------------------------------ several processes
class SequentialRank(Processes):
    """Process `rank` of `world_size` run one after another in this process (barriers are no-ops)."""

    def barrier(self) -> None:
        pass


def test_each_process_fills_its_own_shards_then_rank0_merges(tmp_path):
    teacher, calls = tiny(0), []

    def load():
        calls.append(1)
        return teacher

    with pytest.raises(DistillError, match="incomplete"):  # rank 1 first: rank 0 has not merged yet
        teacher_cache.fill(tmp_path, load, TOKENS, top_k=4, vocab=40, shard_blocks=2, fmt="compact",
                           t_hash="t", procs=SequentialRank(rank=1, world_size=2))
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-00001.safetensors", "shard-00003.safetensors"]
    summary = teacher_cache.fill(tmp_path, load, TOKENS, top_k=4, vocab=40, shard_blocks=2, fmt="compact",
                                 t_hash="t", procs=SequentialRank(rank=0, world_size=2))
    assert summary["shards"] == 4 and summary["fill_processes"] == 2
    assert [r["rank"] for r in summary["per_process"]] == [0, 1] and sum(r["tokens"] for r in summary["per_process"]) == 42
    assert len(calls) == 2  # each process loaded the teacher once; a full cache loads it no more
    teacher_cache.fill(tmp_path, load, TOKENS, top_k=4, vocab=40, shard_blocks=2, fmt="compact", t_hash="t")
    assert len(calls) == 2


def test_a_half_filled_cache_is_refused_with_another_process_count(tmp_path):
    with pytest.raises(DistillError, match="incomplete"):
        teacher_cache.fill(tmp_path, tiny(0), TOKENS, top_k=4, vocab=40, shard_blocks=2, t_hash="t",
                           procs=SequentialRank(rank=1, world_size=2))
    with pytest.raises(DistillError, match="half filled by 2 process"):
        teacher_cache.fill(tmp_path, tiny(0), TOKENS, top_k=4, vocab=40, shard_blocks=2, t_hash="t")


def test_files_fingerprint_changes_with_the_weights(tmp_path):
    tiny(0).save_pretrained(tmp_path / "a")
    tiny(1).save_pretrained(tmp_path / "b")
    a = teacher_cache.files_fingerprint(tmp_path / "a")
    assert a == teacher_cache.files_fingerprint(tmp_path / "a")
    assert a != teacher_cache.files_fingerprint(tmp_path / "b")
