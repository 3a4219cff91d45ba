"""Qwen3-ASR behind the speech adapter's `transcribe` contract, done the way `qwen-asr` does it.

The package's transformers path (qwen_asr/inference/qwen3_asr.py, version 0.0.6) renders a chat
prompt with one audio placeholder, forces the language by appending `language <Name><asr_text>` to
the assistant turn (so the model writes the text only, no language tag), decodes and passes the
output through `parse_asr_output` (strip + collapse runaway repetitions). We repeat those steps on
the harness's batch with explicit greedy settings, so a record's WER is the WER a package user
gets. transformers 4.57 has no native qwen3_asr, hence the package; importing it takes 10-20 s,
so only `load` imports it (`distill --help` and `validate` never reach this module's imports).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError

# Task YAMLs name languages by ISO 639 code; Qwen3-ASR's prompt wants its English names
# (qwen_asr.inference.utils.SUPPORTED_LANGUAGES).
LANGUAGES = {
    "zh": "Chinese", "en": "English", "yue": "Cantonese", "ar": "Arabic", "de": "German",
    "fr": "French", "es": "Spanish", "pt": "Portuguese", "id": "Indonesian", "it": "Italian",
    "ko": "Korean", "ru": "Russian", "th": "Thai", "vi": "Vietnamese", "ja": "Japanese",
    "tr": "Turkish", "hi": "Hindi", "ms": "Malay", "nl": "Dutch", "sv": "Swedish", "da": "Danish",
    "fi": "Finnish", "pl": "Polish", "cs": "Czech", "fil": "Filipino", "tl": "Filipino",
    "fa": "Persian", "el": "Greek", "ro": "Romanian", "hu": "Hungarian", "mk": "Macedonian",
}


def language_name(language: str) -> str:
    """'en' | 'English' | 'english' -> 'English'; anything Qwen3-ASR cannot force is an error."""
    from qwen_asr.inference.utils import SUPPORTED_LANGUAGES, normalize_language_name

    name = LANGUAGES.get(language.strip().lower()) or normalize_language_name(language)
    if name not in SUPPORTED_LANGUAGES:
        raise DistillError(f"Qwen3-ASR cannot be forced to transcribe language '{language}'",
                           f"use one of: {', '.join(sorted(LANGUAGES))} (or their names)")
    return name


@dataclass
class Qwen3ASR:
    """A Qwen3-ASR model + processor behind `transcribe` (greedy, batched, language forced)."""

    model: Any  # Qwen3ASRForConditionalGeneration (possibly bnb- or dynamically quantized)
    processor: Any  # Qwen3ASRProcessor: Whisper 128-mel features + Qwen2 tokenizer + chat template
    backend: str
    dtype: str
    device: str = "cpu"
    modality: str = "asr"
    max_new_tokens: int = 512  # the package's default; a finished transcript stops at <|im_end|>
    context: str = ""  # the system turn (the package's `context`, empty by default)
    _features_dtype: Any = field(default=None, init=False, repr=False)

    def __post_init__(self):
        # Features follow the weights' float dtype, as the package's `.to(model.dtype)` does;
        # quantized models keep float32 embeddings/convs, so their first float parameter says it.
        self._features_dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    def prompt(self, language: str) -> str:
        """The package's prompt for one utterance with the language forced."""
        messages = [{"role": "system", "content": self.context},
                    {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
        base = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return base + f"language {language}<asr_text>"

    def transcribe(self, audios: list, language: str = "en", sampling_rate: int = 16000) -> list[str]:
        """audios: B float32 mono arrays at `sampling_rate` -> B texts as the package returns them."""
        import numpy as np
        import torch
        from qwen_asr.inference.utils import (MAX_ASR_INPUT_SECONDS, SAMPLE_RATE, normalize_audio_input,
                                              parse_asr_output, split_audio_into_chunks)

        name = language_name(language)
        # The package's own input path: mono, resampled to 16 kHz, rescaled only if outside [-1, 1].
        wavs = [normalize_audio_input((np.asarray(a, dtype=np.float32), int(sampling_rate))) for a in audios]
        # Past 20 min the package cuts at quiet points and concatenates the pieces' texts.
        pieces = [(i, chunk) for i, wav in enumerate(wavs)
                  for chunk, _ in split_audio_into_chunks(wav, SAMPLE_RATE, MAX_ASR_INPUT_SECONDS)]
        inputs = self.processor(text=[self.prompt(name)] * len(pieces), audio=[c for _, c in pieces],
                                return_tensors="pt", padding=True)
        inputs = inputs.to(self.device).to(self._features_dtype)  # casts float tensors only
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      num_beams=1)
        new_tokens = out.sequences[:, inputs["input_ids"].shape[1]:]
        raw = self.processor.batch_decode(new_tokens, skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False)
        texts = [""] * len(wavs)
        for (i, _), text in zip(pieces, raw):
            texts[i] += parse_asr_output(text, user_language=name)[1]
        return texts


def check_dir(path: str) -> None:
    """A local directory must hold a qwen3_asr config; checked before the slow package import."""
    if not Path(path).is_dir():
        return  # a hub id: from_pretrained resolves it
    cfg = Path(path) / "config.json"
    model_type = json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None
    if model_type != "qwen3_asr":
        raise DistillError(f"'{path}' is not a Qwen3-ASR model directory (config.json model_type: "
                           f"{model_type})", "point at a directory saved by "
                           "Qwen3ASRForConditionalGeneration.save_pretrained plus its processor")


def load(path: str, device: str = "cpu", backend: str = "torch-eager",
         quantization_config=None) -> Qwen3ASR:
    """Weights and processor from `path`; fp32 (bnb needs fp32 too, or its convs load as fp16)."""
    check_dir(path)
    import torch

    try:
        import qwen_asr  # noqa: F401 - registers qwen3_asr with transformers' Auto classes
    except ImportError:
        raise DistillError("the qwen-asr package is not installed",
                           "pip install -c requirements/constraints.txt qwen-asr==0.0.6") from None
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if backend == "bitsandbytes" and device == "cpu":
        kwargs["device_map"] = {"": "cpu"}
    try:
        model = Qwen3ASRForConditionalGeneration.from_pretrained(path, **kwargs)
        # fix_mistral_regex=True as the package passes it: transformers 4.57.6 otherwise warns
        # about a Mistral regex on any local tokenizer; the prompt's tokens are the same either way.
        processor = Qwen3ASRProcessor.from_pretrained(path, fix_mistral_regex=True)
    except OSError as exc:
        raise DistillError(f"cannot load Qwen3-ASR from '{path}' ({str(exc).splitlines()[0]})",
                           "check the directory (weights, processor files) or the hub id") from None
    if backend != "bitsandbytes":
        model = model.to(device)
    model.eval()
    from distill.evaluation.adapters import _dtype_name, bnb_dtype

    dtype = bnb_dtype(model) if backend == "bitsandbytes" else _dtype_name(model)
    return Qwen3ASR(model=model, processor=processor, backend=backend, dtype=dtype, device=device)
