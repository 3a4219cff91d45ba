"""whisper-base's tokenizer files lack one BPE merge: restored, real references encode as the model
was trained, and the model assigns them far lower loss than the files' own encoding."""

from __future__ import annotations

import pytest

from distill import speech
from distill.assets import asset_path
from distill.whisper_tokenizer import repair, whisper_processor

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_whisper_tiny_en_vocabulary_is_complete():
    assert repair(whisper_processor(asset_path("whisper-tiny.en")).tokenizer) == 0


def test_whisper_base_labels_follow_the_model_after_repair():
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = asset_path("whisper-base")
    files = WhisperProcessor.from_pretrained(path)  # as shipped
    fixed = whisper_processor(path)
    assert repair(WhisperProcessor.from_pretrained(path).tokenizer) == 1
    assert fixed.tokenizer(" the", add_special_tokens=False).input_ids == [264]  # 'Ġthe', tiktoken's id
    assert files.tokenizer(" the", add_special_tokens=False).input_ids == [220, 3322]  # 'Ġ' + 'the'

    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    utts = [u for u in speech.read_utterances("asset:asterisk-en", "train", 40, noisy=False)
            if " t" in " " + u.text][:6]
    nll = {"files": [0.0, 0], "fixed": [0.0, 0]}
    for u in utts:
        feats = fixed.feature_extractor(speech.load_wave(u.audio_path)[0], sampling_rate=16000,
                                        return_tensors="pt").input_features
        for name, proc in (("files", files), ("fixed", fixed)):
            labels = speech.reference_labels(proc.tokenizer, [u.text], "en")[0]
            start = model.generation_config.decoder_start_token_id
            with torch.no_grad():
                logits = model(input_features=feats, decoder_input_ids=torch.tensor([[start] + labels[:-1]])).logits
            logp = logits[0].log_softmax(-1)[torch.arange(len(labels)), torch.tensor(labels)]
            nll[name][0] -= float(logp[3:].sum())  # text + EOS, after <|en|><|transcribe|><|notimestamps|>
            nll[name][1] += len(labels) - 3
        assert proc.tokenizer.decode(labels, skip_special_tokens=True).strip() == u.text.strip()
    per_token = {k: s / n for k, (s, n) in nll.items()}
    assert per_token["fixed"] < 0.5 * per_token["files"], per_token
