"""Speech pieces for ASR distillation: utterances, the Whisper student's levers, pseudo-labels, filtering.

The recipe follows distil-whisper: the student keeps teacher weights, cut three ways (each usable
alone): evenly spaced decoder layers, evenly spaced encoder layers, and a shorter encoder window
(the positional table's prefix, the processor's `chunk_length` set to match). Training targets are
the teacher's own greedy transcripts; utterances whose pseudo-label disagrees with the reference by
more than a WER threshold are dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from distill.errors import DistillError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # every Whisper feature extractor expects 16 kHz mono
SILENT_PEAK = 1e-4  # below this peak amplitude a clip is digital silence (counted, still used)


@dataclass
class Utterance:
    id: str
    audio_path: str
    text: str
    duration: float | None = None


def _asset_rows(asset_id: str, split: str | None) -> list[dict]:
    """Rows of a speech asset's split: a DatasetDict split, or a `split` column of one Dataset."""
    from distill.assets import load_dataset

    ds = load_dataset(asset_id)
    if hasattr(ds, "keys"):  # a DatasetDict
        if split is None:
            raise DistillError(f"'asset:{asset_id}' has splits {list(ds.keys())}", "set data.split")
        if split not in ds:
            raise DistillError(f"'asset:{asset_id}' has no split '{split}'", f"use one of {list(ds.keys())}")
        return [dict(r) for r in ds[split]]
    rows = [dict(r) for r in ds]
    if split is None:
        return rows
    if "split" not in ds.column_names:
        raise DistillError(f"'asset:{asset_id}' has no train/test split (it is an evaluation set)",
                           "train on a set with a train split (asset:tts-en, asset:asterisk-en, ...)")
    chosen = [r for r in rows if r["split"] == split]
    if not chosen:
        raise DistillError(f"'asset:{asset_id}' has no rows in split '{split}'",
                           f"use one of {sorted({r['split'] for r in rows})}")
    return chosen


def _source_rows(source: str, split: str | None) -> list[dict]:
    if source.startswith("asset:"):
        return _asset_rows(source.removeprefix("asset:"), split)
    path = Path(source)
    if not path.is_file():
        raise DistillError(f"speech manifest '{source}' not found",
                           "give asset:<id> or a .jsonl file of {audio_path, text} lines")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_utterances(source: str | list[str], split: str | None, max_items: int | None,
                    noisy: bool = True, seed: int = 0) -> list[Utterance]:
    """Utterances from `asset:<id>` / JSONL manifests (columns id, audio_path, text).

    Several sources are each shuffled (seeded) and taken round-robin, so a `max_items` cap draws
    equally from every source until one runs out; one source keeps its own order.
    """
    sources = [source] if isinstance(source, str) else list(source)
    per_source: list[list[dict]] = []
    for src in sources:
        got = _source_rows(src, split)
        missing = [k for k in ("audio_path", "text") if got and k not in got[0]]
        if missing:
            raise DistillError(f"speech data '{src}' lacks columns {missing}", "provide audio_path and text")
        if not noisy:
            got = [r for r in got if not r.get("noise")]
        got = [{**r, "id": str(r.get("id", f"{src}#{i}"))} for i, r in enumerate(got)]
        if len(sources) > 1:
            got = [got[i] for i in np.random.default_rng([seed, len(per_source)]).permutation(len(got))]
        per_source.append(got)
    rows = [group[i] for i in range(max(map(len, per_source))) for group in per_source if i < len(group)]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DistillError("speech data: utterance ids repeat across sources", "give each row a unique id")
    rows = rows[:max_items] if max_items else rows
    return [Utterance(id=r["id"], audio_path=str(r["audio_path"]), text=str(r["text"]),
                      duration=r.get("duration")) for r in rows]


def load_wave(path: str) -> tuple[np.ndarray, int]:
    """-> (float32 mono audio at 16 kHz, the file's own rate). Raises on undecodable/empty files."""
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise ValueError("empty audio")
    if sr != SAMPLE_RATE:
        from distill.assets.speech import to_16k_pcm

        audio = to_16k_pcm(audio, sr)
    return np.ascontiguousarray(audio, dtype=np.float32), sr


def decode(utterances: list[Utterance], max_seconds: float):
    """-> (kept utterances, counts). Every clip is decoded once here (the audio itself is not kept:
    readers load it again per batch). Bad audio is skipped and counted, not fatal: undecodable, too
    long; resampled and digitally silent clips are kept and counted."""
    kept = []
    counts = {"decode_error": 0, "too_long": 0, "resampled": 0, "silent": 0}
    rates: dict[int, int] = {}
    for utt in utterances:
        try:
            wave, sr = load_wave(utt.audio_path)
        except Exception as exc:  # noqa: BLE001 - any decoder failure: skip and count
            counts["decode_error"] += 1
            if counts["decode_error"] <= 3:
                logger.warning("skipping %s: audio failed to decode (%s: %s)", utt.id, type(exc).__name__, exc)
            continue
        if len(wave) / SAMPLE_RATE > max_seconds:
            counts["too_long"] += 1
            continue
        if sr != SAMPLE_RATE:
            counts["resampled"] += 1
            rates[sr] = rates.get(sr, 0) + 1
        if float(np.abs(wave).max()) < SILENT_PEAK:
            counts["silent"] += 1
        utt.duration = len(wave) / SAMPLE_RATE
        kept.append(utt)
    if counts["decode_error"]:
        logger.warning("skipped %d of %d utterances whose audio failed to decode",
                       counts["decode_error"], len(utterances))
    if rates:
        logger.info("resampled to 16 kHz: %s", ", ".join(f"{n} clips at {sr} Hz" for sr, n in sorted(rates.items())))
    if not kept:
        raise DistillError("no training utterance could be decoded", "check the speech data's audio files")
    return kept, counts


PACK_GAP_S = 0.3  # silence between packed utterances: a pause, so the teacher writes a sentence break


def pack(utterances: list[Utterance], seconds: float, out_dir: Path) -> list[Utterance]:
    """Consecutive utterances concatenated (PACK_GAP_S apart) into clips of at most `seconds`,
    written once to `out_dir` as 16-kHz float WAVs -> the packed utterances, in order.

    distil-whisper's `concatenate_audio`: a student trained on short prompts only has never filled its
    window, and a short-window student is then worst on the clips that do. Greedy and in the data's
    (seeded) order, so a run and its resume pack alike; a clip already `seconds` long stays alone.
    """
    import hashlib

    import soundfile as sf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: list[list[Utterance]] = []
    for utt in utterances:
        last = groups[-1] if groups else None
        if last and sum(u.duration for u in last) + PACK_GAP_S * len(last) + utt.duration <= seconds:
            last.append(utt)
        else:
            groups.append([utt])
    packed = []
    gap = np.zeros(int(PACK_GAP_S * SAMPLE_RATE), dtype=np.float32)
    for group in groups:
        if len(group) == 1:
            packed.append(group[0])
            continue
        uid = "+".join(u.id for u in group)
        path = out_dir / f"{hashlib.sha256(uid.encode()).hexdigest()[:20]}.wav"
        if not path.is_file():  # written by temp file + rename: a killed pack leaves no torn clip
            parts = [p for u in group for p in (load_wave(u.audio_path)[0], gap)][:-1]
            tmp = path.with_suffix(".tmp.wav")
            sf.write(str(tmp), np.concatenate(parts), SAMPLE_RATE, subtype="FLOAT")
            tmp.rename(path)
        duration = sum(u.duration for u in group) + PACK_GAP_S * (len(group) - 1)
        packed.append(Utterance(id=uid, audio_path=str(path), text=" ".join(u.text.strip() for u in group),
                                duration=duration))
    return packed


# ----------------------------------------------------------------------------- the student levers
def _layer_keys(state: dict, prefix: str, keep: list[int]) -> dict:
    """Copy of `state` where layers `prefix<i>.` are renumbered to their position in `keep` (others dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in keep:
                out[f"{prefix}{keep.index(int(index))}.{rest}"] = value
        else:
            out[key] = value
    return out


def check_student_levers(where: str, stage) -> None:
    """A distill-asr stage's levers against its teacher's config.json, before anything runs (torch-free:
    `distill validate` calls it). A teacher that is not on disk yet (stage output, hub id) is checked
    when the stage builds the student."""
    from types import SimpleNamespace

    source = stage.teacher.source or ""
    if stage.student.init != "decoder_layer_map" or source.startswith("stage:"):
        return
    try:
        if source.startswith("asset:"):
            from distill.assets import asset_path

            path = Path(asset_path(source.removeprefix("asset:")))
        else:
            path = Path(source).expanduser()
    except DistillError:
        return  # not installed: the reference check names it
    if not (path / "config.json").is_file():
        return
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "whisper":
        return
    try:
        check_levers(SimpleNamespace(**cfg), stage.student.decoder_layers, stage.student.encoder_layers,
                     stage.student.window_seconds)
    except DistillError as exc:
        raise DistillError(f"{where}: {exc.problem}", exc.fix) from None


def check_levers(cfg, decoder_layers: int | None, encoder_layers: int | None, window_seconds: int | None) -> int:
    """Each lever only cuts: -> the student's encoder positions. DistillError names the bad lever."""
    for name, want, have in (("decoder_layers", decoder_layers, cfg.decoder_layers),
                             ("encoder_layers", encoder_layers, cfg.encoder_layers)):
        if want is not None and want > have:
            raise DistillError(f"student {name}={want} exceeds the teacher's {have}", f"use at most {have}")
    return window_frames(cfg, window_seconds)


def window_frames(config, window_seconds: int | None) -> int:
    """Encoder positions (20 ms each) for a window; None = the teacher's own."""
    if window_seconds is None:
        return config.max_source_positions
    teacher_seconds = config.max_source_positions // 50
    if window_seconds > teacher_seconds:
        raise DistillError(f"student window_seconds={window_seconds} exceeds the teacher's {teacher_seconds} s window",
                           f"use at most {teacher_seconds} (a window only gets shorter: the positional "
                           "table is the teacher's prefix)")
    return window_seconds * 50


def student_window_seconds(student_config, teacher_config) -> int | None:
    """The student's encoder window in seconds, read from its config (None = the teacher's): a
    student loaded as is (init: model) may have been cut by an earlier stage."""
    frames = student_config.max_source_positions
    return None if frames >= teacher_config.max_source_positions else frames // 50


def whisper_student(teacher, decoder_layers: int | None = None, encoder_layers: int | None = None,
                    window_seconds: int | None = None):
    """The teacher cut by three levers -> (student, facts). Layers are evenly spaced (first and last
    kept); the window keeps the first window_seconds*50 rows of the encoder positional table.
    Every lever left at None keeps the teacher's value, so with all None the student IS the teacher.
    """
    from transformers import WhisperForConditionalGeneration

    from distill.losses import even_layer_map

    cfg = teacher.config
    frames = check_levers(cfg, decoder_layers, encoder_layers, window_seconds)
    n_dec = decoder_layers or cfg.decoder_layers
    n_enc = encoder_layers or cfg.encoder_layers
    dec_keep, enc_keep = even_layer_map(n_dec, cfg.decoder_layers), even_layer_map(n_enc, cfg.encoder_layers)
    config = cfg.__class__.from_dict({**cfg.to_dict(), "decoder_layers": n_dec, "encoder_layers": n_enc,
                                      "max_source_positions": frames})
    student = WhisperForConditionalGeneration(config)
    state = _layer_keys(teacher.state_dict(), "model.decoder.layers.", dec_keep)
    state = _layer_keys(state, "model.encoder.layers.", enc_keep)
    state["model.encoder.embed_positions.weight"] = state["model.encoder.embed_positions.weight"][:frames].clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if [k for k in missing if k != "proj_out.weight"] or unexpected:  # proj_out is tied to the embeddings
        raise RuntimeError(f"layer copy mismatch: missing {missing}, unexpected {unexpected}")
    student.generation_config = _generation_config(teacher.generation_config, dec_keep)
    student.eval()
    return student, {"decoder_layer_map": dec_keep, "encoder_layer_map": enc_keep, "encoder_frames": frames,
                     "window_seconds": frames // 50}


def _generation_config(gen, dec_keep: list[int]):
    """The teacher's generation config; alignment heads (word timestamps) only on kept decoder layers."""
    import copy

    gen = copy.deepcopy(gen)
    heads = getattr(gen, "alignment_heads", None)
    if heads:
        gen.alignment_heads = [[dec_keep.index(layer), head] for layer, head in heads if layer in dec_keep]
    return gen


def student_processor(processor, window_seconds: int):
    """A copy of `processor` whose feature extractor pads/cuts to `window_seconds` (HF `chunk_length`)."""
    import copy

    proc = copy.deepcopy(processor)
    fe = proc.feature_extractor
    fe.chunk_length = int(window_seconds)
    fe.n_samples = fe.chunk_length * fe.sampling_rate
    fe.nb_max_frames = fe.n_samples // fe.hop_length
    return proc


def features(feature_extractor, audio: list, batch_size: int = 8) -> torch.Tensor:
    """Log-mel input features [N, n_mels, frames of the extractor's window] for 16 kHz arrays."""
    import torch

    chunks = [feature_extractor(audio[i:i + batch_size], sampling_rate=SAMPLE_RATE,
                                return_tensors="pt").input_features
              for i in range(0, len(audio), batch_size)]
    return torch.cat(chunks)


def generate_kwargs(model, language: str | None) -> dict:
    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
    return {"language": language, "task": "transcribe"} if multilingual and language else {}


def pseudo_label(teacher, encoder_states: torch.Tensor, language: str | None, max_new_tokens: int = 128,
                 prefix: list[int] | None = None) -> list[list[int]]:
    """Teacher greedy transcripts of precomputed encoder states as decoder targets: `prefix` (the
    forced tokens after the start token: language, task, no-timestamps) + text + EOS.

    generate() returns the decoder prompt or not depending on the input path (features vs encoder
    states), so leading special tokens are stripped and the prefix put back: labels always have the
    form `reference_labels` gives. Call under torch.no_grad().
    """
    from transformers.modeling_outputs import BaseModelOutput

    eos = teacher.generation_config.eos_token_id
    start = teacher.config.decoder_start_token_id
    seqs = teacher.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
                            num_beams=1, do_sample=False, max_new_tokens=max_new_tokens,
                            **generate_kwargs(teacher, language))
    out = []
    for seq in seqs.tolist():
        i = 0
        while i < len(seq) and (seq[i] >= eos or seq[i] == start) and seq[i] != eos:
            i += 1  # the decoder prompt, when generate returned it
        text = []
        for tok in seq[i:]:
            if tok == eos:
                break
            if tok < eos:  # Whisper's special and timestamp tokens all sit above EOS
                text.append(tok)
        out.append(list(prefix or []) + text + [eos])
    return out


def label_prefix(tokenizer, language: str | None) -> list[int]:
    """The forced decoder tokens after the start token (e.g. <|en|><|transcribe|><|notimestamps|>)."""
    if language:
        tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return list(tokenizer.prefix_tokens[1:])


def reference_labels(tokenizer, texts: list[str], language: str | None) -> list[list[int]]:
    """Reference transcripts as decoder targets: prefix tokens + text + EOS, minus the start token."""
    if language:
        tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return [tokenizer(" " + t.strip()).input_ids[1:] for t in texts]


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


def fits_window(utterances: list[Utterance], window_seconds: float | None) -> list[bool]:
    """Keep-mask: the utterance fits the student's encoder window (None = the teacher's, all fit).

    A longer clip reaches a cut-window student truncated while its label covers every word, so
    training on it teaches the student to say words it never heard."""
    if window_seconds is None:
        return [True] * len(utterances)
    return [u.duration is None or u.duration <= window_seconds for u in utterances]


def empty_rate(hypotheses: list[str], references: list[str]) -> tuple[int, int]:
    """(empty hypotheses, non-empty references): a teacher that says nothing to speech means silent or
    broken audio, and training on it teaches the student to say nothing."""
    pairs = [(h, r) for h, r in zip(hypotheses, references, strict=True) if r.strip()]
    return sum(1 for h, _ in pairs if not h.strip()), len(pairs)


def pad_labels(labels: list[list[int]]) -> torch.Tensor:
    """[N, L] LongTensor padded with -100 (ignored by losses)."""
    import torch

    width = max(len(seq) for seq in labels)
    out = torch.full((len(labels), width), -100, dtype=torch.long)
    for i, seq in enumerate(labels):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out
