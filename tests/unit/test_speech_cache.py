"""The speech teacher cache: resumable shards keyed by the teacher's hash, streamed back by row."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill import speech, speech_cache
from distill.errors import DistillError
from tests.unit.test_speech import tiny_whisper


class Killed(BaseException):
    """What SIGKILL does to the fill loop: it stops between two statements."""


class WordTokenizer:
    """Stands in for Whisper's tokenizer: ids > 2 are words, 0-2 are special."""

    prefix_tokens = [1]  # the start token alone: no forced language/task tokens

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(f"w{i}" for i in seq if i > 2) for seq in ids]


def clips(tmp_path, n: int) -> list[speech.Utterance]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (rng.standard_normal(8000) * 0.1).astype(np.float32), 16000)
        out.append(speech.Utterance(f"u{i}", str(path), f"word{i} other"))
    return out


def setup(tmp_path, n=6):
    from transformers import WhisperFeatureExtractor

    teacher = tiny_whisper(2)
    processor = SimpleNamespace(feature_extractor=WhisperFeatureExtractor(feature_size=16, chunk_length=2),
                                tokenizer=WordTokenizer())
    return teacher, processor, clips(tmp_path, n)


def fill(root, teacher, processor, utts, sha="sha-a", **kw):
    return speech_cache.fill(root, teacher, processor, utts, teacher_sha=sha, language=None, top_k=4,
                             shard_items=2, batch_size=2, max_new_tokens=6, **kw)


def test_cache_resumes_after_a_kill_and_matches_an_uninterrupted_fill(tmp_path, monkeypatch):
    teacher, processor, utts = setup(tmp_path)
    fill(tmp_path / "clean", teacher, processor, utts)
    real, calls, killed = speech.pseudo_label, [], []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and not killed:
            killed.append(1)
            raise Killed  # the process is killed while labelling shard 2
        return real(*args, **kwargs)

    monkeypatch.setattr(speech, "pseudo_label", dies_on_second_shard)
    root = tmp_path / "killed"
    with pytest.raises(Killed):
        fill(root, teacher, processor, utts)
    assert sorted(p.name for p in root.glob("shard-*.safetensors")) == ["shard-00000.safetensors"]
    assert not (root / speech_cache.SUMMARY).exists()
    calls.clear()
    summary = fill(root, teacher, processor, utts)
    assert len(calls) == 2  # only shards 1 and 2 were labelled again
    assert summary["shards"] == 3 and summary["items"] == 6
    a, b = (speech_cache.SpeechCache(tmp_path / d, "sha-a") for d in ("clean", "killed"))
    rows = [5, 0, 3]
    for name, pad in (("labels", -100), ("topk_ids", 0), ("topk_logp", 0), ("enc", 0)):
        torch.testing.assert_close(a.get(name, rows, pad), b.get(name, rows, pad))
    assert a.side() == b.side() and a.side()["ids"] == [u.id for u in utts]
    # rows read back are what the teacher computes now: its encoder states, in fp16
    feats = speech.features(processor.feature_extractor, [speech.load_wave(utts[3].audio_path)[0]])
    with torch.no_grad():
        enc = teacher.model.encoder(feats).last_hidden_state
    torch.testing.assert_close(b.get("enc", [3]).float(), enc, atol=2e-3, rtol=2e-3)


def test_cache_refuses_another_teachers_shards(tmp_path):
    teacher, processor, utts = setup(tmp_path, n=2)
    root = tmp_path / "cache"
    fill(root, teacher, processor, utts, sha="sha-a")
    with pytest.raises(DistillError, match="different teacher"):
        fill(root, teacher, processor, utts, sha="sha-b")
    with pytest.raises(DistillError, match="different teacher"):
        speech_cache.SpeechCache(root, expect_teacher="sha-b")
    with pytest.raises(DistillError, match="different training data"):
        fill(root, teacher, processor, utts[:1], sha="sha-a")


def test_window_view_holds_the_cut_encoders_states(tmp_path):
    teacher, processor, utts = setup(tmp_path, n=3)
    root = tmp_path / "cache"
    fill(root, teacher, processor, utts)
    speech_cache.fill_window(root, teacher, processor, utts, 1, teacher_sha="sha-a", shard_items=2, batch_size=2)
    view = speech_cache.SpeechCache(root / "window-50", "sha-a")
    cut, _ = speech.whisper_student(teacher, window_seconds=1)
    fe = speech.student_processor(processor, 1).feature_extractor
    with torch.no_grad():
        want = cut.model.encoder(speech.features(fe, [speech.load_wave(utts[2].audio_path)[0]])).last_hidden_state
    got = view.get("enc", [2]).float()
    assert got.shape == (1, 50, 32)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    with pytest.raises(DistillError, match="different teacher"):
        speech_cache.fill_window(root, teacher, processor, utts, 1, teacher_sha="sha-b", shard_items=2)


def test_empty_pseudo_labels_stop_the_fill_with_a_clear_message(tmp_path, monkeypatch):
    teacher, processor, utts = setup(tmp_path, n=20)
    monkeypatch.setattr(speech, "pseudo_label", lambda t, enc, *a, **k: [[2]] * len(enc))  # EOS only
    with pytest.raises(DistillError, match=r"empty for 16 of 16 .*silent or broken"):
        fill(tmp_path / "cache", teacher, processor, utts, max_empty_rate=0.2)
