"""Pure metric functions: ASR error rates, multiple-choice accuracy, perplexity.

Everything here takes plain Python values (raw strings, log-likelihood lists, NLL sums) so a
metric can be recomputed from a record's per-sample JSONL without the model. Normalisation happens
here, at scoring time; stored predictions stay raw.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from distill.errors import DistillError
from distill.evaluation.tasks import EVAL_DIR

# OpenAI Whisper's British->American spelling map (MIT, from openai-whisper), shipped with the
# tasks so WER does not depend on whether a model directory happens to carry normalizer.json.
SPELLING_FILE = EVAL_DIR / "data" / "whisper_english_spelling.json"


@lru_cache(maxsize=2)
def _english_normalizer(spelling_file: str):
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(json.loads(Path(spelling_file).read_text()))


@lru_cache(maxsize=1)
def _basic_normalizer():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


@lru_cache(maxsize=1)
def _traditional_to_simplified():
    import opencc

    return opencc.OpenCC("t2s")


NORMALIZERS = ("english", "basic", "mandarin")


def normalize(text: str, kind: str) -> str:
    """'english': Whisper EnglishTextNormalizer (+ spelling map); 'basic': any language;
    'mandarin': Traditional -> Simplified script (OpenCC t2s), then 'basic'.

    Whisper writes Mandarin in either script, unpredictably per utterance; the same word in the
    other script is not a recognition error, so CER against Simplified references converts first.
    """
    if kind == "english":
        return _english_normalizer(str(SPELLING_FILE))(text)
    if kind == "basic":
        return _basic_normalizer()(text)
    if kind == "mandarin":
        return _basic_normalizer()(_traditional_to_simplified().convert(text))
    raise DistillError(f"unknown normalizer '{kind}'", f"use one of {', '.join(NORMALIZERS)}")


def _chars(text: str) -> str:
    # CER over characters without spaces: Mandarin has no spaces, and for English the spaces
    # are already counted by WER.
    return " ".join(text.replace(" ", ""))


def asr_scores(predictions: list[str], references: list[str], normalizer: str = "english") -> dict:
    """WER/CER of raw predictions vs raw references.

    predictions, references: [n] raw strings. References that normalise to empty are dropped
    (WER is undefined on them) and counted in `n_empty_refs`. Returns wer (normalised),
    wer_ortho (raw text), cer (normalised, spaces removed), substitutions/insertions/deletions
    (normalised words), n (utterances scored), n_ref_words.
    """
    import jiwer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    hyp_n = [normalize(p, normalizer) for p in predictions]
    ref_n = [normalize(r, normalizer) for r in references]
    keep = [i for i, r in enumerate(ref_n) if r.strip()]
    if not keep:
        raise DistillError("every reference normalises to empty text", "check the dataset's text column")
    hyp_k, ref_k = [hyp_n[i] for i in keep], [ref_n[i] for i in keep]
    words = jiwer.process_words(ref_k, hyp_k)
    chars = jiwer.process_words([_chars(r) for r in ref_k], [_chars(h) for h in hyp_k])
    raw_ref = [references[i].strip() for i in keep]
    raw_hyp = [predictions[i].strip() for i in keep]
    ortho_ok = [i for i, r in enumerate(raw_ref) if r]
    ortho = jiwer.wer([raw_ref[i] for i in ortho_ok], [raw_hyp[i] for i in ortho_ok])
    n_ref = words.hits + words.substitutions + words.deletions
    return {
        "wer": words.wer, "wer_ortho": ortho, "cer": chars.wer,
        "substitutions": words.substitutions, "insertions": words.insertions,
        "deletions": words.deletions, "n": len(keep), "n_ref_words": n_ref,
        "n_empty_refs": len(references) - len(keep),
    }


def utterance_errors(prediction: str, reference: str, normalizer: str = "english") -> dict:
    """Per-item word errors after normalisation (for the samples file; WER is pooled, not averaged)."""
    import jiwer

    ref, hyp = normalize(reference, normalizer), normalize(prediction, normalizer)
    if not ref.strip():
        return {"errors": None, "ref_words": 0}
    out = jiwer.process_words(ref, hyp)
    return {"errors": out.substitutions + out.deletions + out.insertions,
            "ref_words": out.hits + out.substitutions + out.deletions}


def char_errors(prediction: str, reference: str, normalizer: str = "english") -> dict:
    """Per-item character errors (spaces removed) after normalisation, for CER tasks' samples."""
    import jiwer

    ref, hyp = _chars(normalize(reference, normalizer)), _chars(normalize(prediction, normalizer))
    if not ref.strip():
        return {"char_errors": None, "ref_chars": 0}
    out = jiwer.process_words(ref, hyp)
    return {"char_errors": out.substitutions + out.deletions + out.insertions,
            "ref_chars": out.hits + out.substitutions + out.deletions}


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\u3040" <= ch <= "\u30ff"


def _units(text: str) -> list[str]:
    """Characters for text with CJK script (no word spaces), else words."""
    if any(_is_cjk(ch) for ch in text):
        return [ch for ch in text if not ch.isspace()]
    return text.split()


def longest_repeat(units: list[str], max_ngram: int = 16) -> int:
    """Most back-to-back copies of any n-gram (n <= max_ngram) in `units`; 1 = nothing repeats.
    16 words: a Whisper loop often repeats a whole prompt sentence, not a word."""
    best = 1
    size = len(units)
    for n in range(1, max_ngram + 1):
        for start in range(0, size - 2 * n + 1):
            gram = units[start: start + n]
            count, pos = 1, start + n
            while pos + n <= size and units[pos: pos + n] == gram:
                count, pos = count + 1, pos + n
            best = max(best, count)
    return best


# Greedy decoding that falls into a loop repeats one token or phrase until max_new_tokens; four
# back-to-back copies where the reference has fewer is that failure, not a hard word.
LOOP_REPEATS = 4


def repetition_loop(prediction: str, reference: str, normalizer: str = "english",
                    min_repeats: int = LOOP_REPEATS) -> bool:
    """True when the prediction repeats an n-gram >= min_repeats times back to back and the
    reference does not (a decoding loop). Both texts are normalised first."""
    hyp = longest_repeat(_units(normalize(prediction, normalizer)))
    return hyp >= min_repeats and longest_repeat(_units(normalize(reference, normalizer))) < min_repeats


def asr_task_scores(predictions: list[str], references: list[str], normalizer: str,
                    wanted: list[str]) -> tuple[list[dict], list[dict]]:
    """An ASR task's metrics and per-utterance scoring fields, from raw text only.

    -> (metric dicts {metric, value, stderr, n, higher_is_better, extra}, per-item dicts in input
    order). The one scoring path of `distill eval` and of re-scoring stored samples. Utterances
    caught in a repetition loop are flagged per item and counted (`n_repetition_loops`); the
    extra `<metric>_without_loops` separates loops from ordinary errors.
    """
    unknown = [m for m in wanted if m not in ("wer", "wer_ortho", "cer")]
    if unknown:
        raise DistillError(f"unknown ASR metric '{unknown[0]}'", "use wer, wer_ortho or cer")
    scores = asr_scores(predictions, references, normalizer)
    per_item = []
    for pred, ref in zip(predictions, references):
        row = utterance_errors(pred, ref, normalizer)
        if "cer" in wanted:
            row.update(char_errors(pred, ref, normalizer))
        row["repetition_loop"] = repetition_loop(pred, ref, normalizer)
        per_item.append(row)
    loops = [i for i, row in enumerate(per_item) if row["repetition_loop"]]
    extra = {k: scores[k] for k in ("substitutions", "insertions", "deletions", "n_ref_words",
                                    "n_empty_refs")}
    extra.update(normalizer=normalizer, n_repetition_loops=len(loops))
    clean = [i for i in range(len(predictions)) if i not in set(loops)]
    if loops and clean:
        try:
            rest = asr_scores([predictions[i] for i in clean], [references[i] for i in clean], normalizer)
            extra.update({f"{m}_without_loops": rest[m] for m in wanted})
        except DistillError:  # every remaining reference normalises to empty
            pass
    found = [{"metric": name, "value": scores[name], "stderr": None, "n": scores["n"],
              "higher_is_better": False, "extra": dict(extra)} for name in wanted]
    return found, per_item


def mean_stderr(values: list[float]) -> float:
    """Standard error of the mean with the n-1 sample deviation, as lm-eval reports it."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def argmax_first(values: list[float]) -> int:
    """Index of the largest value, first on ties (numpy.argmax's rule, which lm-eval uses)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def choice_accuracy(loglikelihoods: list[list[float]], gold: list[int],
                    groups: list[str] | None = None) -> dict:
    """Multiple-choice accuracy from per-choice log-likelihoods.

    loglikelihoods: [n][n_choices]; gold: [n] indices; groups: [n] (e.g. MMLU subject).
    acc = micro (every item weighs the same, = lm-eval's size-weighted group mean);
    acc_macro = unweighted mean over groups; stderrs alongside.
    """
    if not gold:
        raise DistillError("no items to score", "check the task's dataset and --limit")
    correct = [float(argmax_first(ll) == g) for ll, g in zip(loglikelihoods, gold)]
    out = {"acc": sum(correct) / len(correct), "acc_stderr": mean_stderr(correct), "n": len(correct)}
    by_group: dict[str, list[float]] = defaultdict(list)
    for c, g in zip(correct, groups or ["all"] * len(correct)):
        by_group[g].append(c)
    accs = [sum(v) / len(v) for v in by_group.values()]
    ses = [mean_stderr(v) for v in by_group.values()]
    out["acc_macro"] = sum(accs) / len(accs)
    out["acc_macro_stderr"] = (math.sqrt(sum(s * s for s in ses)) / len(ses)
                               if all(not math.isnan(s) for s in ses) else float("nan"))
    out["n_groups"] = len(accs)
    return out


def perplexity(nll_sum: float, n_tokens: int, n_bytes: int) -> dict:
    """Token-level perplexity exp(NLL/token) and bits per UTF-8 byte (comparable across tokenizers).

    nll_sum: natural-log NLL summed over the n_tokens predicted tokens of text with n_bytes bytes.
    """
    if n_tokens < 1 or n_bytes < 1:
        raise DistillError("no tokens to score for perplexity", "use longer held-out text")
    return {"perplexity": math.exp(nll_sum / n_tokens), "bits_per_byte": nll_sum / n_bytes / math.log(2),
            "n_tokens": n_tokens, "n_bytes": n_bytes}
