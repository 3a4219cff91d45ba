"""Qwen3-ASR -> Qwen3-ASR distillation (stage distill-qwen3-asr) on tiny random twins.

The teacher is the sharp tiny twin of test_eval_qwen3_asr (byte vocabulary, logits and audio
embeddings scaled so its text follows the audio); the data are synthetic 1-2 s tones written as a
JSONL manifest, so the whole pipeline runs in seconds: pseudo-labels -> KD -> artifact -> eval.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from distill import pseudo_labels, runner
from distill.cli import main
from distill.errors import DistillError
from tests.conftest import ROOT
from tests.unit.test_eval_qwen3_asr import NEW_TOKENS, build_tiny, clips

pytest.importorskip("qwen_asr")
RECIPE = ROOT / "recipes/_tiny/qwen3-asr.yaml"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("q3t") / "teacher", real_tokenizer=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("q3data")
    lines = []
    for i, audio in enumerate(clips((1.0, 1.6, 1.2, 2.0), seed=3)):
        sf.write(root / f"{i}.wav", audio, 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio_path": str(root / f"{i}.wav"), "text": f"tone {i}"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def _run(tmp_path, teacher_dir, manifest, *overrides):
    return runner.run(RECIPE, [f"output_dir={tmp_path}", f"stages.0.teacher={teacher_dir}",
                               f"stages.0.student.model.tokenizer={teacher_dir}",
                               f"stages.0.data.source={manifest}", f"stages.0.max_new_tokens={NEW_TOKENS}",
                               *overrides])


def _metrics(result) -> list[dict]:
    return [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_twin_pseudo_labels_kd_and_eval_record(tmp_path, teacher_dir, manifest, monkeypatch):
    import torch
    from qwen_asr import Qwen3ASRModel

    from distill.evaluation.adapters import ADAPTERS

    result = _run(tmp_path, teacher_dir, manifest, "stages.0.train.steps=8", "stages.0.train.lr=0.01")
    art = result.artifacts["distill"]
    extra = json.loads((art.path / "manifest.json").read_text())["extra"]
    assert (art.kind, art.adapter, extra["kept_after_filter"]) == ("qwen3-asr", "qwen3-asr", 4)
    # Pseudo-labels: one cached line per utterance, equal to the teacher's own transcripts.
    cache = result.run_dir / "pseudo_labels" / "distill"
    labels = [json.loads(x) for x in (cache / "labels.jsonl").read_text().splitlines()]
    teacher = ADAPTERS["qwen3-asr"](str(teacher_dir))
    teacher.max_new_tokens = NEW_TOKENS
    audio = [sf.read(manifest.parent / f"{i}.wav", dtype="float32")[0] for i in range(4)]
    assert [r["text"] for r in labels] == teacher.transcribe(audio)
    # Training lowered KD + CE (projections for the 24 -> 16 encoder and 32 -> 16 decoder widths).
    rows = [r for r in _metrics(result) if r["stage"] == "distill"]
    assert rows[-1]["kd"] < rows[0]["kd"] and rows[-1]["loss"] < rows[0]["loss"]
    assert "hidden_encoder" in rows[0] and "hidden_decoder" in rows[0]
    # The student through the eval adapter writes exactly what the qwen-asr package writes.
    student = ADAPTERS["qwen3-asr"](str(art.path))
    student.max_new_tokens = NEW_TOKENS
    package = Qwen3ASRModel.from_pretrained(str(art.path), dtype=torch.float32, max_new_tokens=NEW_TOKENS)
    want = [r.text for r in package.transcribe([(a, 16000) for a in audio], language="English")]
    assert student.transcribe(audio) == want

    # ... and `distill eval` on it writes a qwen3-asr record.
    import datasets

    import distill.assets
    from distill.evaluation import qwen3_asr
    from distill.evaluation.results import load_record

    rows_ = [json.loads(x) for x in manifest.read_text().splitlines()]
    monkeypatch.setattr(distill.assets, "load_dataset", lambda a, split=None: datasets.Dataset.from_list(rows_))
    load = qwen3_asr.load

    def short(*args, **kwargs):
        asr = load(*args, **kwargs)
        asr.max_new_tokens = NEW_TOKENS
        return asr

    monkeypatch.setattr(qwen3_asr, "load", short)
    suite = tmp_path / "q3.yaml"
    suite.write_text("name: q3\nversion: 1\nmodality: asr\ntasks: [librivox-5]\nbatch_size: 2\n"
                     "headline: {task: librivox-5, metric: wer}\n")
    assert main(["eval", str(art.path), "--suite", str(suite), "--results-dir", str(tmp_path / "res")]) == 0
    rec = load_record(next((tmp_path / "res").rglob("*.json")))
    assert (rec.kind, rec.adapter) == ("qwen3-asr", "qwen3-asr") and rec.params == art.params


def test_full_copy_student_has_zero_kd_and_hidden_loss(tmp_path, teacher_dir, manifest):
    """init layer_map with every teacher layer = the teacher itself: nothing to distil."""
    result = _run(tmp_path, teacher_dir, manifest, "stages.0.student.init=layer_map",
                  "stages.0.student.model=null",
                  "stages.0.hidden={encoder: true, decoder_layers: [0, 1]}", "stages.0.train.steps=1",
                  "stages.0.data.max_items=2")
    first = _metrics(result)[0]
    assert first["kd"] == pytest.approx(0.0, abs=1e-6)
    assert first["hidden_encoder"] == pytest.approx(0.0, abs=1e-10)
    assert first["hidden_decoder"] == pytest.approx(0.0, abs=1e-10)
    assert first["ce"] > 0  # the labels are the teacher's greedy picks, not certainties


def test_checkpoint_student_with_frozen_encoder_keeps_it_and_trains_the_decoder(tmp_path, teacher_dir, manifest):
    """init model = a given checkpoint (here the teacher's own weights: KD starts at 0);
    freeze_encoder leaves the audio encoder bit-identical while the decoder moves."""
    from safetensors.torch import load_file

    result = _run(tmp_path, teacher_dir, manifest, "stages.0.student.init=model",
                  f"stages.0.student.model={teacher_dir}", "stages.0.freeze_encoder=true",
                  "stages.0.hidden={}", "stages.0.loss.hidden_weight=0", "stages.0.train.steps=2",
                  "stages.0.train.lr=0.01", "stages.0.data.max_items=2")
    assert _metrics(result)[0]["kd"] == pytest.approx(0.0, abs=1e-6)
    before = load_file(teacher_dir / "model.safetensors")
    after = load_file(result.artifacts["distill"].path / "model.safetensors")
    enc = [k for k in before if ".audio_tower." in k]
    dec = [k for k in before if ".model.layers." in k]
    assert enc and all((before[k] == after[k]).all() for k in enc)
    assert any((before[k] != after[k]).any() for k in dec)


def test_pseudo_label_cache_resumes_and_refuses_another_teacher(tmp_path):
    calls = []

    def transcribe(idx):
        calls.append(list(idx))
        return [f"text {i}" for i in idx]

    meta = {"teacher_sha256": "a", "language": "English"}
    ids = [f"u{i}" for i in range(5)]
    assert pseudo_labels.fill(tmp_path, meta, ids[:3], transcribe, 2) == {f"u{i}": f"text {i}" for i in range(3)}
    with open(tmp_path / pseudo_labels.LABELS, "a") as f:
        f.write('{"id": "u3", "te')  # a line cut by a kill
    calls.clear()
    got = pseudo_labels.fill(tmp_path, meta, ids, transcribe, 2)
    assert calls == [[3, 4]] and got["u4"] == "text 4" and got["u0"] == "text 0"
    with pytest.raises(DistillError, match="written with other teacher_sha256"):
        pseudo_labels.fill(tmp_path, {**meta, "teacher_sha256": "b"}, ids, transcribe, 2)


def test_filter_scores_words_or_characters_by_language():
    keep, rates = pseudo_labels.keep_mask(["the cat sat", "a b"], ["the cat sat down", "a b"], 0.2, "en")
    assert keep == [False, True] and rates == [0.25, 0.0]  # 1 deletion / 4 words
    keep, rates = pseudo_labels.keep_mask(["今天天气", "你好"], ["今天天气很好", "你好"], 0.3, "zh")
    assert keep == [False, True] and rates[0] == pytest.approx(2 / 6)  # CER: 2 of 6 characters missing
    # Traditional script is the same word for Mandarin, not an error.
    assert pseudo_labels.keep_mask(["今天天氣很好"], ["今天天气很好"], 0.0, "zh")[0] == [True]
    keep, _ = pseudo_labels.keep_mask(["", "x"], ["hello there", ""], None, "en")
    assert keep == [False, False]  # an empty label is a miss; an empty reference cannot be scored


def test_thinker_states_match_the_thinker_forward(teacher_dir):
    import torch

    from distill import qwen3_asr as q3

    model, processor = q3.load_model(str(teacher_dir))
    audio = clips((1.0, 1.7))
    text = q3.prompt(processor, "en") + "abc"
    inputs = processor(text=[text] * 2, audio=audio, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model.thinker(**inputs).logits
        feats = [inputs["input_features"][b, :, : int(inputs["feature_attention_mask"][b].sum())] for b in range(2)]
        emb, _ = q3.audio_embeddings(model.thinker, feats)
        hidden, _ = q3.thinker_states(model.thinker, inputs["input_ids"], inputs["attention_mask"], emb)
        got = hidden @ model.thinker.lm_head.weight.t()
    real = inputs["attention_mask"].bool()
    assert torch.allclose(got[real], want[real], atol=1e-4)


BAD = {
    "whisper teacher": ("stages.0.teacher=asset:whisper-tiny.en", "is a whisper model but distill-qwen3-asr"),
    "vocab": ("stages.0.student.model.config.thinker_config.text_config.vocab_size=300",
              None),
    "language": ("stages.0.language=xx", "cannot be forced to transcribe language 'xx'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_fail_validate_with_one_error_line(case, capsys, tmp_path, teacher_dir):
    override, message = BAD[case]
    extra = []
    if case == "vocab":  # teacher config readable from its directory: 263 tokens
        extra, message = [f"stages.0.teacher={teacher_dir}"], "student vocab 300 != teacher vocab 263"
    if case == "whisper teacher":
        pytest.importorskip("distill.assets")
        from distill.assets import is_installed

        if not is_installed("whisper-tiny.en"):
            pytest.skip("needs the whisper-tiny.en asset")
    assert main(["validate", str(RECIPE), *extra, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_missing_package_names_the_install_command(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qwen_asr" else real(name, *a))
    assert main(["validate", str(RECIPE)]) == 2
    err = capsys.readouterr().err
    assert "qwen-asr package is not installed" in err and "pip install" in err and "qwen-asr==0.0.6" in err


def test_validate_does_not_import_torch():
    import subprocess

    code = ("import sys\nfrom distill.cli import main\n"
            f"assert main(['validate', {str(RECIPE)!r}]) == 0\n"
            "assert 'torch' not in sys.modules and 'qwen_asr' not in sys.modules, 'heavy import'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_interrupted_stage_resumes_to_the_same_weights(tmp_path, teacher_dir, manifest):
    """A stage killed after its step-2 checkpoint, resumed: identical weights to the uninterrupted
    run, and the cached pseudo-labels are read, not recomputed."""
    import shutil

    from safetensors.torch import load_file

    result = _run(tmp_path, teacher_dir, manifest, "stages.0.train.steps=4", "stages.0.train.checkpoint_every=2",
                  "stages.0.train.batch_size=1", "stages.0.data.max_items=2")
    art = result.artifacts["distill"].path
    whole = load_file(art / "model.safetensors")
    labels = result.run_dir / "pseudo_labels" / "distill" / "labels.jsonl"
    stamp = labels.stat().st_mtime_ns
    shutil.rmtree(art)  # as if killed between the checkpoint and the end of the stage
    resumed = runner.run(resume=result.run_dir)
    again = load_file(resumed.artifacts["distill"].path / "model.safetensors")
    assert whole.keys() == again.keys() and all((whole[k] == again[k]).all() for k in whole)
    assert labels.stat().st_mtime_ns == stamp
