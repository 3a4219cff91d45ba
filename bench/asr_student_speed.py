"""Whisper teacher vs its distilled students: RTFx at batch 1 and batch 8, side by side.

Same clips (asterisk-en test prompts with >= 4 words, the suite's throughput audio), same threads,
PyTorch fp32 greedy through the evaluation harness's HF adapter (what `distill eval` times). Every
model is loaded once; each round times every model at batch 1 (clip by clip) and at batch 8
(length-sorted batches), in an order rotated per round, after one untimed warm-up batch, so on a
shared CPU the models see the same contention; the load average is recorded around every pass.
Speed-ups are per round (models timed minutes apart in one process) and their median.

    python bench/asr_student_speed.py runs/whisper-base-distil-*/artifacts --clips 16 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"
TEACHER = "asset:whisper-base"


def clips(n: int) -> list[dict]:
    from distill.evaluation import asr
    from distill.evaluation.data import limit_rows, task_rows
    from distill.evaluation.tasks import load_task

    task = load_task("asterisk-en")
    items, _ = asr.load_items(task, limit_rows(task_rows(task), n, task.name))
    return sorted(items, key=lambda it: it["seconds"], reverse=True)


def timed(model, items: list[dict], batch: int) -> dict:
    load_before = [round(x, 2) for x in os.getloadavg()]
    seconds = 0.0
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        t0 = time.perf_counter()
        model.transcribe([it["audio"] for it in chunk], language="en")
        seconds += time.perf_counter() - t0
    audio = sum(it["seconds"] for it in items)
    return {"rtfx": round(audio / seconds, 3), "compute_s": round(seconds, 2), "audio_s": round(audio, 2),
            "load_avg_before": load_before, "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    import torch

    from distill.evaluation.adapters import load_hf_whisper
    from distill.evaluation.loading import resolve_model
    from distill.evaluation.throughput import device_name

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", type=Path, help="a run's artifacts/ directory (one sub-directory per student)")
    ap.add_argument("--only", nargs="*", help="student names to time (default: all)")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT / "asr_student_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = sorted(p.name for p in args.artifacts.iterdir() if (p / "config.json").is_file())
    names = [n for n in names if not args.only or n in args.only]
    models = {"teacher": load_hf_whisper(resolve_model(TEACHER).source)}
    models.update({n: load_hf_whisper(str(args.artifacts / n)) for n in names})
    items = clips(args.clips)
    for model in models.values():  # warm-up: allocator, lazy init
        model.transcribe([items[-1]["audio"]], language="en")
    rounds = []
    order = list(models)
    for r in range(args.rounds):
        order = order[r % len(order):] + order[:r % len(order)]
        rounds.append({b: {name: timed(models[name], items, b) for name in order} for b in (1, 8)})
        print(json.dumps(rounds[-1]), flush=True)
    speedup = {str(b): {n: round(statistics.median(rd[b][n]["rtfx"] / rd[b]["teacher"]["rtfx"] for rd in rounds), 3)
                        for n in names} for b in (1, 8)}
    result = {"bench": "asr_student_speed", "teacher": TEACHER, "students": names, "clips": len(items),
              "audio_s": round(sum(it["seconds"] for it in items), 2), "threads": args.threads,
              "device_name": device_name("cpu"), "dtype": "float32", "backend": "torch-eager",
              "decoding": "greedy", "rounds": rounds,
              "speedup_vs_teacher_median": speedup,
              "command": "python bench/asr_student_speed.py " + " ".join(os.sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(speedup))


if __name__ == "__main__":
    main()
