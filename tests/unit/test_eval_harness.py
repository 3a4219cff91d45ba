"""evaluate() end to end on tiny in-process models and data: records, samples, bad input."""

from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pytest
import soundfile as sf

from distill import artifacts
from distill.errors import DistillError
from distill.evaluation import adapters, asr, metrics
from distill.evaluation.harness import evaluate
from distill.evaluation.report import write_report
from distill.evaluation.results import Record, load_record
from test_eval_tiny import mmlu_rows, tiny_llama


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("m") / "tiny-byte", tokenizer="bytes")


@pytest.mark.slow  # 5 CPU-s measured (DISTILL_TEST_CPU, shared machine)
def test_smoke_suite_writes_a_record_whose_perplexity_recomputes_from_samples(tmp_path, byte_model):
    path = evaluate(str(byte_model), "smoke", results_dir=tmp_path)
    assert path == tmp_path / "local__tiny-byte.json"
    rec = load_record(path)
    assert rec.schema_version == 1 and rec.modality == "lm" and rec.adapter == "hf-causal-lm"
    assert rec.size_bytes == artifacts.dir_size(byte_model)
    rows = [json.loads(x) for x in (tmp_path / rec.samples).read_text().splitlines()]
    ppl = next(m for m in rec.metrics if m.metric == "perplexity")
    nll, toks = sum(r["nll"] for r in rows), sum(r["tokens"] for r in rows)
    assert ppl.value == pytest.approx(math.exp(nll / toks))
    assert ppl.extra["tokenizer"].startswith("PreTrainedTokenizerFast")
    kinds = {t.kind: t for t in rec.throughput}
    assert {"lm_prefill_tok_s", "lm_decode_tok_s", "peak_rss_bytes"} <= set(kinds)
    cond = kinds["lm_decode_tok_s"].conditions
    for key in ("batch_size", "dtype", "threads", "device_name", "backend", "warmup_steps", "timer", "n"):
        assert key in cond
    # Independent reference: HF's own label loss over 512-token windows, each after one token.
    import torch
    from transformers import AutoModelForCausalLM

    from distill.evaluation.tasks import EVAL_DIR

    model = AutoModelForCausalLM.from_pretrained(byte_model)
    ids = list((EVAL_DIR / "data" / "smoke_heldout.txt").read_bytes())  # byte tokenizer: id = byte
    prev, total = 256, 0.0  # eos (id 256) starts the document
    with torch.no_grad():
        for s in range(0, len(ids), 512):
            chunk = ids[s: s + 512]
            x = torch.tensor([[prev] + chunk])
            total += model(x, labels=x).loss.item() * len(chunk)
            prev = chunk[-1]
    assert toks == len(ids)
    assert ppl.value == pytest.approx(math.exp(total / len(ids)), rel=1e-4)
    readme = write_report(tmp_path)
    assert "local/tiny-byte" in readme.read_text()


def test_interrupted_eval_leaves_no_record(tmp_path, byte_model, monkeypatch):
    from distill.evaluation import throughput

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(throughput, "measure_lm", boom)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(byte_model), "smoke", results_dir=tmp_path)
    assert list(tmp_path.rglob("*.json*")) == []


def test_bad_inputs_are_clear_errors(tmp_path, byte_model):
    with pytest.raises(DistillError, match="unknown suite 'smok'.*smoke"):
        evaluate(str(byte_model), "smok", results_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="neither manifest.json nor config.json"):
        evaluate(str(tmp_path / "empty"), "smoke", results_dir=tmp_path)
    with pytest.raises(DistillError, match="exceeds the size of every task"):
        evaluate(str(byte_model), "smoke", limit=5, results_dir=tmp_path)


def test_a_recipes_limit_caps_a_smaller_suite_and_the_record_says_all_items(tmp_path, byte_model):
    # a recipe's eval.limit serves every suite it names: one whose tasks are all smaller runs on
    # all their items, and its record's command (no --limit) reproduces exactly that
    record = json.loads(evaluate(str(byte_model), "smoke", limit=5, results_dir=tmp_path,
                                 limit_is_cap=True).read_text())
    suite = record["suites"]["smoke"]
    assert suite["limit"] is None and "--limit" not in suite["command"]
    whole = json.loads(evaluate(str(byte_model), "smoke", results_dir=tmp_path / "all").read_text())
    assert [(m["task"], m["metric"], m["n"], m["value"]) for m in record["metrics"]] == \
        [(m["task"], m["metric"], m["n"], m["value"]) for m in whole["metrics"]]
    with pytest.raises(DistillError, match="no result record for baseline"):
        evaluate(str(byte_model), "smoke", baseline="asset/nothing", results_dir=tmp_path)


@pytest.fixture
def fake_mmlu(monkeypatch):
    test = mmlu_rows(16)
    dev = mmlu_rows(12, offset=100)

    def load_dataset(asset_id, split=None):
        rows = {"mmlu-mini": test, "mmlu-dev": dev}[asset_id]
        return datasets.DatasetDict({"test" if asset_id == "mmlu-mini" else "dev": datasets.Dataset.from_list(rows)})

    import distill.assets

    monkeypatch.setattr(distill.assets, "load_dataset", load_dataset)
    return test


@pytest.mark.slow  # 15 CPU-s measured (DISTILL_TEST_CPU, shared machine)
def test_mmlu_through_the_harness_with_baseline_recovery_and_merge(tmp_path, fake_mmlu, monkeypatch):
    from distill.evaluation import tasks

    suite = tmp_path / "mc.yaml"
    suite.write_text("name: mc\nversion: 1\nmodality: lm\ntasks: [mmlu-mini-0shot, mmlu-mini-5shot]\n"
                     "batch_size: 4\nheadline: {task: mmlu-mini-0shot, metric: acc}\n")
    base = tiny_llama(tmp_path / "base", seed=0)
    student = tiny_llama(tmp_path / "student", seed=1)
    out = tmp_path / "results"
    base_rec = load_record(evaluate(str(base), str(suite), results_dir=out))
    rows = [json.loads(x) for x in (out / base_rec.samples).read_text().splitlines()]
    zero = [r for r in rows if r["task"] == "mmlu-mini-0shot"]
    assert len(zero) == 16 and all(len(r["loglikelihoods"]) == 4 for r in zero)
    acc = next(m for m in base_rec.metrics if m.task == "mmlu-mini-0shot" and m.metric == "acc")
    assert acc.value == pytest.approx(np.mean([int(np.argmax(r["loglikelihoods"])) == r["gold"] for r in zero]))
    rec = load_record(evaluate(str(student), str(suite), baseline="local/base", results_dir=out))
    rec_acc = next(m for m in rec.metrics if m.task == "mmlu-mini-0shot" and m.metric == "acc")
    rv = next(r for r in rec.recovery if r.task == "mmlu-mini-0shot" and r.metric == "acc")
    if acc.value:
        assert rv.value == pytest.approx(rec_acc.value / acc.value)
    # A second suite on the same artifact adds its tasks and keeps the earlier ones.
    rec2 = load_record(evaluate(str(student), "smoke", results_dir=out))
    assert {m.task for m in rec2.metrics} == {"mmlu-mini-0shot", "mmlu-mini-5shot", "smoke-ppl"}
    tasks_in_samples = {json.loads(x)["task"] for x in (out / rec2.samples).read_text().splitlines()}
    assert tasks_in_samples == {"mmlu-mini-0shot", "mmlu-mini-5shot", "smoke-ppl"}
    readme = write_report(out).read_text()
    assert "local/student" in readme and (out / "pareto_lm_size.png").is_file()


class FakeASR:
    """Stands in for a Whisper adapter: returns a fixed raw text per audio length."""

    modality, backend, dtype, device = "asr", "fake", "float32", "cpu"

    def __init__(self, texts):
        self.texts = texts
        self.model = None

    def transcribe(self, audios, language="en", sampling_rate=16000):
        return [self.texts[len(a)] for a in audios]


def test_asr_scores_raw_outputs_and_counts_undecodable_audio(tmp_path, caplog):
    refs = ["The colour is grey.", "Hello there, Mr. Smith.", "one two three"]
    hyps = [" the color is gray", " Hello there Mister Smith!", " one two tree four"]
    rows, texts = [], {}
    for i, (ref, hyp) in enumerate(zip(refs, hyps)):
        n = 16000 + 800 * i
        sf.write(tmp_path / f"{i}.wav", np.zeros(n // 2, dtype=np.float32), 8000)  # resampled to 16 kHz
        rows.append({"id": f"u{i}", "audio_path": str(tmp_path / f"{i}.wav"), "text": ref})
        texts[n] = hyp
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    rows.append({"id": "bad", "audio_path": str(tmp_path / "bad.wav"), "text": "lost"})
    from distill.evaluation.tasks import load_task

    spec = load_task("librivox-5")
    found, samples, timings = asr.run(spec, FakeASR(texts), rows, batch_size=2)
    wer = next(m for m in found if m["metric"] == "wer")
    norm = [metrics.normalize(x, "english") for x in refs], [metrics.normalize(x, "english") for x in hyps]
    import jiwer

    assert wer["value"] == pytest.approx(jiwer.wer(*norm))
    assert wer["extra"]["n_decode_failed"] == 1 and wer["n"] == 3
    assert [s["prediction"] for s in samples[:3]] == hyps  # stored raw, not normalised
    assert samples[3]["id"] == "bad" and "decode" in samples[3]["skipped"]
    assert "failed to decode" in caplog.text


def test_adapter_registry_and_qwen3_asr_is_not_faked(tmp_path):
    from distill.artifacts import ArtifactKind

    assert set(adapters.ADAPTERS) == {k.value for k in ArtifactKind}  # one loader per artifact kind
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(DistillError, match="not a Qwen3-ASR model directory"):
        adapters.ADAPTERS["qwen3-asr"](str(tmp_path))  # the real loader: tests/unit/test_eval_qwen3_asr.py
    assert Record.model_fields["schema_version"].default == 1


def test_limit_covering_the_whole_task_is_not_marked_partial(tmp_path, byte_model):
    from distill.evaluation.data import task_rows
    from distill.evaluation.tasks import load_task

    n = len(task_rows(load_task("smoke-ppl")))
    rec = load_record(evaluate(str(byte_model), "smoke", limit=n, results_dir=tmp_path))
    assert all(m.limit is None for m in rec.metrics)  # every item scored: a full number
    if n > 1:
        rec = load_record(evaluate(str(byte_model), "smoke", limit=n - 1, results_dir=tmp_path / "part"))
        assert all(m.limit == n - 1 for m in rec.metrics)


_PEAK_RSS_PROBE = """
import json
from distill.evaluation import throughput
ballast = b"x" * (300 * 2**20)  # 300 MiB written, then freed: a previous model's peak
del ballast
(before,) = throughput.peak_memory("cpu")
reset = throughput.reset_peak_memory("cpu")
(entry,) = throughput.peak_memory("cpu", window_reset=True)
print(json.dumps({"before": before, "reset": reset, "entry": entry}))
"""


def test_peak_rss_window_restarts_per_model():
    import subprocess
    import sys

    # A fresh process: in this one, earlier tests may hold more resident memory than the ballast.
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS_PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    before, entry = probe["before"], probe["entry"]
    assert before["conditions"]["scope"] == "whole process so far"
    assert before["value"] > 300 * 2**20
    if not probe["reset"]:
        pytest.skip("this OS cannot reset the peak-RSS counter")
    assert entry["conditions"]["scope"] == "model load to end of suite"
    assert entry["value"] < before["value"] - 200 * 2**20
