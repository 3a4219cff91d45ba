"""The ASR distillation twin on real assets: a 1-decoder-layer Whisper student that still transcribes."""

from __future__ import annotations

import json

import pytest

from distill import artifacts, runner
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def installed(asset_id: str) -> bool:
    from distill.assets import asset_path
    from distill.errors import DistillError

    try:
        asset_path(asset_id)
        return True
    except DistillError:
        return False


@pytest.mark.skipif(not (installed("whisper-tiny.en") and installed("librivox-5")),
                    reason="needs assets whisper-tiny.en and librivox-5 (make assets)")
def test_tiny_asr_twin_produces_a_working_student(tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from distill.evaluation.asr import load_audio
    from distill.speech import read_utterances

    result = runner.run(ROOT / "recipes/_tiny/asr.yaml", [f"output_dir={tmp_path}"])
    art = result.artifacts["distill"]
    assert artifacts.is_complete(art.path)
    assert art.kind == "hf-whisper" and art.lineage == ["asset/whisper-tiny.en"]
    assert len(art.extra["decoder_layer_map"]) == 1
    assert 0 < art.extra["kept_after_wer_filter"] <= art.extra["utterances"]
    # a speech step's rows are utterances: the log counts those, not tokens (3 steps x batch 4)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("stage") == "distill" and "utt_per_s" in r]
    assert [r["utterances"] for r in trained] == [4, 8, 12]
    assert not any("tok_per_s" in r or "tokens" in r for r in rows)

    model = WhisperForConditionalGeneration.from_pretrained(art.path).eval()
    processor = WhisperProcessor.from_pretrained(art.path)
    assert model.config.decoder_layers == 1
    utt = read_utterances("asset:librivox-5", None, 1)[0]
    feats = processor.feature_extractor(load_audio(utt.audio_path), sampling_rate=16000,
                                        return_tensors="pt").input_features
    text = processor.batch_decode(model.generate(feats, max_new_tokens=40), skip_special_tokens=True)[0]
    assert text.strip(), "the student collapsed to empty transcripts"


@pytest.mark.slow
@pytest.mark.skipif(not (installed("whisper-tiny.en") and installed("librivox-5")),
                    reason="needs assets whisper-tiny.en and librivox-5 (make assets)")
def test_tiny_levers_twin_ships_plain_hf_students_that_chunk_long_audio(tmp_path):
    """Window and encoder-cut students: plain WhisperForConditionalGeneration + a processor whose
    chunk_length is the window, loaded by from_pretrained; audio longer than the window goes
    through long-form chunking in the eval adapter instead of being cut at 10 s."""
    import json

    import numpy as np
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from distill.evaluation.adapters import load_hf_whisper
    from distill.speech import load_wave, read_utterances

    result = runner.run(ROOT / "recipes/_tiny/asr-levers.yaml", [f"output_dir={tmp_path}"])
    window, encoder = result.artifacts["window"], result.artifacts["encoder"]
    assert window.extra["encoder_frames"] == 500 and encoder.extra["encoder_layer_map"] == [0, 3]
    cache = window.extra["speech_cache"]
    assert cache["window"]["items"] == cache["items"] == 4  # one teacher pass, shared by both stages
    assert window.extra["skipped"]["longer_than_window"] == 0 and window.extra["kept"] <= 4  # librivox-5: all < 10 s
    assert encoder.extra["speech_cache"]["dir"] == cache["dir"]
    again = result.artifacts["again"]  # a further round on `encoder`, loaded as is: its own 10-s window
    assert (again.extra["window_seconds"], again.extra["encoder_layers"], again.extra["decoder_layers"]) == (10, 2, 1)
    assert again.extra["kept"] == encoder.extra["kept"] and again.lineage == ["asset/whisper-tiny.en"]
    for art, enc_layers in ((window, 4), (encoder, 2)):
        cfg = json.loads((art.path / "config.json").read_text())
        assert cfg["architectures"] == ["WhisperForConditionalGeneration"] and cfg["max_source_positions"] == 500
        assert cfg["encoder_layers"] == enc_layers and cfg["decoder_layers"] == 1
        assert WhisperProcessor.from_pretrained(art.path).feature_extractor.n_samples == 160000
        WhisperForConditionalGeneration.from_pretrained(art.path)
    # Long-form: the untrained 10-s cut of the teacher (every decoder layer: the twin's 2-step
    # students are not meant to transcribe) reads 24.7 s of speech through the adapter's chunking.
    from distill.assets import asset_path
    from distill.evaluation.metrics import utterance_errors
    from distill.speech import student_processor, whisper_student

    teacher_dir = asset_path("whisper-tiny.en")
    cut, _ = whisper_student(WhisperForConditionalGeneration.from_pretrained(teacher_dir), window_seconds=10)
    cut.save_pretrained(tmp_path / "cut")
    student_processor(WhisperProcessor.from_pretrained(teacher_dir), 10).save_pretrained(tmp_path / "cut")
    utts = read_utterances("asset:librivox-5", None, 5)
    long_audio = np.concatenate([load_wave(u.audio_path)[0] for u in utts])  # 24.7 s
    assert len(long_audio) > 20 * 16000
    text = load_hf_whisper(str(tmp_path / "cut")).transcribe([long_audio], language="en")[0]
    errors = utterance_errors(text, " ".join(u.text for u in utts))
    assert errors["errors"] / errors["ref_words"] < 0.3, text  # cut at 10 s it would miss ~60 % of the words
    assert "himself" in text.lower(), text  # the last words, 24 s in
