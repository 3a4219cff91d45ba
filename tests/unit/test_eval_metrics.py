"""Metric functions against independent references (jiwer called directly, hand computations)."""

from __future__ import annotations

import json
import math
import statistics

import jiwer
import numpy as np
import pytest
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

from distill.errors import DistillError
from distill.evaluation import metrics
from distill.evaluation.throughput import percentile, rtfx

REFS = ["Hello world, this is a test.", "The colour of the sky is grey.", "Mister Smith paid $20.",
        "  ", "One two three four"]
HYPS = ["hello world this is test", "the color of the sky is gray", "Mr. Smith paid twenty dollars",
        "noise", "one two tree four five"]


def _english():
    return EnglishTextNormalizer(json.loads(metrics.SPELLING_FILE.read_text()))


def test_wer_matches_jiwer_on_normalised_text_and_drops_empty_references():
    norm = _english()
    keep = [i for i, r in enumerate(REFS) if norm(r).strip()]
    ref = [norm(REFS[i]) for i in keep]
    hyp = [norm(HYPS[i]) for i in keep]
    out = metrics.asr_scores(HYPS, REFS, "english")
    expected = jiwer.process_words(ref, hyp)
    assert out["wer"] == pytest.approx(expected.wer)
    assert (out["substitutions"], out["insertions"], out["deletions"]) == (
        expected.substitutions, expected.insertions, expected.deletions)
    assert out["n"] == 4 and out["n_empty_refs"] == 1
    assert out["wer_ortho"] == pytest.approx(jiwer.wer([REFS[i].strip() for i in keep],
                                                       [HYPS[i].strip() for i in keep]))
    # British spelling and "Mr." are normalised away: those two utterances are error-free.
    assert metrics.utterance_errors(HYPS[1], REFS[1])["errors"] == 0


def test_cer_counts_characters_without_spaces():
    out = metrics.asr_scores(["今天天气好"], ["今天 天气 很好"], "basic")
    # reference chars 今天天气很好 (6), hypothesis drops 很: one deletion.
    assert out["cer"] == pytest.approx(1 / 6)
    assert BasicTextNormalizer()("Hello, World!").strip() == "hello world"


def test_all_empty_references_is_a_clear_error():
    with pytest.raises(DistillError, match="empty"):
        metrics.asr_scores(["a"], [" , "], "english")


def test_choice_accuracy_micro_macro_and_stderr_by_hand():
    lls = [[-1, -2, -3, -4], [-2, -1, -3, -4], [-1, -1, -3, -4], [-4, -3, -2, -1], [-1, -2, -3, -4]]
    gold = [0, 0, 1, 3, 2]
    groups = ["a", "a", "a", "b", "b"]
    out = metrics.choice_accuracy(lls, gold, groups)
    correct = [1, 0, 0, 1, 0]  # tie in item 2 goes to the first index (numpy argmax), gold is 1
    assert out["acc"] == pytest.approx(2 / 5)
    assert out["acc_stderr"] == pytest.approx(statistics.stdev(correct) / math.sqrt(5))
    assert out["acc_macro"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert metrics.argmax_first([-1.0, -1.0]) == int(np.argmax([-1.0, -1.0]))


def test_perplexity_and_bits_per_byte():
    out = metrics.perplexity(nll_sum=10.0, n_tokens=4, n_bytes=8)
    assert out["perplexity"] == pytest.approx(math.exp(2.5))
    assert out["bits_per_byte"] == pytest.approx(10.0 / 8 / math.log(2))


def test_percentile_matches_numpy_and_rtfx():
    xs = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q in (0, 50, 95, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert rtfx(30.0, 3.0) == pytest.approx(10.0)


def test_pareto_frontier_by_hand():
    from distill.evaluation.report import pareto

    # (size MB, WER): smaller and lower are better. (3, 0.2) is beaten by (2, 0.1).
    pts = [(1.0, 0.3), (2.0, 0.1), (3.0, 0.2), (4.0, 0.05)]
    assert pareto(pts, x_higher=False, y_higher=False) == [0, 1, 3]
    # (speed, acc): both higher is better.
    assert pareto([(10, 0.5), (20, 0.4), (5, 0.6), (8, 0.45)], x_higher=True, y_higher=True) == [0, 1, 2]
