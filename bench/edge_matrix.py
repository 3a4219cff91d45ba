"""The compression matrix of an edge results folder (results/whisper-base-edge, results/smollm2-compress):
one row per format, from the records only, appended to the folder's `distill report` README.

Per source model (the direct parent of each artifact): size and how much smaller, the parity gate the export/quantize
stage ran (input -> output on its held-out items, drift, tolerance, passed/failed), quality (ASR: WER
pooled over the real held-out speech asterisk-en + librivox-5 + cards-5, and over synthetic tts-en
clean + noisy, errors / reference words summed; LM: held-out perplexity, mmlu-mini 0/5-shot), speed
(ASR: RTFx at batch 1 and batch 8; LM: prefill and decode tokens/s at batch 1) with its ratio to
the source measured by the same suite, and peak RSS. Every cell is read from a record; rerun this
after any new record (a recipe run rewrites the README).

    python bench/edge_matrix.py results/whisper-base-edge
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill.gate import PERCENT_METRICS

REAL = ("asterisk-en", "librivox-5", "cards-5")
SYNTHETIC = ("tts-en-clean", "tts-en-noisy")
TITLE = "## Format matrix"


def records(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*.json"))]


def pooled_wer(record: dict, tasks: tuple[str, ...]) -> tuple[float, int] | None:
    """(errors / reference words, words) summed over `tasks`; None when the record has none of them."""
    errors = words = 0
    for m in record["metrics"]:
        if m["metric"] == "wer" and m["task"] in tasks:
            e = m["extra"]
            errors += e["substitutions"] + e["insertions"] + e["deletions"]
            words += e["n_ref_words"]
    return (errors / words, words) if words else None


def metric(record: dict, task: str, name: str) -> float | None:
    return next((m["value"] for m in record["metrics"] if m["task"] == task and m["metric"] == name), None)


def speed(record: dict, kind: str, batch: int | None = None) -> dict | None:
    """The record's throughput entry of `kind` (at `batch`, when given); of several suites that
    measured it, the one run last."""
    found = [t for t in record.get("throughput", []) if t["kind"] == kind
             and (batch is None or t["conditions"].get("batch_size") == batch)]
    created = {name: s.get("created", "") for name, s in (record.get("suites") or {}).items()}
    return max(found, key=lambda t: created.get(t.get("suite"), ""), default=None)


def peak_rss(record: dict) -> float | None:
    peaks = [t["value"] for t in record.get("throughput", []) if t["kind"] == "peak_rss_bytes"]
    return min(peaks) if peaks else None  # the suite least disturbed by what loaded before it


def runtime(record: dict) -> str:
    """What the artifact runs as: backend and dtype, as the harness measured it."""
    t = next((t for t in record.get("throughput", []) if "backend" in t.get("conditions", {})), None)
    if t is None:
        return record["kind"]
    return f"{t['conditions']['backend']} {t['conditions'].get('dtype', '')}".strip()


def gate_cell(record: dict) -> str:
    g = record.get("gate")
    if not g:
        return "-"
    scale = 100 if g["metric"] in PERCENT_METRICS else 1
    unit = " pts" if g["unit"] == "abs" and scale == 100 else (" %" if g["unit"] == "rel" else "")
    return (f"{g['source']['value'] * scale:.2f} -> {g['result']['value'] * scale:.2f} "
            f"({g['drift']:+.2f}{unit}, tol {g['tolerance']:g}) **{g['status']}**")


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def speed_ratio(entry: dict | None, base: dict | None) -> str:
    """Speed ratio of two throughput entries, only when the same CPU model measured both: records of
    one folder can come from different machines, and a ratio across them says nothing."""
    if not entry or not base:
        return "-"
    cpu, base_cpu = (e["conditions"].get("device_name") for e in (entry, base))
    return _ratio(entry["value"], base["value"]) if cpu == base_cpu else "other CPU"


def cpu_name(record: dict) -> str:
    """The CPU model the record's speeds were measured on (as the harness read it)."""
    names = {t["conditions"].get("device_name") for t in record.get("throughput", [])} - {None}
    return ", ".join(sorted(names)) or "-"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def asr_rows(family: list[dict], base: dict) -> list[str]:
    lines = ["| artifact | runs as | size MB | x smaller | gate: WER on its items | WER real (words) | "
             "WER synthetic (words) | RTFx b1 | vs source | RTFx b8 | vs source | peak RSS GB | CPU |",
             "|" + "---|" * 13]
    b1, b8 = (speed(base, "asr_rtfx", b) for b in (1, 8))
    for r in [base] + sorted(family, key=lambda r: r["artifact_id"]):
        real, synth = pooled_wer(r, REAL), pooled_wer(r, SYNTHETIC)
        s1, s8 = speed(r, "asr_rtfx", 1), speed(r, "asr_rtfx", 8)
        v1, v8 = (s["value"] if s else None for s in (s1, s8))
        rss = peak_rss(r)
        lines.append(
            f"| `{r['artifact_id'].rsplit('/', 1)[-1]}` | {runtime(r)} | {r['size_bytes'] / 1e6:.1f} | "
            f"{_ratio(base['size_bytes'], r['size_bytes'])} | {gate_cell(r)} | "
            + " | ".join("-" if w is None else f"{100 * w[0]:.2f} ({w[1]})" for w in (real, synth))
            + f" | {_num(v1)} | {speed_ratio(s1, b1)} | {_num(v8)} | "
            f"{speed_ratio(s8, b8)} | {_num(rss and rss / 1e9)} | {cpu_name(r)} |")
    return lines


def lm_rows(family: list[dict], base: dict) -> list[str]:
    lines = ["| artifact | runs as | size MB | x smaller | gate | perplexity | vs source | mmlu-mini 0-shot | "
             "5-shot | prefill tok/s | decode tok/s | vs source | peak RSS GB | CPU |", "|" + "---|" * 14]
    base_ppl = metric(base, "text-en-ppl", "perplexity")
    base_dec = speed(base, "lm_decode_tok_s")
    for r in [base] + sorted(family, key=lambda r: r["artifact_id"]):
        ppl = metric(r, "text-en-ppl", "perplexity")
        rel = f"{100 * (ppl / base_ppl - 1):+.1f} %" if ppl and base_ppl and r is not base else "-"
        accs = [metric(r, t, "acc") for t in ("mmlu-mini-0shot", "mmlu-mini-5shot")]
        pre, dec = speed(r, "lm_prefill_tok_s"), speed(r, "lm_decode_tok_s")
        rss = peak_rss(r)
        lines.append(
            f"| `{r['artifact_id'].rsplit('/', 1)[-1]}` | {runtime(r)} | {r['size_bytes'] / 1e6:.1f} | "
            f"{_ratio(base['size_bytes'], r['size_bytes'])} | {gate_cell(r)} | {_num(ppl)} | {rel} | "
            + " | ".join(_num(a and 100 * a, "{:.1f}") for a in accs)
            + f" | {_num(pre and pre['value'], '{:.1f}')} | {_num(dec and dec['value'], '{:.2f}')} | "
            f"{speed_ratio(dec, base_dec)} | {_num(rss and rss / 1e9)} | {cpu_name(r)} |")
    return lines


def matrix(results_dir: Path) -> list[str]:
    """The matrix section's lines: one table per source model (an artifact's direct parent, the
    first entry of its lineage) that has a record here, its derived artifacts as rows."""
    recs = [r for r in records(results_dir) if "metrics" in r]
    by_id = {r["artifact_id"]: r for r in recs}
    groups: dict[str, list[dict]] = {}
    for r in recs:
        parent = (r.get("lineage") or [None])[0]
        if parent in by_id:
            groups.setdefault(parent, []).append(r)
    out = [TITLE, "", f"Generated by `python bench/edge_matrix.py {results_dir}` from the records above: per "
           "source model, one row per artifact made from it, ratios to the source as measured by the same suite "
           "(speed ratios only between records measured on the same CPU model)."]
    for source, rows in sorted(groups.items()):
        base = by_id[source]
        out += ["", f"### from `{source}`", ""]
        out += asr_rows(rows, base) if base["modality"] == "asr" else lm_rows(rows, base)
    out += ["", "WER in %, pooled: real = asterisk-en + librivox-5 + cards-5, synthetic = tts-en clean + noisy "
            "(errors / reference words, items per task as in the conditions above). Peak RSS: the lower of "
            "the record's suites. Gates score input and output on the stage's own held-out items."]
    return out


def main() -> None:
    from distill.evaluation.report import write_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", type=Path)
    args = ap.parse_args()
    readme = write_report(args.results_dir)
    readme.write_text(readme.read_text().rstrip() + "\n\n" + "\n".join(matrix(args.results_dir)) + "\n")
    print(readme)


if __name__ == "__main__":
    main()
