"""Teacher outputs for speech distillation, computed once into resumable shards and streamed back.

The teacher's 30-s encoder pass is most of its cost, so it runs once per utterance, never per step:

  <root>/meta.json                 teacher sha256, data sha256, language, top_k, shard size, frames
  <root>/shard-00000.safetensors   labels [n, L] int32 (pseudo-label ids, -100 padded),
                                   topk_ids [n, L, k] int32 + topk_logp [n, L, k] fp16 (the teacher's
                                   log-probs along the label, teacher-forced: what KD needs),
                                   enc [n, frames, d] fp16 (its encoder output: the frozen full-window
                                   student's encoder states and the target of encoder-output KD)
  <root>/shard-00000.json          ids, pseudo-label texts, references of those rows
  <root>/window-<frames>/          the same rows encoded by the teacher's encoder cut to a shorter
                                   window (the frozen encoder of a shorter-window student)
  summary.json (in each)           written when every shard exists

Shards are written through a temp file + rename, so a killed fill resumes at the first missing
shard. Readers memory-map shards (safetensors) and copy out only the rows of a batch. A cache whose
teacher hash or data hash differs is refused, never reused: another teacher's labels would teach
the wrong transcripts. Disk: ~1.5 MB per utterance for 30-s whisper-base states (fp16).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from distill import speech
from distill.artifacts import write_json_atomic
from distill.errors import DistillError

logger = logging.getLogger(__name__)

META, SUMMARY = "meta.json", "summary.json"
FORMAT_VERSION = 2  # 2: pseudo-labels carry the forced prefix and their first text token
MIN_ITEMS_FOR_EMPTY_CHECK = 16  # the empty-label rate is judged once this many references are seen


def data_hash(utterances: list[speech.Utterance], **settings) -> str:
    """sha256 over ids, references, audio file sizes and the labelling settings."""
    rows = [(u.id, u.text, os.path.getsize(u.audio_path)) for u in utterances]
    return hashlib.sha256(json.dumps([rows, settings], sort_keys=True).encode()).hexdigest()


def _shard(root: Path, index: int, suffix: str = ".safetensors") -> Path:
    return root / f"shard-{index:05d}{suffix}"


def _open_meta(root: Path, meta: dict) -> None:
    """Create meta.json, or refuse a directory written for another teacher / other data."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / META).is_file():
        write_json_atomic(root / META, meta)
        return
    old = json.loads((root / META).read_text())
    for key, what in (("teacher_sha256", "teacher"), ("data_sha256", "training data"),
                      ("format_version", "cache format"), ("top_k", "top_k"),
                      ("shard_items", "shard size"), ("frames", "encoder window")):
        if old.get(key) != meta.get(key):
            raise DistillError(f"speech cache '{root}' was written for a different {what} "
                               f"({key} {str(old.get(key))[:16]} vs now {str(meta.get(key))[:16]})",
                               "delete that cache directory or set cache.dir to a new one")


def _batches(todo: list[int], n: int, shard_items: int):
    for shard in todo:
        yield shard, range(shard * shard_items, min(n, (shard + 1) * shard_items))


def _audio(utts: list[speech.Utterance]) -> list:
    return [speech.load_wave(u.audio_path)[0] for u in utts]


def _check_empty(root: Path, n_shards: int, max_empty_rate: float) -> dict:
    """Stop when the teacher's labels are empty for too many non-empty references."""
    empty = total = 0
    for s in range(n_shards):
        side = _shard(root, s, ".json")
        if side.is_file():
            rows = json.loads(side.read_text())
            e, t = speech.empty_rate(rows["hyps"], rows["refs"])
            empty, total = empty + e, total + t
    if total >= MIN_ITEMS_FOR_EMPTY_CHECK and empty / total > max_empty_rate:
        raise DistillError(
            f"the teacher's pseudo-labels are empty for {empty} of {total} utterances with a reference "
            f"({empty / total:.0%} > max_empty_rate {max_empty_rate:.0%}): the audio is silent or broken, "
            "and training on it would teach the student to output nothing",
            f"check the audio files (the cache at '{root}' names the rows), or raise max_empty_rate")
    return {"empty_labels": empty, "labelled_with_reference": total}


@torch.no_grad()
def fill(root: Path, teacher, processor, utts: list[speech.Utterance], *, teacher_sha: str,
         language: str | None, pseudo: bool = True, top_k: int = 32, shard_items: int = 64,
         batch_size: int = 8, max_empty_rate: float = 1.0, max_new_tokens: int = 128) -> dict:
    """Write (or finish) the teacher cache of `utts` in `root`. -> summary dict."""
    from tqdm.auto import tqdm
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    root = Path(root)
    frames = teacher.config.max_source_positions
    meta = {"format_version": FORMAT_VERSION, "teacher_sha256": teacher_sha, "top_k": top_k,
            "shard_items": shard_items, "frames": frames, "n_items": len(utts),
            "d_model": teacher.config.d_model, "language": language, "pseudo_label": pseudo,
            "data_sha256": data_hash(utts, language=language, pseudo=pseudo, max_new_tokens=max_new_tokens,
                                     format=FORMAT_VERSION)}
    _open_meta(root, meta)
    n_shards = -(-len(utts) // shard_items)
    if (root / SUMMARY).is_file():
        return json.loads((root / SUMMARY).read_text())
    todo = [s for s in range(n_shards) if not _shard(root, s).is_file()]
    if len(todo) < n_shards:
        logger.info("speech cache: %d of %d shards already written, resuming", n_shards - len(todo), n_shards)
    _check_empty(root, n_shards, max_empty_rate)
    prefix = speech.label_prefix(processor.tokenizer, language) if pseudo else None
    gen = teacher.generation_config
    pad = gen.pad_token_id if gen.pad_token_id is not None else teacher.config.pad_token_id
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(r) for _, r in _batches(todo, len(utts), shard_items)),
               desc="teacher labels + encoder states", unit="utt")
    for shard, rows in _batches(todo, len(utts), shard_items):
        labels, encs, hyps = [], [], []
        for b in range(rows.start, rows.stop, batch_size):
            chunk = utts[b: min(rows.stop, b + batch_size)]
            feats = speech.features(processor.feature_extractor, _audio(chunk))
            enc = teacher.model.encoder(feats).last_hidden_state
            if pseudo:
                ids = speech.pseudo_label(teacher, enc, language, max_new_tokens, prefix)
            else:
                ids = speech.reference_labels(processor.tokenizer, [u.text for u in chunk], language)
            labels.extend(ids)
            hyps.extend(processor.tokenizer.batch_decode(ids, skip_special_tokens=True))
            encs.append(enc.half())
            bar.update(len(chunk))
        y = speech.pad_labels(labels)
        enc = torch.cat(encs)
        top_ids, top_logp = [], []
        for b in range(0, len(y), batch_size):
            dec_in = shift_tokens_right(y[b:b + batch_size], pad, teacher.config.decoder_start_token_id)
            logits = teacher(encoder_outputs=(enc[b:b + batch_size].float(),), decoder_input_ids=dec_in).logits
            values, indices = torch.log_softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
            top_ids.append(indices.to(torch.int32))
            top_logp.append(values.half())
        tmp = _shard(root, shard, ".tmp")
        save_file({"labels": y.to(torch.int32), "topk_ids": torch.cat(top_ids), "topk_logp": torch.cat(top_logp),
                   "enc": enc.contiguous()}, str(tmp))
        write_json_atomic(_shard(root, shard, ".json"), {"ids": [utts[i].id for i in rows], "hyps": hyps,
                                                         "refs": [utts[i].text for i in rows]})
        tmp.rename(_shard(root, shard))
        _check_empty(root, n_shards, max_empty_rate)
    bar.close()
    return _finish(root, n_shards, t0, _check_empty(root, n_shards, max_empty_rate))


@torch.no_grad()
def fill_window(root: Path, teacher, processor, utts: list[speech.Utterance], window_seconds: int, *,
                teacher_sha: str, shard_items: int = 64, batch_size: int = 8) -> dict:
    """Encoder states of the teacher's encoder cut to `window_seconds` in `root/window-<frames>`
    (same rows and shards as `root`). -> summary dict."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    cut, facts = speech.whisper_student(teacher, window_seconds=window_seconds)
    frames = facts["encoder_frames"]
    parent = json.loads((Path(root) / META).read_text())
    view = Path(root) / f"window-{frames}"
    meta = {**parent, "frames": frames, "teacher_sha256": teacher_sha}
    if parent["teacher_sha256"] != teacher_sha:
        raise DistillError(f"speech cache '{root}' comes from a different teacher",
                           "delete it or set cache.dir to a new directory")
    _open_meta(view, meta)
    if (view / SUMMARY).is_file():
        return json.loads((view / SUMMARY).read_text())
    fe = speech.student_processor(processor, window_seconds).feature_extractor
    n_shards = -(-len(utts) // shard_items)
    todo = [s for s in range(n_shards) if not _shard(view, s).is_file()]
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(r) for _, r in _batches(todo, len(utts), shard_items)),
               desc=f"encoder states, {window_seconds}-s window", unit="utt")
    for shard, rows in _batches(todo, len(utts), shard_items):
        encs = []
        for b in range(rows.start, rows.stop, batch_size):
            chunk = utts[b: min(rows.stop, b + batch_size)]
            encs.append(cut.model.encoder(speech.features(fe, _audio(chunk))).last_hidden_state.half())
            bar.update(len(chunk))
        tmp = _shard(view, shard, ".tmp")
        save_file({"enc": torch.cat(encs).contiguous()}, str(tmp))
        tmp.rename(_shard(view, shard))
    bar.close()
    return _finish(view, n_shards, t0, {})


def _finish(root: Path, n_shards: int, t0: float, extra: dict) -> dict:
    size = sum(_shard(root, s).stat().st_size for s in range(n_shards))
    meta = json.loads((root / META).read_text())
    summary = {"shards": n_shards, "items": meta["n_items"], "bytes": size,
               "bytes_per_item": round(size / max(1, meta["n_items"])), "fill_seconds": round(time.perf_counter() - t0, 1),
               **extra}
    write_json_atomic(root / SUMMARY, summary)
    logger.info("speech cache %s: %d items, %.1f MB (%.2f MB/utterance)", root, summary["items"], size / 2**20,
                summary["bytes_per_item"] / 2**20)
    return summary


class SpeechCache:
    """Rows of a finished cache (or one of its window views), read by item index from memory-mapped shards."""

    def __init__(self, root: Path, expect_teacher: str):
        self.root = Path(root)
        if not (self.root / SUMMARY).is_file():
            raise DistillError(f"speech cache '{self.root}' is incomplete (no {SUMMARY})",
                               "re-run the stage: filling resumes at the first missing shard")
        self.meta = json.loads((self.root / META).read_text())
        if self.meta["teacher_sha256"] != expect_teacher:
            raise DistillError(f"speech cache '{self.root}' comes from a different teacher",
                               "delete it or set cache.dir to a new directory")
        self._open: dict[int, object] = {}

    def _file(self, index: int):
        from safetensors import safe_open

        if index not in self._open:
            self._open[index] = safe_open(str(_shard(self.root, index)), framework="pt")
        return self._open[index]

    def side(self) -> dict[str, list]:
        """ids, hyps, refs of every row, in order (small: text only)."""
        out: dict[str, list] = {"ids": [], "hyps": [], "refs": []}
        for s in range(-(-self.meta["n_items"] // self.meta["shard_items"])):
            rows = json.loads(_shard(self.root, s, ".json").read_text())
            for key in out:
                out[key].extend(rows[key])
        return out

    def get(self, name: str, rows: list[int], pad: int = 0) -> torch.Tensor:
        """Tensor `name` of items `rows`, stacked (ragged label widths padded with `pad`)."""
        size = self.meta["shard_items"]
        parts = [self._file(r // size).get_slice(name)[r % size: r % size + 1] for r in rows]
        if parts[0].dim() >= 2 and len({p.shape[1] for p in parts}) > 1:
            width = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, [0, 0] * (p.dim() - 2) + [0, width - p.shape[1]], value=pad)
                     for p in parts]
        return torch.cat(parts)
