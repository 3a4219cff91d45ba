"""CTranslate2 export: HF Whisper and causal-LM directories -> the format faster-whisper and
`ctranslate2.Generator` load, plus the facts a CT2 directory's readers need.

An export directory holds what `ctranslate2.converters.TransformersConverter` writes (`model.bin`,
CT2's own `config.json`, `vocabulary.json`) plus the HF processor/tokenizer files, so it serves
three readers as is: faster-whisper (`tokenizer.json` + `preprocessor_config.json`), plain
ctranslate2, and our evaluation adapter (`distill.evaluation.ct2_models`). The reverse direction,
CT2 -> HF for the offline Whisper assets, lives in `distill/assets/ct2.py` (the model.bin reader).

CT2 quantizes at conversion: `int8` and `int8_float32` both store int8 weights with per-row scales
(the runtime picks the compute type; on CPU both run int8 GEMMs with float32 elsewhere), `float32`
keeps full precision. Importing this module is cheap: ctranslate2/transformers load in the calls.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from distill.errors import DistillError

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "int8_float32", "float32")
# Artifact kind of the source -> the architecture an export records (and the adapter loads).
ARCHITECTURES = {"hf-whisper": "whisper", "hf-causal-lm": "causal-lm"}
# CT2 spec names in model.bin -> architecture, for CT2 directories that have no manifest
# (e.g. a faster-whisper model a user downloaded).
SPEC_ARCHITECTURES = {"WhisperSpec": "whisper", "TransformerDecoderSpec": "causal-lm"}
FULL_WINDOW_FRAMES = 3000  # faster-whisper pads every window to 30 s (audio.pad_or_trim's default)


def architecture(path: Path, manifest=None) -> str:
    """'whisper' | 'causal-lm' for a CT2 directory: the manifest's record, else model.bin's spec."""
    extra = getattr(manifest, "extra", None) or {}
    if extra.get("architecture") in SPEC_ARCHITECTURES.values():
        return extra["architecture"]
    from distill.assets.ct2 import read_spec_name

    model_bin = Path(path) / "model.bin"
    if not model_bin.is_file():
        raise DistillError(f"'{path}' has no model.bin: not a CTranslate2 model directory",
                           "point at a directory written by `kind: export, format: ct2` or ct2-transformers-converter")
    spec = read_spec_name(model_bin)
    if spec not in SPEC_ARCHITECTURES:
        raise DistillError(f"CTranslate2 model '{path}' is a {spec}; the harness runs Whisper and "
                           "decoder-only LMs", "export a Whisper or causal LM model")
    return SPEC_ARCHITECTURES[spec]


def check_source(path: Path, kind: str) -> str:
    """Refuse what the converter cannot take, before anything is written; returns the architecture."""
    if kind not in ARCHITECTURES:
        raise DistillError(f"cannot export an artifact of kind '{kind}' to CTranslate2",
                           "export a full-precision hf-whisper or hf-causal-lm model (merge LoRA first; "
                           "quantize with the export's `quantization:` instead of a quantize stage)")
    config = json.loads((Path(path) / "config.json").read_text())
    if kind == "hf-causal-lm":
        from ctranslate2.converters.transformers import _MODEL_LOADERS
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        name = CONFIG_MAPPING_NAMES.get(config.get("model_type", ""), "")
        if name not in _MODEL_LOADERS:
            raise DistillError(f"ctranslate2 has no converter for model_type '{config.get('model_type')}'",
                               "export it with `format: onnx`, or use an architecture ctranslate2 "
                               "supports (Llama, Qwen2/3, Mistral, Gemma, ...)")
    return ARCHITECTURES[kind]


def check_buckets(source: Path, kind: str, buckets: list[int]) -> None:
    """Window buckets need a Whisper source whose window is longer than every bucket."""
    if not buckets:
        return
    if kind != "hf-whisper":
        raise DistillError(f"window_buckets apply to Whisper exports, not '{kind}'", "drop window_buckets")
    window_s = 2 * int(json.loads((Path(source) / "config.json").read_text())["max_source_positions"]) // 100
    if max(buckets) >= window_s:
        raise DistillError(f"window bucket {max(buckets)} s is not shorter than the model's {window_s} s window",
                           f"use buckets below {window_s} s (the model's own window is always the last one)")


def convert(source: Path, out: Path, kind: str, quantization: str = "int8",
            window_buckets: list[int] | None = None, bucket_padding_s: float = 1.0) -> dict:
    """Convert the HF directory `source` into the empty directory `out`; returns manifest extras.

    Nothing is written unless the source is convertible (check_source runs first).
    """
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    if quantization not in QUANTIZATIONS:
        raise DistillError(f"unknown CTranslate2 quantization '{quantization}'",
                           f"use one of: {', '.join(QUANTIZATIONS)}")
    arch = check_source(source, kind)
    check_buckets(source, kind, window_buckets or [])
    logger.info("converting %s to CTranslate2 (%s)", source, quantization)
    # force=True: `out` is the fresh directory artifacts.prepare_dir made; the converter refuses
    # an existing directory otherwise.
    TransformersConverter(str(source)).convert(str(out), quantization=quantization, force=True)
    extra = {"format": "ct2", "runtime": "ctranslate2", "ctranslate2": ctranslate2.__version__,
             "architecture": arch, "compute_type": quantization, "precision": precision(quantization)}
    if quantization != "float32":
        extra["quantization"] = {"method": f"ct2-{quantization}", "weights": "int8 per-row scales"}
    config = json.loads((Path(source) / "config.json").read_text())
    if arch == "whisper":
        from distill.whisper_tokenizer import whisper_processor

        whisper_processor(source).save_pretrained(out)  # faster-whisper reads the repaired tokenizer.json
        frames = 2 * int(config["max_source_positions"])
        extra.update(window_s=frames // 100, encoder_frames=frames,
                     faster_whisper=frames == FULL_WINDOW_FRAMES)
        if window_buckets:
            extra.update(window_buckets=sorted(window_buckets), bucket_padding_s=bucket_padding_s)
    else:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(source).save_pretrained(out)
        extra["max_position_embeddings"] = config.get("max_position_embeddings")
        ct2_config_path = Path(out) / "config.json"
        ct2_config = json.loads(ct2_config_path.read_text())
        if ct2_config.get("bos_token") is None:
            # ctranslate2.Generator refuses a null bos_token at load, and tokenizers without BOS
            # (SmolLM2's GGUF declares none) convert to one. It only prefixes prompts that ask for
            # it; we always pass explicit token lists, so the EOS token stands in.
            ct2_config["bos_token"] = ct2_config.get("eos_token")
            ct2_config_path.write_text(json.dumps(ct2_config, indent=2) + "\n")
    (Path(out) / "README.md").write_text(model_card(arch, extra))
    return extra


def precision(quantization: str) -> dict:
    """What a CT2 export computes in on CPU (the manifest's `precision`, like the ONNX exports')."""
    if quantization == "float32":
        return {"dtype": "float32", "bits": 32, "weights": "float32", "activations": "float32"}
    return {"dtype": f"ct2-{quantization}", "bits": 8, "weights": "int8 per-row scales",
            "activations": "int8 per row inside the int8 GEMMs (quantized per call), float32 elsewhere"}


def model_card(arch: str, extra: dict) -> str:
    """How to run the exported directory with the runtimes' own APIs (README.md in the artifact)."""
    q = extra["compute_type"]
    head = (f"# CTranslate2 export ({arch}, {q})\n\nWritten by `distill` (`kind: export, format: ct2`) "
            f"with ctranslate2 {extra['ctranslate2']}. Weights: `model.bin` ({q}).\n\n")
    if arch == "causal-lm":
        return head + f"""```python
import ctranslate2
from transformers import AutoTokenizer

generator = ctranslate2.Generator("THIS_DIR", device="cpu", compute_type="{q}", intra_threads=2)
tok = AutoTokenizer.from_pretrained("THIS_DIR")
prompt = tok.convert_ids_to_tokens(tok("The capital of France is").input_ids)
out = generator.generate_batch([prompt], max_length=32, sampling_topk=1, include_prompt_in_result=False)
print(tok.decode(out[0].sequences_ids[0]))
```

Evaluate it like any artifact: `distill eval THIS_DIR --suite lm`.
"""
    window = extra["window_s"]
    if extra["faster_whisper"]:
        run = f"""faster-whisper loads it as is:

```python
from faster_whisper import WhisperModel

model = WhisperModel("THIS_DIR", device="cpu", compute_type="{q}", cpu_threads=2)
segments, info = model.transcribe("audio.wav", language="en", beam_size=1)
print(" ".join(s.text.strip() for s in segments))
```
"""
    else:
        run = f"""This student's encoder window is **{window} s** ({extra['encoder_frames']} mel frames), not
Whisper's 30 s. faster-whisper's `transcribe` pads every window to 3000 frames
(`faster_whisper.audio.pad_or_trim`), which this encoder cannot take; run it through ctranslate2
directly (or teach faster-whisper the shorter window: `chunk_length={window}` in its feature
extractor and a `pad_or_trim` to {extra['encoder_frames']} frames):

```python
import ctranslate2, numpy as np, soundfile as sf
from transformers import WhisperProcessor

model = ctranslate2.models.Whisper("THIS_DIR", device="cpu", compute_type="{q}", intra_threads=2)
processor = WhisperProcessor.from_pretrained("THIS_DIR")       # chunk_length={window}
audio, sr = sf.read("audio_16k.wav", dtype="float32")          # mono, 16 kHz, <= {window} s
features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
tok = processor.tokenizer
prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
result = model.generate(ctranslate2.StorageView.from_array(features), [prompt], beam_size=1)
print(tok.decode(result[0].sequences_ids[0], skip_special_tokens=True))
```

(English-only models take `["<|startoftranscript|>", "<|notimestamps|>"]`.) Longer audio:
`distill transcribe` cuts it at pauses into pieces of at most {window} s.
"""
    if extra.get("window_buckets"):
        buckets = ", ".join(f"{b} s" for b in extra["window_buckets"])
        run += f"""
**Window buckets: {buckets}.** CTranslate2's encoder takes any number of frames up to the window,
and this export was measured padding each clip to the shortest of {buckets} and {window} s that
leaves {extra['bucket_padding_s']:g} s after it (a shorter encoder pass for short clips): pass
`max_length=<bucket seconds> * 16000` to the feature extractor above. `distill transcribe` and
`distill eval` do this by themselves.
"""
    return head + run + """
With distill: `distill transcribe THIS_DIR audio.wav [--json]`, `distill eval THIS_DIR --suite asr-en`.
"""
