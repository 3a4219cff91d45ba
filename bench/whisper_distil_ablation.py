"""README of a Whisper students' results directory (results/whisper-base-distil, results/whisper-base-window):
`distill report` tables + the lever ablation, from records only.

Rows: the teacher and every student recorded there. WER per task and pooled over the
real held-out speech (asterisk-en test split, librivox-5, cards-5: errors / reference words summed
over the three tasks), RTFx from each record's suite throughput (batch 8), and speed-ups at batch 1
and 8 from a bench/asr_student_speed.py output (models timed side by side, rotated rounds). Every
number is read from those files; rerun this after any new record.

    python bench/whisper_distil_ablation.py results/whisper-base-distil
    python bench/whisper_distil_ablation.py results/whisper-base-window --speed bench/results/asr_window_speed.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_matrix import REAL, SYNTHETIC, pooled_wer  # one pooling for both tables: errors / words summed

TASKS = REAL + SYNTHETIC
SPEED = Path(__file__).parent / "results" / "asr_student_speed.json"


def wer_counts(record: dict) -> dict[str, tuple[int, int]]:
    """task -> (word errors, reference words) of the record's `wer` metric."""
    out = {}
    for m in record["metrics"]:
        if m["metric"] == "wer" and m["task"] in TASKS:
            e = m["extra"]
            out[m["task"]] = (e["substitutions"] + e["insertions"] + e["deletions"], e["n_ref_words"])
    return out


def levers(record: dict, manifests: dict[str, dict]) -> tuple[str, str]:
    facts = manifests.get(record["artifact_id"], {})
    stage = facts.get("stage")
    if stage is None:
        return "6 / 6 / 30 s", "teacher"
    s = stage["student"]
    loss = stage["loss"]
    how = "untrained" if stage.get("init_only") else (
        "CE only" if not loss["kd_weight"] else f"KD (T={loss['temperature']:g}) + {loss['ce_weight']:g} CE")
    teacher = stage.get("teacher", {}).get("source", "asset:whisper-base")
    if not teacher.startswith("asset:"):  # an earlier student as the teacher: name it
        how = f"from teacher `{Path(teacher).name}`: {how}"
    if s.get("init") == "model":  # a further round on an earlier student: its cut is that student's
        base = (s["model"].get("source") or "a model").removeprefix("stage:")
        cut = f"as `{base}`"
        how = f"{stage['train']['steps']} more steps from `{base}` (lr {stage['train']['lr']:g}): {how}"
    else:
        # the window as built: a student of a cut-window teacher keeps that window (window_seconds None)
        window = facts["encoder_frames"] // 50 if facts.get("encoder_frames") else s["window_seconds"] or 30
        cut = f"{s['decoder_layers'] or 6} / {s['encoder_layers'] or 6} / {window} s"
    if stage.get("data", {}).get("pack_seconds"):
        how += f", clips packed to {stage['data']['pack_seconds']:g} s"
    trains_encoder = s.get("encoder_layers") is not None or not stage.get("freeze_encoder", True)
    if stage.get("init_only"):
        return cut, how
    if not trains_encoder:
        how += ", encoder frozen"
    elif loss.get("hidden_weight"):
        how += f" + {loss['hidden_weight']:g} encoder MSE"
    return cut, how


def training_facts(results_dir: Path, runs_dir: Path, ids: set[str]) -> dict[str, dict]:
    """artifact id -> its stage spec and training facts, copied from the run manifests into
    results_dir/training/stages.json (committed: the runs/ directory is not; not a record)."""
    path = results_dir / "training" / "stages.json"
    facts = json.loads(path.read_text()) if path.is_file() else {}
    keep = ("utterances", "kept_after_wer_filter", "skipped", "speech_cache", "final_metrics",
            "decoder_layer_map", "encoder_layer_map", "encoder_frames")
    for p in sorted(runs_dir.glob("*/artifacts/*/manifest.json")):
        m = json.loads(p.read_text())
        if m["artifact_id"] not in ids:
            continue
        extra = {k: v for k, v in m.get("extra", {}).items() if k in keep}
        if "speech_cache" in extra:  # the cache directory is a machine path: keep its facts only
            extra["speech_cache"] = {k: v for k, v in extra["speech_cache"].items() if k != "dir"}
        facts[m["artifact_id"]] = {"stage": m["stage"], "params": m.get("params"), **extra}
    if facts:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    return facts


def table(results_dir: Path, runs_dir: Path, speed_file: Path = SPEED) -> list[str]:
    records = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    records = [r for r in records if r.get("modality") == "asr"]
    manifests = training_facts(results_dir, runs_dir, {r["artifact_id"] for r in records})
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else {}
    ups = speed.get("speedup_vs_teacher_median", {})
    teacher = next((r for r in records if r["artifact_id"] == "asset/whisper-base"), None)
    t_rtfx = _rtfx(teacher) if teacher else None
    lines = ["| model | dec / enc layers / window | training | params | " + " | ".join(f"{t} WER" for t in TASKS)
             + " | **real pooled WER** (Δ teacher) | RTFx b8 (suite) | speed-up b1 / b8 (bench) |",
             "|" + "---|" * (len(TASKS) + 7)]
    t_pool = _pool(teacher) if teacher else None
    for r in sorted(records, key=lambda r: (r["artifact_id"] != "asset/whisper-base", r["artifact_id"])):
        counts = wer_counts(r)
        cut, how = levers(r, manifests)
        name = r["artifact_id"].rsplit("/", 1)[-1]
        pool = _pool(r)
        delta = f" ({100 * (pool - t_pool):+.1f})" if pool is not None and t_pool is not None and r is not teacher else ""
        rtfx = _rtfx(r)
        rel = f" ({rtfx / t_rtfx:.2f}x)" if rtfx and t_rtfx and r is not teacher else ""
        b = [ups.get(k, {}).get(name) for k in ("1", "8")]
        bench = " / ".join(f"{x:.2f}x" if x else "-" for x in b) if r is not teacher else "1 / 1"
        cells = [f"{100 * e / n:.1f} ({n} w)" if (e, n) != (None, None) and n else "-"
                 for e, n in (counts.get(t, (None, None)) for t in TASKS)]
        lines.append(f"| `{name}` | {cut} | {how} | {r['params'] / 1e6:.1f}M | " + " | ".join(cells)
                     + f" | **{_pct(pool)}**{delta} | {rtfx or '-'}{rel} | {bench} |")
    return lines


def _pool(record: dict) -> float | None:
    pooled = pooled_wer(record, REAL)
    return pooled[0] if pooled else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _rtfx(record: dict) -> float | None:
    for t in record.get("throughput", []):
        if t["kind"] == "asr_rtfx" and t.get("suite") == "asr-en":
            return round(t["value"], 2)
    return None


def _shown(path: Path) -> str:
    """`path` as the README shows it: relative to the repository, never a machine path."""
    root = Path(__file__).resolve().parent.parent
    full = path.resolve()
    return str(full.relative_to(root)) if full.is_relative_to(root) else path.name


def main() -> None:
    from distill.evaluation.report import write_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--speed", type=Path, default=SPEED, help="bench/asr_student_speed.py output for these students")
    ap.add_argument("--notes", type=Path, help="markdown appended after the table (measured conditions, findings)")
    args = ap.parse_args()
    readme = write_report(args.results_dir)
    section = ["", "## Lever ablation (generated by `python bench/whisper_distil_ablation.py "
               f"{args.results_dir}` from the records above and {_shown(args.speed)})", ""]
    section += table(args.results_dir, args.runs, args.speed)
    section += ["", "WER in % (reference words scored in brackets; `--limit` items per task, see the conditions "
                "above). Real pooled = asterisk-en test + librivox-5 + cards-5, errors / words summed."]
    if args.notes and args.notes.is_file():
        section += ["", args.notes.read_text().rstrip()]
    readme.write_text(readme.read_text().rstrip() + "\n" + "\n".join(section) + "\n")
    print(readme)


if __name__ == "__main__":
    main()
