"""`distill transcribe MODEL AUDIO...`: any speech model the harness loads, on audio files, timed.

It goes through the evaluation adapters (`distill.evaluation.adapters.ADAPTERS`), so a transcript
here is the one `distill eval` scores: HF Whisper, bnb / torch dynamic-INT8 / ONNX / CTranslate2
exports, Qwen3-ASR, PEFT adapters, assets (`asset:whisper-base`) and hub ids. Audio longer than
the model's window goes through the adapter's own long-form path. Everything that can be wrong
with the arguments (missing or undecodable audio, a text model, an unknown language, a context
the adapter cannot take) is one DistillError before any text is produced.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

from distill.errors import DistillError

SPEECH_MODEL_TYPES = ("whisper", "qwen3_asr")


def _check_speech_dir(ref, model: str) -> None:
    """Refuse a text model from its small JSON files, before loading any weights."""
    from distill import ct2

    path = Path(ref.source)
    if ref.adapter == "ct2":
        if ct2.architecture(path, ref.manifest) != "whisper":
            raise DistillError(f"'{model}' is a CTranslate2 language model, not a speech recognizer",
                               "pass a Whisper or Qwen3-ASR model (or their exports)")
        return
    config = path / "config.json"
    if path.is_dir() and config.is_file() and ref.adapter != "peft-adapter":
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type not in SPEECH_MODEL_TYPES:
            raise DistillError(f"'{model}' is a {model_type or 'non-speech'} model, not a speech recognizer",
                               "pass a Whisper or Qwen3-ASR model, an export of one, or asset:whisper-base")


def _decode_all(paths: list[Path]) -> list:
    from distill.evaluation.asr import load_audio

    waves = []
    for path in paths:
        if not path.is_file():
            raise DistillError(f"audio file '{path}' does not exist", "check the path")
        try:
            waves.append(load_audio(str(path)))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user problem
            raise DistillError(f"cannot decode audio '{path}' ({type(exc).__name__}: {exc})",
                               "pass a WAV/FLAC/OGG file (any sample rate; it is resampled to 16 kHz)") from None
    return waves


def _check_language(asr, language: str) -> None:
    """Whisper-style adapters: an unknown language fails here (Qwen3-ASR's own check is one line too)."""
    tok = getattr(getattr(asr, "processor", None), "tokenizer", None)
    if tok is not None and hasattr(asr, "multilingual"):
        from distill.evaluation.ct2_models import whisper_language_token

        whisper_language_token(tok, asr.multilingual, language)


def _context_kwargs(asr, context: str | None) -> dict:
    if not context:
        return {}
    if "context" in inspect.signature(asr.transcribe).parameters:
        return {"context": context}
    raise DistillError(f"--context is not supported by this model's adapter yet ({type(asr).__name__}, "
                       f"backend {asr.backend})", "drop --context (Whisper in PyTorch or CTranslate2 and "
                       "Qwen3-ASR take a text context)")


def transcribe_files(model: str, audio: list[str], *, language: str = "en", context: str | None = None,
                     device: str = "cpu", threads: int | None = None) -> dict:
    """Transcribe each file (batch 1, greedy) -> a JSON-able dict: model facts, conditions, and per
    file its text, audio seconds, compute seconds and RTFx (load time reported apart)."""
    from distill.evaluation.harness import portable
    from distill.evaluation.loading import resolve_model

    if not audio:
        raise DistillError("no audio files given", "pass one or more audio files after the model")
    paths = [Path(a) for a in audio]
    ref = resolve_model(model)
    _check_speech_dir(ref, model)
    waves = _decode_all(paths)

    import torch

    from distill.evaluation.adapters import loader_for

    if threads:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    asr = loader_for(ref)(ref.source, device, ref.manifest)
    load_s = time.perf_counter() - t0
    if asr.modality != "asr":
        raise DistillError(f"'{model}' is a {asr.modality} model, not a speech recognizer",
                           "pass a Whisper or Qwen3-ASR model, an export of one, or asset:whisper-base")
    _check_language(asr, language)
    kwargs = _context_kwargs(asr, context)
    files = []
    for path, wave in zip(paths, waves):
        t1 = time.perf_counter()
        text = asr.transcribe([wave], language=language, **kwargs)[0]
        compute = time.perf_counter() - t1
        seconds = len(wave) / 16000
        files.append({"audio": str(path), "text": text.strip(), "audio_s": round(seconds, 3),
                      "compute_s": round(compute, 4), "rtfx": round(seconds / compute, 3)})
    return {"model": portable(model), "artifact_id": ref.artifact_id, "adapter": ref.adapter,
            "backend": asr.backend, "dtype": asr.dtype, "device": device, "threads": torch.get_num_threads(),
            "batch_size": 1, "decoding": "greedy", "language": language, "context": context,
            "load_s": round(load_s, 3), "load_avg_before": list(load_before),
            "load_avg_after": list(os.getloadavg()), "files": files}


def summary(result: dict) -> str:
    """One line of timings for humans (stderr in text mode)."""
    audio = sum(f["audio_s"] for f in result["files"])
    compute = sum(f["compute_s"] for f in result["files"])
    return (f"{result['model']} ({result['backend']}, {result['dtype']}, {result['threads']} threads): "
            f"{audio:.1f} s of audio in {compute:.2f} s (RTFx {audio / compute:.1f}), load {result['load_s']:.1f} s, "
            f"load average {result['load_avg_before'][0]:.2f} -> {result['load_avg_after'][0]:.2f}")
