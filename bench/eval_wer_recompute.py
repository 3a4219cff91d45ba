"""Recompute every ASR record's WER from its raw samples with jiwer alone, and compare.

Independent of distill.evaluation.metrics: the normaliser is built here straight from transformers
and the committed spelling map, empty references are dropped here, and jiwer pools the errors.

    python bench/eval_wer_recompute.py [--results results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jiwer
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results"


def recompute(results: Path) -> list[dict]:
    english = EnglishTextNormalizer(json.loads((ROOT / "eval/data/whisper_english_spelling.json").read_text()))
    basic = BasicTextNormalizer()
    rows = []
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text())
        samples = [json.loads(x) for x in (results / record["samples"]).read_text().splitlines() if x]
        for m in record["metrics"]:
            if m["metric"] not in ("wer", "cer"):
                continue
            norm = english if m["extra"].get("normalizer") == "english" else basic
            pairs = [(norm(s["reference"]), norm(s["prediction"])) for s in samples
                     if s["task"] == m["task"] and "prediction" in s]
            pairs = [(r, h) for r, h in pairs if r.strip()]
            if m["metric"] == "wer":
                value = jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])
            else:
                value = jiwer.cer([r.replace(" ", "") for r, _ in pairs], [h.replace(" ", "") for _, h in pairs])
            rows.append({"artifact": record["artifact_id"], "task": m["task"], "metric": m["metric"],
                         "record": m["value"], "recomputed": value, "n": len(pairs),
                         "equal": abs(value - m["value"]) < 1e-12})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    rows = recompute(args.results)
    lines = ["# WER/CER recomputed from raw samples with jiwer only", "",
             "Command: `python bench/eval_wer_recompute.py`", "",
             "| artifact | task | metric | record | recomputed | n | equal |", "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['artifact']}` | {r['task']} | {r['metric']} | {r['record']:.6f} | {r['recomputed']:.6f} "
              f"| {r['n']} | {r['equal']} |" for r in rows]
    OUT.mkdir(exist_ok=True)
    (OUT / "eval_wer_recompute.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not all(r["equal"] for r in rows):
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()
