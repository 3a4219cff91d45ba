"""Real whisper-tiny.en through `distill transcribe`, and its CTranslate2 INT8 export on real speech."""

from __future__ import annotations

import json

import pytest

from distill import cli, ct2
from distill.assets import asset_path
from distill.evaluation import metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _clips(n: int):
    return sorted((asset_path("librivox-5") / "audio").glob("*.wav"))[:n]


def test_transcribe_prints_text_and_json_for_real_speech(capsys):
    wav = _clips(1)[0]
    assert cli.main(["transcribe", "asset:whisper-tiny.en", str(wav), "--threads", "2"]) == 0
    text = capsys.readouterr().out.strip()
    assert len(text.split()) >= 4
    assert cli.main(["transcribe", "asset:whisper-tiny.en", str(wav), "--json", "--threads", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "asset:whisper-tiny.en" and result["files"][0]["text"] == text
    assert result["files"][0]["rtfx"] > 0 and result["load_avg_before"] and result["load_avg_after"]


def test_ct2_int8_export_of_whisper_tiny_en_transcribes_like_torch(tmp_path, capsys):
    out = tmp_path / "ct2"
    out.mkdir()
    extra = ct2.convert(asset_path("whisper-tiny.en"), out, "hf-whisper", "int8")
    assert extra["faster_whisper"] is True and extra["window_s"] == 30
    wavs = [str(w) for w in _clips(5)]
    texts = {}
    for model in ("asset:whisper-tiny.en", str(out)):
        assert cli.main(["transcribe", model, *wavs, "--json", "--threads", "2"]) == 0
        texts[model] = [f["text"] for f in json.loads(capsys.readouterr().out)["files"]]
    torch_text, ct2_text = texts["asset:whisper-tiny.en"], texts[str(out)]
    # INT8 rounding may change a word, not the transcript: near-identical normalised text
    assert metrics.asr_scores(ct2_text, torch_text, "english")["wer"] < 0.1
