"""ASR tasks: decode audio, transcribe in length-sorted batches, score WER/CER from raw text.

Audio that fails to decode is skipped with a warning and counted in the metrics (never silently);
predictions are stored exactly as the model produced them and normalised only when scored.
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from distill.errors import DistillError
from distill.evaluation import metrics
from distill.evaluation.data import item_id
from distill.evaluation.tasks import AsrTask

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # every Whisper-style feature extractor expects 16 kHz mono


def load_audio(path: str):
    """-> float32 mono array at 16 kHz. Raises on undecodable files (the caller counts them)."""
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE)
    if audio.size == 0:
        raise ValueError("empty audio")
    if not np.isfinite(audio).all():  # a model turns NaN into text ('!!!!'): never score it
        raise ValueError(f"{int((~np.isfinite(audio)).sum())} non-finite (NaN/inf) samples")
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_items(spec: AsrTask, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """-> (decoded items with id/audio/reference/seconds, skipped rows with the reason)."""
    items, skipped = [], []
    for i, row in enumerate(tqdm(rows, desc=f"{spec.name} audio", unit="utt", leave=False)):
        iid = item_id(row, spec, i)
        try:
            audio = load_audio(str(row[spec.audio_field]))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means: skip and count
            skipped.append({"id": iid, "skipped": f"audio decode failed: {type(exc).__name__}: {exc}"})
            continue
        items.append({"id": iid, "audio": audio, "reference": str(row[spec.text_field]),
                      "seconds": len(audio) / SAMPLE_RATE})
    if skipped:
        logger.warning("task %s: skipped %d of %d utterances whose audio failed to decode (first: %s)",
                       spec.name, len(skipped), len(rows), skipped[0]["skipped"])
    if not items:
        raise DistillError(f"task '{spec.name}': no utterance could be decoded",
                           "check the dataset's audio files (reinstall the asset)")
    return items, skipped


def options(spec: AsrTask, asr) -> dict:
    """The task's transcription options as `transcribe` keywords (only those set, so adapters
    without them keep working); checked before any audio is transcribed."""
    import inspect

    opts: dict = {}
    accepted = inspect.signature(asr.transcribe).parameters
    for key, value, default in (("context", spec.context, ""), ("long_audio", spec.long_audio, "chunk")):
        if value == default:
            continue
        if key not in accepted:
            raise DistillError(f"task '{spec.name}': {key} is not supported by this model's adapter "
                               f"({type(asr).__name__}, backend {asr.backend})", f"remove {key} from the task")
        opts[key] = value
    return opts


def check_lengths(spec: AsrTask, asr, items: list[dict]) -> None:
    """long_audio: error refuses audio past the model's limit before anything is transcribed."""
    limit = getattr(asr, "max_audio_seconds", None)
    longest = max(it["seconds"] for it in items)
    if spec.long_audio == "error" and limit is not None and longest > limit:
        n = sum(it["seconds"] > limit for it in items)
        raise DistillError(f"task '{spec.name}': {n} utterance(s) exceed the model's {limit:g} s limit "
                           f"(longest {longest:.1f} s) and long_audio is 'error'",
                           "set long_audio: chunk (task YAML or --long-audio chunk) to transcribe them in pieces")


def transcribe(asr, items: list[dict], batch_size: int, language: str, desc: str = "asr",
               opts: dict | None = None):
    """Length-sorted batches (longest first) -> (predictions in item order, per-batch timings)."""
    order = sorted(range(len(items)), key=lambda i: items[i]["seconds"], reverse=True)
    preds: list[str | None] = [None] * len(items)
    timings = []  # (audio seconds, compute seconds, batch size) per batch
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start: start + batch_size]
        t0 = time.perf_counter()
        texts = asr.transcribe([items[i]["audio"] for i in idx], language=language, **(opts or {}))
        timings.append((sum(items[i]["seconds"] for i in idx), time.perf_counter() - t0, len(idx)))
        for i, text in zip(idx, texts):
            preds[i] = text
    return preds, timings


def run(spec: AsrTask, asr, rows: list[dict], batch_size: int):
    """-> (metric dicts, per-sample rows, timings)."""
    items, skipped = load_items(spec, rows)
    opts = options(spec, asr)
    check_lengths(spec, asr, items)
    preds, timings = transcribe(asr, items, batch_size, spec.language, desc=spec.name, opts=opts)
    refs = [it["reference"] for it in items]
    found, per_item = metrics.asr_task_scores(preds, refs, spec.normalizer, spec.metrics)
    samples = [{"id": it["id"], "prediction": pred, "reference": it["reference"],
                "audio_s": round(it["seconds"], 4), **row} for it, pred, row in zip(items, preds, per_item)]
    samples.extend(skipped)
    for m in found:
        m["extra"].update(n_decode_failed=len(skipped), language=spec.language, context=spec.context or None,
                          long_audio=spec.long_audio)
    return found, samples, timings
