"""The ASR distillation twin on real assets: a 1-decoder-layer Whisper student that still transcribes."""

from __future__ import annotations

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

    model = WhisperForConditionalGeneration.from_pretrained(art.path).eval()
    processor = WhisperProcessor.from_pretrained(art.path)
    assert model.config.decoder_layers == 1
    utt = read_utterances("asset:librivox-5", None, 1)[0]
    feats = processor.feature_extractor(load_audio(utt.audio_path), sampling_rate=16000,
                                        return_tensors="pt").input_features
    text = processor.batch_decode(model.generate(feats, max_new_tokens=40), skip_special_tokens=True)[0]
    assert text.strip(), "the student collapsed to empty transcripts"
