"""Speech pieces for ASR distillation: utterances, Whisper student init, pseudo-labels, filtering.

The recipe follows distil-whisper: the student keeps the teacher's encoder and a few maximally
spaced decoder layers; training targets are the teacher's own greedy transcripts, and utterances
whose pseudo-label disagrees with the reference by more than a WER threshold are dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.errors import DistillError

logger = logging.getLogger(__name__)


@dataclass
class Utterance:
    id: str
    audio_path: str
    text: str
    duration: float | None = None


def read_utterances(source: str, split: str | None, max_items: int | None) -> list[Utterance]:
    """Utterances from `asset:<id>` (columns id, audio_path, text) or a JSONL manifest."""
    if source.startswith("asset:"):
        from distill.assets import load_dataset

        ds = load_dataset(source.removeprefix("asset:"), split=split)
        if hasattr(ds, "keys"):  # a DatasetDict: the split was not named
            raise DistillError(f"'{source}' has splits {list(ds.keys())}", "set data.split")
        rows = [dict(r) for r in ds]
        if "noise" in ds.column_names:  # train on clean speech; noisy copies are for evaluation
            rows = [r for r in rows if not r.get("noise")]
    else:
        path = Path(source)
        if not path.is_file():
            raise DistillError(f"speech manifest '{source}' not found",
                               "give asset:<id> or a .jsonl file of {audio_path, text} lines")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    missing = [k for k in ("audio_path", "text") if rows and k not in rows[0]]
    if missing:
        raise DistillError(f"speech data '{source}' lacks columns {missing}", "provide audio_path and text")
    rows = rows[:max_items] if max_items else rows
    return [Utterance(id=str(r.get("id", i)), audio_path=str(r["audio_path"]), text=str(r["text"]),
                      duration=r.get("duration")) for i, r in enumerate(rows)]


def decode(utterances: list[Utterance], max_seconds: float):
    """-> (kept utterances, their 16 kHz audio arrays, skip counts). Bad audio is counted, not fatal."""
    from distill.evaluation.asr import SAMPLE_RATE, load_audio

    kept, audio, skipped = [], [], {"decode_error": 0, "too_long": 0}
    for utt in utterances:
        try:
            wave = load_audio(utt.audio_path)
        except Exception:  # noqa: BLE001 - any decoder failure: skip and count
            skipped["decode_error"] += 1
            continue
        if len(wave) / SAMPLE_RATE > max_seconds:
            skipped["too_long"] += 1
            continue
        kept.append(utt)
        audio.append(wave)
    if skipped["decode_error"]:
        logger.warning("skipped %d utterances whose audio failed to decode", skipped["decode_error"])
    if not kept:
        raise DistillError("no training utterance could be decoded", "check the speech data's audio files")
    return kept, audio, skipped


def whisper_student(teacher, decoder_layers: int):
    """Teacher encoder + `decoder_layers` evenly spaced teacher decoder layers (first/last kept)."""
    from transformers import WhisperForConditionalGeneration

    from distill.losses import even_layer_map

    n_teacher = teacher.config.decoder_layers
    if decoder_layers > n_teacher:
        raise DistillError(f"student decoder_layers={decoder_layers} exceeds the teacher's {n_teacher}",
                           f"use at most {n_teacher}")
    keep = even_layer_map(decoder_layers, n_teacher)
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "decoder_layers": decoder_layers})
    student = WhisperForConditionalGeneration(config)
    state = {}
    prefix = "model.decoder.layers."
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in keep:
                state[f"{prefix}{keep.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if [k for k in missing if k != "proj_out.weight"] or unexpected:  # proj_out is tied to the embeddings
        raise RuntimeError(f"layer copy mismatch: missing {missing}, unexpected {unexpected}")
    student.generation_config = teacher.generation_config
    return student, keep


def features(processor, audio: list, batch_size: int = 8) -> torch.Tensor:
    """Log-mel input features [N, n_mels, 3000] for a list of 16 kHz arrays."""
    chunks = [processor.feature_extractor(audio[i:i + batch_size], sampling_rate=16000,
                                          return_tensors="pt").input_features
              for i in range(0, len(audio), batch_size)]
    return torch.cat(chunks)


def generate_kwargs(model, language: str | None) -> dict:
    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
    return {"language": language, "task": "transcribe"} if multilingual and language else {}


@torch.no_grad()
def pseudo_label(teacher, processor, feats: torch.Tensor, language: str | None,
                 batch_size: int = 8, max_new_tokens: int = 128) -> list[list[int]]:
    """Teacher greedy transcripts as token ids (without the start token, ending at EOS)."""
    from tqdm.auto import tqdm

    out: list[list[int]] = []
    eos = teacher.generation_config.eos_token_id
    for i in tqdm(range(0, len(feats), batch_size), desc="pseudo-label", unit="batch"):
        seqs = teacher.generate(feats[i:i + batch_size], num_beams=1, do_sample=False,
                                max_new_tokens=max_new_tokens, **generate_kwargs(teacher, language))
        for seq in seqs.tolist():
            seq = seq[1:]  # drop <|startoftranscript|>: it is the decoder start, not a target
            if eos in seq:
                seq = seq[: seq.index(eos) + 1]
            out.append(seq)
    return out


def wer_filter(hypotheses: list[str], references: list[str], threshold: float | None) -> list[bool]:
    """Keep-mask: normalised WER(pseudo-label, reference) <= threshold (empty references kept out)."""
    from distill.evaluation.metrics import utterance_errors

    keep = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        errors = utterance_errors(hyp, ref)
        if errors["errors"] is None:
            keep.append(False)
        elif threshold is None:
            keep.append(True)
        else:
            keep.append(errors["errors"] / errors["ref_words"] <= threshold)
    return keep


def pad_labels(labels: list[list[int]]) -> torch.Tensor:
    """[N, L] LongTensor padded with -100 (ignored by losses)."""
    width = max(len(seq) for seq in labels)
    out = torch.full((len(labels), width), -100, dtype=torch.long)
    for i, seq in enumerate(labels):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out
