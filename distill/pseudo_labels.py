"""Teacher transcripts for speech distillation: cached on disk, resumable, filtered per language.

Layout of a cache directory:
  meta.json      who wrote the labels (teacher hash, language, prompt context, decode bound)
  labels.jsonl   one {"id", "text"} line per utterance, appended batch by batch

A killed labelling run resumes at the first utterance without a line. A cache written by another
teacher or prompt is refused, never reused: its transcripts would teach the wrong model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from distill.artifacts import write_json_atomic
from distill.errors import DistillError

logger = logging.getLogger(__name__)

META, LABELS = "meta.json", "labels.jsonl"
# Scripts written without spaces are compared by characters; Mandarin also folds Traditional
# script into Simplified (the same word in the other script is not an error).
CHARACTER_LANGUAGES = {"zh": "mandarin", "yue": "basic", "ja": "basic", "th": "basic"}


def fill(root: str | Path, meta: dict, ids: list[str], transcribe: Callable[[list[int]], list[str]],
         batch_size: int) -> dict[str, str]:
    """Labels for every id: read the cache, transcribe the missing ones in batches (appending each
    batch at once), return id -> text. transcribe(positions in `ids`) -> texts."""
    from tqdm.auto import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if (root / META).is_file():
        old = json.loads((root / META).read_text())
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise DistillError(f"pseudo-label cache '{root}' was written with other {', '.join(diff)}",
                               "point labels_dir elsewhere or delete that directory")
    else:
        write_json_atomic(root / META, meta)
    done: dict[str, str] = {}
    path = root / LABELS
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that utterance is labelled again
                continue
            done[row["id"]] = row["text"]
    todo = [i for i, uid in enumerate(ids) if uid not in done]
    if done:
        logger.info("pseudo-labels: %d cached in %s, %d to go", len(ids) - len(todo), root, len(todo))
    with open(path, "a") as f:
        for start in tqdm(range(0, len(todo), batch_size), desc="pseudo-label", unit="batch"):
            batch = todo[start:start + batch_size]
            for i, text in zip(batch, transcribe(batch), strict=True):
                done[ids[i]] = text
                f.write(json.dumps({"id": ids[i], "text": text}, ensure_ascii=False) + "\n")
            f.flush()
    return {uid: done[uid] for uid in ids}


def keep_mask(hypotheses: list[str], references: list[str], threshold: float | None,
              language: str) -> tuple[list[bool], list[float | None]]:
    """(keep, error rate) per utterance: normalised WER, or CER for zh/yue/ja/th, of the
    pseudo-label against the reference; kept when <= threshold (None: any rate). Empty labels and
    empty references are never kept."""
    from distill.evaluation.metrics import char_errors, utterance_errors

    chars = CHARACTER_LANGUAGES.get(language)
    normalizer = chars or ("english" if language == "en" else "basic")
    keep, rates = [], []
    for hyp, ref in zip(hypotheses, references, strict=True):
        if chars:
            e = char_errors(hyp, ref, normalizer)
            errors, size = e["char_errors"], e["ref_chars"]
        else:
            e = utterance_errors(hyp, ref, normalizer)
            errors, size = e["errors"], e["ref_words"]
        rate = None if errors is None else errors / size
        rates.append(rate)
        # An empty label for non-empty speech is always dropped: training on empty transcripts is
        # how small-data ASR distillation collapses (distil-whisper #104).
        keep.append(rate is not None and bool(hyp.strip()) and (threshold is None or rate <= threshold))
    return keep, rates
