"""The harness on real installed assets: Whisper WER on real speech, SmolLM2 MMLU vs lm-eval."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def _need(*ids):
    from distill.assets import is_installed

    missing = [i for i in ids if not is_installed(i)]
    if missing:
        pytest.skip(f"assets not installed: {missing} (distill assets install ...)")


def test_whisper_tiny_en_on_real_read_speech(tmp_path):
    _need("whisper-tiny.en", "librivox-5", "cards-5")
    import jiwer

    from distill.evaluation.harness import evaluate
    from distill.evaluation.metrics import normalize
    from distill.evaluation.results import load_record

    suite = tmp_path / "real-asr.yaml"
    suite.write_text("name: real-asr\nversion: 1\nmodality: asr\ntasks: [librivox-5, cards-5]\nbatch_size: 5\n"
                     "headline: {task: librivox-5, metric: wer}\n"
                     "throughput: {kind: asr, task: cards-5, batch_size: 5, warmup: 1, n: 5}\n")
    rec = load_record(evaluate("asset:whisper-tiny.en", str(suite), results_dir=tmp_path / "res"))
    rows = [json.loads(x) for x in (tmp_path / "res" / rec.samples).read_text().splitlines()]
    for m in rec.metrics:
        if m.metric != "wer":
            continue
        task_rows = [r for r in rows if r["task"] == m.task]
        ref = [normalize(r["reference"], "english") for r in task_rows]
        hyp = [normalize(r["prediction"], "english") for r in task_rows]
        assert m.value == pytest.approx(jiwer.wer(ref, hyp))
        assert m.value < 0.35  # real read speech: a working Whisper gets most words right
    assert rec.family == "asset/whisper-tiny.en" and rec.size_bytes > 100e6
    assert next(t for t in rec.throughput if t.kind == "asr_rtfx").value > 0


def test_smollm2_mmlu_choices_equal_lm_eval(tmp_path):
    _need("smollm2-135m-instruct", "mmlu-mini", "mmlu-dev")
    pytest.importorskip("lm_eval")
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "eval_mmlu_vs_lmeval.py"
    spec = importlib.util.spec_from_file_location("eval_mmlu_vs_lmeval", bench)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)

    from distill.evaluation.adapters import load_hf_causal_lm
    from distill.evaluation.data import load_source
    from distill.assets import asset_path
    from distill.evaluation.metrics import argmax_first

    lm = load_hf_causal_lm(str(asset_path("smollm2-135m-instruct")))
    rows = load_source("asset:mmlu-mini", "test")
    subjects = sorted({r["subject"] for r in rows})[:3]
    test = [r for r in rows if r["subject"] in subjects][:12]
    dev = load_source("asset:mmlu-dev")
    names = mod.lm_eval_tasks(tmp_path, test, dev)
    for shots in (0, 5):
        ours, _ = mod.run_ours(lm, test, dev, shots, 4)
        theirs, _ = mod.run_lm_eval(lm, names, tmp_path, shots, 4)
        assert {i: argmax_first(v) for i, v in ours.items()} == {i: argmax_first(v) for i, v in theirs.items()}
        for i in ours:
            assert ours[i] == pytest.approx(theirs[i], abs=1e-3)


def test_bnb_whisper_records_its_quantized_dtype():
    """A bnb-loaded Whisper keeps float32 convs: the record must still say int8, not float32."""
    pytest.importorskip("bitsandbytes")
    _need("whisper-tiny.en")
    from types import SimpleNamespace

    from distill.assets import asset_path
    from distill.evaluation.adapters import ADAPTERS

    manifest = SimpleNamespace(extra={"quantization": {"bits": 8}})
    speech = ADAPTERS["bnb"](str(asset_path("whisper-tiny.en")), "cpu", manifest)
    assert speech.backend == "bitsandbytes" and speech.dtype == "int8"
