"""Language-aware ASR scoring: Traditional -> Simplified before Mandarin CER, repetition loops
flagged per utterance, and re-scoring a stored record from its samples without the model."""

from __future__ import annotations

import json

import pytest

from distill.errors import DistillError
from distill.evaluation import metrics, results
from distill.evaluation.rescore import rescore
from distill.evaluation.tasks import load_task


def test_mandarin_cer_does_not_count_the_script_as_errors():
    # Hand-made pair: the same words in Traditional (hypothesis) and Simplified (reference) script.
    hyp, ref = ["漢語與簡體"], ["汉语与简体"]
    assert metrics.asr_scores(hyp, ref, "mandarin")["cer"] == 0.0
    assert metrics.asr_scores(hyp, ref, "basic")["cer"] == 1.0  # every character differs in script
    # A real substitution still counts.
    assert metrics.asr_scores(["漢語與繁體"], ref, "mandarin")["cer"] == pytest.approx(1 / 5)


def test_repetition_loop_flags_decoding_loops_not_ordinary_text():
    assert metrics.repetition_loop("我已已已已已已已已", "微雨霭芳原", "mandarin")
    assert metrics.repetition_loop("祈願祈願祈願祈願祈", "忆昔初蒙博士征", "mandarin")  # a 2-char loop
    assert metrics.repetition_loop("it's been taught, it's been taught, it's been taught, it's been taught",
                                   "it has been taught", "english")
    assert not metrics.repetition_loop("ha ha ha", "ha", "english")  # three copies: below the bar
    assert not metrics.repetition_loop("no no no no", "no no no no", "english")  # the speaker said it
    assert not metrics.repetition_loop("the cat sat on the mat", "the cat sat on the mat", "english")
    assert metrics.longest_repeat(list("abababx")) == 3
    # a whole 9-word prompt repeated (a cut-window Whisper on a 6-s clip)
    prompt = "Press pound to enter a new dictation file name."
    assert metrics.repetition_loop(" ".join([prompt] * 4), prompt, "english")


def test_asr_task_scores_count_loops_and_score_without_them_by_hand():
    found, per_item = metrics.asr_task_scores(["你好", "天天天天天天"], ["你好", "天气"], "mandarin", ["cer"])
    (cer,) = found
    # Reference chars: 4. Item 2: 天=天, 气->天 (1 sub), 4 insertions -> 5 errors; CER 5/4.
    assert cer["value"] == pytest.approx(5 / 4)
    assert [row["char_errors"] for row in per_item] == [0, 5]
    assert [row["repetition_loop"] for row in per_item] == [False, True]
    assert cer["extra"]["n_repetition_loops"] == 1 and cer["extra"]["cer_without_loops"] == 0.0
    with pytest.raises(DistillError, match="unknown ASR metric"):
        metrics.asr_task_scores(["a"], ["a"], "english", ["bleu"])


def test_asr_task_yaml_rejects_an_unknown_metric_at_load(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.yaml").write_text(
        "task: {type: asr, name: t, version: 1, dataset: 'file:x.jsonl', metrics: [bleu]}\n")
    with pytest.raises(DistillError, match="metrics"):
        load_task("t", tmp_path)


def _record(tmp_path, task: str, version: int, preds: list[str], refs: list[str]) -> str:
    rec = results.Record(
        artifact_id="asset/m", kind="hf-whisper", adapter="hf-whisper", family="asset/m", modality="asr",
        metrics=[results.Metric(task=task, task_version=version, metric="cer", value=9.0, n=len(refs),
                                higher_is_better=False, suite="asr-cmn",
                                extra={"wall_s": 12.5, "normalizer": "basic"})],
        suites={"asr-cmn": results.SuiteRun(suite="asr-cmn", threads=1)},
        recovery=[results.Recovery(task=task, metric="cer", value=0.5, baseline="asset/b", baseline_value=1.0)],
        samples=results.samples_relpath("asset/m"))
    samples = [{"task": task, "id": str(i), "prediction": p, "reference": r, "errors": 7}
               for i, (p, r) in enumerate(zip(preds, refs))] + [{"task": "other", "id": "x"}]
    results.write(tmp_path, rec, samples)
    return rec.artifact_id


def test_rescore_recomputes_a_stored_record_from_its_samples(tmp_path):
    spec = load_task("tts-cmn")
    assert spec.normalizer == "mandarin"
    aid = _record(tmp_path, "tts-cmn", spec.version - 1, ["漢語與簡體", "我已已已已已"], ["汉语与简体", "微雨"])
    rec = results.load_record(rescore(tmp_path, aid, ["tts-cmn"]))
    (cer,) = rec.metrics
    assert cer.task_version == spec.version
    # 0 errors on item 1; item 2: 2 substitutions + 4 insertions over 2 ref chars; pooled 6 / 7.
    assert cer.value == pytest.approx(6 / 7)
    assert cer.extra["wall_s"] == 12.5 and cer.extra["n_repetition_loops"] == 1 and "rescored" in cer.extra
    assert rec.recovery == []  # the old ratio used the old scoring
    assert rec.suites["asr-cmn"].threads == 1 and rec.suites["asr-cmn"].rescored["tasks"] == ["tts-cmn"]
    rows = [json.loads(x) for x in (tmp_path / rec.samples).read_text().splitlines()]
    assert [r.get("repetition_loop") for r in rows] == [False, True, None]
    assert rows[0]["char_errors"] == 0 and rows[2] == {"task": "other", "id": "x"}


def test_rescore_refuses_tasks_it_cannot_recompute(tmp_path):
    aid = _record(tmp_path, "tts-cmn", 1, ["a"], ["a"])
    with pytest.raises(DistillError, match="only ASR tasks"):
        rescore(tmp_path, aid, ["smoke-ppl"])
    with pytest.raises(DistillError, match="no stored predictions"):
        rescore(tmp_path, aid, ["librivox-5"])


def test_merging_suites_keeps_each_suites_own_conditions():
    def record(suite: str, sha: str, dirty: bool, threads: int, load: list[float]) -> results.Record:
        return results.Record(
            artifact_id="asset/m", kind="hf-whisper", adapter="hf-whisper", family="asset/m", modality="asr",
            metrics=[results.Metric(task=f"{suite}-task", task_version=1, metric="wer", value=0.1, n=1,
                                    higher_is_better=False, suite=suite)],
            throughput=[results.Throughput(kind="asr_rtfx", value=5.0, unit="x", suite=suite,
                                           conditions={"threads": threads, "load_avg_before": load})],
            suites={suite: results.suite_run({"suite": suite, "git": {"sha": sha, "dirty": dirty},
                                              "threads": threads, "load_avg_before": load,
                                              "commands": {suite: f"distill eval m --suite {suite}"}})},
            samples="samples/asset__m.jsonl")

    first = record("asr-en", "aaa", False, 2, [0.5, 0.4, 0.3])
    merged, _ = results.merge(first, record("asr-cmn", "bbb", True, 1, [9.0, 8.0, 7.0]), [], [])
    assert set(merged.suites) == {"asr-en", "asr-cmn"}
    assert (merged.suites["asr-en"].git_sha, merged.suites["asr-en"].git_dirty, merged.suites["asr-en"].threads) \
        == ("aaa", False, 2)
    assert (merged.suites["asr-cmn"].git_sha, merged.suites["asr-cmn"].git_dirty) == ("bbb", True)
    assert merged.suites["asr-en"].command == "distill eval m --suite asr-en"
    assert {t.suite: t.conditions["load_avg_before"][0] for t in merged.throughput} == {"asr-en": 0.5, "asr-cmn": 9.0}
    # Re-running a suite replaces its conditions, and only its own.
    again, _ = results.merge(merged, record("asr-en", "ccc", False, 2, [1.0, 1.0, 1.0]), [], [])
    assert again.suites["asr-en"].git_sha == "ccc" and again.suites["asr-cmn"].git_sha == "bbb"
