"""The qwen3-asr adapter transcribes exactly as the qwen-asr package does, and evaluates end to end.

No Qwen3-ASR weights exist offline, so a tiny random one is built in-process (by the model home,
distill.qwen3_asr) around the real Qwen3 tokenizer (asset qwen3-tokenizer) when it is installed,
else around a byte-level stand-in; either gets Qwen3-ASR's audio tokens and chat layout (PEFT and quantization tests always use the small
byte vocabulary). Random weights write gibberish: what is tested is that both paths write the SAME
gibberish for the same audio, prompt and greedy decoding.
"""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
import soundfile as sf

from distill import artifacts
from distill.errors import DistillError
from distill.evaluation.adapters import ADAPTERS
from distill.evaluation.harness import evaluate
from distill.evaluation.loading import infer_adapter, resolve_model
from distill.evaluation.results import load_record
from tests.conftest import ROOT

NEW_TOKENS = 10  # random weights rarely stop by themselves: bound the decode for speed
# A 2-layer Qwen3-ASR (the STACK.md traps: mrope_section sums to head_dim / 2, n_window 50, audio
# output_dim == decoder hidden size); token ids and vocab come from the tokenizer.
TINY_CONFIG = {"thinker_config": {
    "audio_config": {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2,
                     "encoder_ffn_dim": 64, "d_model": 32, "output_dim": 32, "n_window": 50,
                     "n_window_infer": 100, "downsample_hidden_size": 8},
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                    "max_position_embeddings": 4096,
                    "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2], "interleaved": True}}}}


def build_tiny(out, real_tokenizer: bool):
    """A 2-layer random Qwen3-ASR + processor saved as a plain HF directory (no manifest), built
    by the model home (distill.qwen3_asr) around the real Qwen3 tokenizer or the byte-level one."""
    pytest.importorskip("qwen_asr")  # 10-20 s import: paid only when these tests run
    import copy

    import torch

    from distill import qwen3_asr

    processor = qwen3_asr.twin_processor("asset:qwen3-tokenizer" if real_tokenizer else "bytes")
    model = qwen3_asr.build_model(copy.deepcopy(TINY_CONFIG), processor, seed=0)
    with torch.no_grad():  # sharper logits and louder audio embeddings: the text follows the audio
        model.thinker.lm_head.weight.mul_(50)
        model.thinker.audio_tower.proj2.weight.mul_(50)
    qwen3_asr.save(model, processor, out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """With the real Qwen3 tokenizer when its asset is installed: the package-equality model."""
    from distill.assets import is_installed

    return build_tiny(tmp_path_factory.mktemp("q3asr") / "tiny-qwen3-asr", is_installed("qwen3-tokenizer"))


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory):
    """Byte-level vocabulary: quantization and PEFT do not care, and a 152k vocab loads slowly."""
    return build_tiny(tmp_path_factory.mktemp("q3asr") / "tiny-bytes", False)


def short(adapter):
    adapter.max_new_tokens = NEW_TOKENS
    return adapter


@pytest.fixture(scope="module")
def asr(tiny):
    return short(ADAPTERS["qwen3-asr"](str(tiny)))


def clips(seconds=(1.0, 2.6, 1.7), seed=0):
    rng = np.random.default_rng(seed)
    t = [np.arange(int(16000 * s)) / 16000 for s in seconds]
    return [(0.3 * np.sin(2 * np.pi * 180 * (i + 1) * x) + 0.05 * rng.standard_normal(x.size)).astype(np.float32)
            for i, x in enumerate(t)]


@pytest.mark.slow  # 7 CPU-s measured (DISTILL_TEST_CPU, shared machine)
def test_transcribe_equals_the_package_path(tiny, asr):
    import librosa
    import torch
    from qwen_asr import Qwen3ASRModel

    assert (asr.modality, asr.backend, asr.dtype) == ("asr", "torch-eager", "float32")
    package = Qwen3ASRModel.from_pretrained(str(tiny), dtype=torch.float32, max_new_tokens=NEW_TOKENS)
    audio = clips()
    got = asr.transcribe(audio, language="en")
    want = [r.text for r in package.transcribe([(a, 16000) for a in audio], language="English")]
    assert got == want
    assert len(set(got)) > 1 and all(got)  # the text depends on the audio
    assert [asr.transcribe([a])[0] for a in audio] == got  # left padding changes nothing
    # Audio at another rate is resampled the package's way before the features.
    low = [librosa.resample(a, orig_sr=16000, target_sr=8000) for a in audio[:2]]
    assert asr.transcribe(low, sampling_rate=8000) == [
        r.text for r in package.transcribe([(a, 8000) for a in low], language="English")]
    # The language is forced in the prompt, by code or by name.
    assert asr.prompt("English").endswith("<|im_start|>assistant\nlanguage English<asr_text>")
    assert asr.transcribe(audio[:1], language="English") == got[:1]
    with pytest.raises(DistillError, match="cannot be forced to transcribe language 'xx'"):
        asr.transcribe(audio[:1], language="xx")


def test_saved_dir_is_detected_and_evaluates_to_a_qwen3_asr_record(tiny, asr, tmp_path, monkeypatch):
    assert infer_adapter(tiny) == "qwen3-asr"
    assert resolve_model(str(tiny)).adapter == "qwen3-asr"
    rows = []
    for i, audio in enumerate(clips((1.2, 0.8, 2.0), seed=1)):
        sf.write(tmp_path / f"{i}.wav", audio, 16000)
        rows.append({"id": f"u{i}", "audio_path": str(tmp_path / f"{i}.wav"), "text": f"word {i}"})

    import distill.assets

    monkeypatch.setattr(distill.assets, "load_dataset",
                        lambda asset_id, split=None: datasets.Dataset.from_list(rows))
    suite = tmp_path / "q3.yaml"
    suite.write_text("name: q3\nversion: 1\nmodality: asr\ntasks: [librivox-5]\nbatch_size: 2\n"
                     "headline: {task: librivox-5, metric: wer}\n")
    from distill.evaluation import qwen3_asr

    load = qwen3_asr.load  # the harness loads the adapter itself: keep its decode short too
    monkeypatch.setattr(qwen3_asr, "load", lambda *args, **kwargs: short(load(*args, **kwargs)))
    rec = load_record(evaluate(str(tiny), str(suite), results_dir=tmp_path / "results"))
    assert (rec.kind, rec.adapter, rec.modality) == ("qwen3-asr", "qwen3-asr", "asr")
    assert rec.params and rec.params > 0
    wer = next(m for m in rec.metrics if m.metric == "wer")
    assert wer.n == 3 and wer.extra["language"] == "en" and wer.value > 0
    samples = [json.loads(x) for x in (tmp_path / "results" / rec.samples).read_text().splitlines()]
    assert sorted(s["id"] for s in samples) == ["u0", "u1", "u2"]
    by_id = {s["id"]: s["prediction"] for s in samples}
    assert [by_id[r["id"]] for r in rows] == asr.transcribe([sf.read(r["audio_path"], dtype="float32")[0]
                                                              for r in rows])


def test_peft_adapter_on_qwen3_asr_equals_its_merged_model(tiny_bytes, tmp_path):
    import copy
    import dataclasses

    import torch
    from peft import LoraConfig, get_peft_model

    asr = short(ADAPTERS["qwen3-asr"](str(tiny_bytes)))
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(asr.model),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    artifacts.finalize(artifacts.Artifact(path=tmp_path / "lora", artifact_id="run/lora", kind="peft-adapter",
                                          adapter="peft-adapter", extra={"base": str(tiny_bytes)}))
    adapted = short(ADAPTERS["peft-adapter"](str(tmp_path / "lora"), "cpu", artifacts.load(tmp_path / "lora")))
    audio = clips()
    got = adapted.transcribe(audio)
    assert got == dataclasses.replace(asr, model=lora.merge_and_unload()).transcribe(audio)
    assert got != asr.transcribe(audio)  # the adapter does something


def test_quantized_qwen3_asr_artifacts_load_and_transcribe(tiny_bytes):
    path = tiny_bytes
    dq = short(ADAPTERS["torch-dynamic-quant"](str(path), "cpu"))
    assert (dq.backend, dq.dtype) == ("torch-dynamic-quant", "qint8-dynamic")
    assert any("quantized" in type(m).__module__ for m in dq.model.modules())
    assert [type(t) for t in dq.transcribe(clips()[:2])] == [str, str]
    pytest.importorskip("bitsandbytes")
    artifacts.finalize(artifacts.Artifact(path=path, artifact_id="run/q8", kind="bnb", adapter="bnb",
                                          extra={"quantization": {"bits": 8}}))
    try:
        q = ADAPTERS["bnb"](str(path), "cpu", artifacts.load(path))
    finally:
        (path / artifacts.MANIFEST).unlink()
    assert (q.backend, q.dtype) == ("bitsandbytes", "int8")
    assert any("Linear8bitLt" in type(m).__name__ for m in q.model.modules())
    assert [type(t) for t in short(q).transcribe(clips()[:2])] == [str, str]


def test_wrong_directory_fails_before_the_slow_import(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    code = ("import sys\nfrom distill.errors import DistillError\nfrom distill.evaluation.adapters import ADAPTERS\n"
            f"try:\n    ADAPTERS['qwen3-asr']({str(tmp_path)!r})\nexcept DistillError as e:\n    print(e)\n"
            "assert 'qwen_asr' not in sys.modules\n"
            "from distill.cli import main\nassert main(['validate', 'recipes/quickstart.yaml']) == 0\n"
            "assert 'qwen_asr' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "is not a Qwen3-ASR model directory (config.json model_type: whisper)" in out.stdout


def test_a_hub_id_resolves_by_its_raw_config(monkeypatch):
    """transformers 4.57's AutoConfig rejects qwen3_asr unless qwen_asr was imported: not needed."""
    import transformers
    from transformers import PretrainedConfig

    def unknown(*args, **kwargs):
        raise ValueError("The checkpoint you are trying to load has model type `qwen3_asr`")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unknown)
    monkeypatch.setattr(PretrainedConfig, "get_config_dict",
                        classmethod(lambda cls, name, **kwargs: ({"model_type": "qwen3_asr"}, {})))
    ref = resolve_model("Qwen/Qwen3-ASR-0.6B")
    assert (ref.adapter, ref.kind, ref.source) == ("qwen3-asr", "qwen3-asr", "Qwen/Qwen3-ASR-0.6B")


def test_language_table_and_audio_limit_match_the_package():
    """The model home keeps these torch-free (validate reads them): they must equal the package's."""
    pytest.importorskip("qwen_asr")
    from qwen_asr.inference.utils import MAX_ASR_INPUT_SECONDS, SUPPORTED_LANGUAGES

    from distill import qwen3_asr

    assert set(qwen3_asr.LANGUAGES.values()) <= set(SUPPORTED_LANGUAGES)
    assert qwen3_asr.MAX_AUDIO_SECONDS == MAX_ASR_INPUT_SECONDS
    assert qwen3_asr.language_name("english") == "English" and qwen3_asr.language_code("Chinese") == "zh"
