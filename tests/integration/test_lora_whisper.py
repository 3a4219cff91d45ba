"""Whisper LoRA on real whisper-tiny.en and tts-en speech (noise-augmented): a few steps, then the
PEFT adapter on the base equals the merged weights, and noisy copies are in the training set."""

from __future__ import annotations

import json

import pytest
import torch

from distill import artifacts, runner
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_whisper_lora_adapter_on_base_equals_merged(tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from distill.assets import asset_path

    result = runner.run(ROOT / "recipes/asr/whisper-tiny-en-lora-noisy.yaml", [
        f"output_dir={tmp_path}", "eval=null", "stages.0.speech.max_items=4", "stages.0.train.steps=2",
        "stages.0.train.batch_size=2", "stages.0.train.warmup_steps=0", "stages.0.merge=true"])
    merged_art = result.artifacts["lora"]
    adapter_dir = merged_art.path.parent / "lora-adapter"
    assert artifacts.load(adapter_dir).kind == "peft-adapter"
    facts = merged_art.extra["speech"]
    assert facts["training_items"] == 8 and sum(facts["noisy_copies"].values()) == 4
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["utterances"] for r in rows if "utt_per_s" in r] == [4]  # 2 steps x 2: rows are utterances, not tokens
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    dec = torch.tensor([[50257, 50362, 383, 3290]])
    base = WhisperForConditionalGeneration.from_pretrained(asset_path("whisper-tiny.en"))
    with torch.no_grad():
        on_base = PeftModel.from_pretrained(base, adapter_dir).eval()(input_features=feats, decoder_input_ids=dec).logits
        merged = WhisperForConditionalGeneration.from_pretrained(merged_art.path).eval()(
            input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(on_base, merged, rtol=1e-4, atol=1e-4)
