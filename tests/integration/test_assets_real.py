"""The real offline assets, as installed by `distill assets install` (`make assets`).

Each test skips when its asset is not installed, naming the install command.
"""

from __future__ import annotations

from collections import Counter

import pytest

import distill.assets as assets

pytestmark = pytest.mark.integration


def need(*ids: str) -> None:
    missing = [a for a in ids if not assets.is_installed(a)]
    if missing:
        pytest.skip(f"not installed: distill assets install {' '.join(missing)}")


def test_mmlu_counts_and_columns():
    need("mmlu", "mmlu-mini", "mmlu-dev")
    full = assets.load_dataset("mmlu", "test")
    assert len(full) == 14_042
    per_subject = Counter(full["subject"])
    assert len(per_subject) == 57 and per_subject["high_school_psychology"] == 545
    assert len(set(full["id"])) == len(full)
    assert set(full["answer"]) == {0, 1, 2, 3} and {len(c) for c in full["choices"]} == {4}
    mini = assets.load_dataset("mmlu-mini", "test")
    assert len(mini) == 1_140 and set(Counter(mini["subject"]).values()) == {20}
    assert set(mini["id"]) <= set(full["id"])
    dev = assets.load_dataset("mmlu-dev", "dev")
    assert set(dev["subject"]) == set(per_subject) and 250 <= len(dev) <= 285


def test_speech_sets_are_16k_mono_with_references():
    import soundfile as sf

    need("asterisk-en", "librivox-5", "cards-5")
    ast = assets.load_dataset("asterisk-en")
    assert len(ast) == 563 and all(ast["telephone"])
    assert sum(1 for t in ast["text"] if not t) == 10  # the silence clips
    assert not any("*" in t or "[" in t for t in ast["text"])
    assert 1400 < sum(ast["duration"]) < 1600  # 25.2 minutes
    for name in ("librivox-5", "cards-5"):
        ds = assets.load_dataset(name, "test")
        assert len(ds) == 5 and not any(ds["telephone"])
    for row in list(ast.select(range(3))) + list(assets.load_dataset("cards-5")):
        info = sf.info(row["audio_path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.duration - row["duration"]) < 1e-3 and row["text"].strip()


def test_text_corpora_splits_are_disjoint():
    need("text-en", "text-kjv")
    en = assets.load_dataset("text-en")
    assert set(en) == {"train", "heldout"}
    assert not set(en["train"]["text"]) & set(en["heldout"]["text"])
    kjv = assets.load_dataset("text-kjv")
    assert len(kjv["train"]) + len(kjv["heldout"]) == 1189  # chapters in the KJV
    assert set(kjv["heldout"]["id"]) <= set(en["heldout"]["id"])  # same split rule in the union


@pytest.mark.parametrize("model_id", ["whisper-tiny.en", "whisper-base"])
def test_converted_whisper_transcribes_a_known_clip(model_id):
    import soundfile as sf
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from distill.assets.check import normalizer_for

    need(model_id, "librivox-5")
    row = next(r for r in assets.load_dataset("librivox-5") if r["id"].endswith("0930"))
    path = assets.asset_path(model_id)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    processor = WhisperProcessor.from_pretrained(path)
    feats = processor(sf.read(row["audio_path"])[0], sampling_rate=16000, return_tensors="pt").input_features
    kwargs = {"language": "en", "task": "transcribe"} if model.generation_config.is_multilingual else {}
    with torch.inference_mode():
        ids = model.generate(feats, do_sample=False, **kwargs)
    hyp = processor.batch_decode(ids, skip_special_tokens=True)[0]
    normalize = normalizer_for(path)
    assert normalize(hyp) == normalize(row["text"]) == "he might even have been made amiable himself"
    from distill.artifacts import load

    manifest = load(path)
    assert manifest.kind == "hf-whisper" and manifest.artifact_id == f"asset/{model_id}"


def test_smollm2_tokenizer_and_sense():
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    need("smollm2-135m-instruct", "text-en")
    path = assets.asset_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("Hello world").input_ids == [19556, 905]  # no BOS prepended
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    text = assets.load_dataset("text-en", "heldout")[0]["text"]
    ids = tok(text, return_tensors="pt", truncation=True, max_length=128).input_ids
    with torch.inference_mode():
        loss = lm(ids, labels=ids).loss.item()
        prompt = tok("The capital of France is", return_tensors="pt").input_ids
        out = lm.generate(prompt, max_new_tokens=5, do_sample=False)
    assert math.isfinite(loss) and loss < 6
    assert "Paris" in tok.decode(out[0, prompt.shape[1]:])


def test_qwen3_tokenizer_loads():
    from transformers import AutoTokenizer

    need("qwen3-tokenizer")
    tok = AutoTokenizer.from_pretrained(assets.asset_path("qwen3-tokenizer"))
    assert len(tok) == 151_669 and "<think>" in tok.get_vocab()
    assert tok.decode(tok("Distillation, 蒸馏").input_ids) == "Distillation, 蒸馏"


def test_installed_assets_verify():
    from distill.assets.store import verify_one

    installed = [a for a in assets.ASSETS if assets.is_installed(a) and not a.startswith("tts-")]
    if not installed:
        pytest.skip("no assets installed: distill assets install --all")
    for asset_id in installed:
        ok, message = verify_one(asset_id)
        assert ok, f"{asset_id}: {message}"
