"""Transcription options (language, text context, long audio) for Whisper and Qwen3-ASR, from a task
YAML or the command line, measured by the harness."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from distill.cli import main
from distill.errors import DistillError
from distill.evaluation.tasks import load_task, with_options
from tests.unit.test_eval_qwen3_asr import NEW_TOKENS, build_tiny, clips

SUITE = ("name: q3\nversion: 1\nmodality: asr\ntasks: [librivox-5]\nbatch_size: 2\n"
         "headline: {task: librivox-5, metric: wer}\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("q3o") / "tiny", real_tokenizer=False)


def _adapter(path):
    from distill.evaluation.adapters import ADAPTERS

    asr = ADAPTERS["qwen3-asr"](str(path))
    asr.max_new_tokens = NEW_TOKENS
    return asr


def test_qwen3_asr_context_is_the_packages_system_turn(tiny):
    import torch
    from qwen_asr import Qwen3ASRModel

    asr = _adapter(tiny)
    audio = clips()
    context = "Dashwood, Norland Park"
    assert f"<|im_start|>system\n{context}<|im_end|>" in asr.prompt("en", context)
    got = asr.transcribe(audio, context=context)
    package = Qwen3ASRModel.from_pretrained(str(tiny), dtype=torch.float32, max_new_tokens=NEW_TOKENS)
    want = [r.text for r in package.transcribe([(a, 16000) for a in audio], context=context, language="English")]
    assert got == want
    assert got != asr.transcribe(audio)  # the context reaches the model


def test_qwen3_asr_long_audio_is_cut_in_pieces_or_refused(tiny):
    from qwen_asr.inference.utils import split_audio_into_chunks

    asr = _adapter(tiny)
    asr.max_audio_seconds = 1.0  # the released limit is 20 min: a short one keeps the test fast
    audio = clips((2.6,))[0]
    pieces = [c for c, _ in split_audio_into_chunks(audio, 16000, 1.0)]
    assert len(pieces) >= 2
    asr_whole = _adapter(tiny)
    assert asr.transcribe([audio]) == ["".join(asr_whole.transcribe(pieces))]
    with pytest.raises(DistillError, match="exceeds Qwen3-ASR's 1 s limit and long_audio is 'error'"):
        asr.transcribe([audio], long_audio="error")


def test_options_over_a_task_are_validated_like_the_yaml():
    task = load_task("librivox-5")
    got = with_options(task, {"context": "Dashwood", "long_audio": "error", "language": "en"})
    assert (got.context, got.long_audio, got.name) == ("Dashwood", "error", "librivox-5")
    with pytest.raises(DistillError, match="long_audio"):
        with_options(task, {"long_audio": "sometimes"})
    assert with_options(load_task("mmlu-mini-0shot"), {"context": "x"}).type == "multiple_choice"


def test_harness_records_the_options_and_refuses_long_audio_before_writing(tiny, tmp_path, monkeypatch):
    import distill.assets
    from distill.evaluation import qwen3_asr
    from distill.evaluation.results import load_record

    rows = []
    for i, audio in enumerate(clips((1.2, 2.4), seed=2)):
        sf.write(tmp_path / f"{i}.wav", audio, 16000)
        rows.append({"id": f"u{i}", "audio_path": str(tmp_path / f"{i}.wav"), "text": f"word {i}"})
    monkeypatch.setattr(distill.assets, "load_dataset", lambda a, split=None: datasets.Dataset.from_list(rows))
    load = qwen3_asr.load

    def short(*args, **kwargs):
        asr = load(*args, **kwargs)
        asr.max_new_tokens, asr.max_audio_seconds = NEW_TOKENS, 2.0
        return asr

    monkeypatch.setattr(qwen3_asr, "load", short)
    (tmp_path / "q3.yaml").write_text(SUITE)
    results = tmp_path / "results"
    base = ["eval", str(tiny), "--suite", str(tmp_path / "q3.yaml"), "--results-dir", str(results)]
    assert main([*base, "--long-audio", "error"]) == 2  # the 2.4-s clip is past the 2-s limit
    assert not results.exists() or not any(results.rglob("*.json"))
    assert main([*base, "--context", "Dashwood", "--language", "English"]) == 0
    rec = load_record(next(results.rglob("*.json")))
    wer = next(m for m in rec.metrics if m.metric == "wer")
    assert (wer.extra["context"], wer.extra["language"], wer.extra["long_audio"]) == ("Dashwood", "English", "chunk")
    assert rec.provenance["commands"]["q3"].endswith("--language English --context Dashwood")
    samples = [json.loads(x) for x in (results / rec.samples).read_text().splitlines()]
    audio = [sf.read(r["audio_path"], dtype="float32")[0] for r in rows]
    want = _adapter(tiny).transcribe(audio, context="Dashwood")
    assert [s["prediction"] for s in sorted(samples, key=lambda s: s["id"])] == want


@pytest.mark.slow
@pytest.mark.integration
def test_whisper_prompt_ids_and_long_audio():
    from distill.assets import asset_path, is_installed, load_dataset
    from distill.evaluation.adapters import ADAPTERS
    from distill.evaluation.asr import load_audio

    if not is_installed("whisper-tiny.en") or not is_installed("librivox-5"):
        pytest.skip("needs the whisper-tiny.en and librivox-5 assets")
    asr = ADAPTERS["hf-whisper"](str(asset_path("whisper-tiny.en")))
    rows = list(load_dataset("librivox-5"))
    first = load_audio(rows[0]["audio_path"])
    plain = asr.transcribe([first])[0]
    prompted = asr.transcribe([first], context="Mister John Dashwood.")[0]
    assert "Mr. John Dashwood" in plain and "Mister John Dashwood" in prompted  # the prompt steers spelling
    assert not prompted.strip().startswith("Mister John Dashwood.")  # ... and is not part of the text
    long = np.concatenate([load_audio(r["audio_path"]) for r in rows + rows[:2]])  # 35 s > the 30-s window
    assert asr.max_audio_seconds == 30
    with pytest.raises(DistillError, match="exceeds this Whisper's 30 s window"):
        asr.transcribe([long], long_audio="error")
    assert "Dashwood" in asr.transcribe([long])[0]
