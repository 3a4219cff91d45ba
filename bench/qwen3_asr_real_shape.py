"""Real-shape smoke of Qwen3-ASR 1.7B -> 0.6B distillation on this CPU: measured peak RSS vs `distill plan`.

A random-weight teacher built from recipes/asr/configs/qwen3-asr-1.7b (bf16, 2.04B params) teaches a
random-weight student of the 0.6B shape (0.78B) through the real stage (`distill run`, kind
distill-qwen3-asr): pseudo-labels of 10-s clips (real speech: librivox-5 utterances joined to 10 s),
then 2 optimizer steps. No Qwen3-ASR weights exist offline, so this measures memory and that the
real-size pipeline runs, not accuracy.

The variant is chosen by the plan: the first of (fp32 student, trainable encoder) -> (fp32, frozen
encoder) -> (bf16 student) -> (bf16, frozen) -> (bf16, frozen, batch 1) -> (the same at half depth:
real widths and vocabulary, 1/2, 1/4, then 1/8 of the encoder and decoder layers) whose plan
estimate plus the measured Python runtime fits in the memory available now minus a safety margin
(the machine is shared). The run is a fresh `python -m distill run` child; its ru_maxrss is the measured peak.
  python bench/qwen3_asr_real_shape.py            -> bench/results/qwen3_asr_real_shape.{json,md}
  python bench/qwen3_asr_real_shape.py --dry-run  (print the variants and the choice only)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 1024**3
CLIP_S = 10.0
VARIANTS = [  # (name, student dtype, freeze encoder, batch, depth: share of encoder/decoder layers kept)
    ("fp32-student", "float32", False, 2, 1.0),
    ("fp32-student-frozen-encoder", "float32", True, 2, 1.0),
    ("bf16-student", "bfloat16", False, 2, 1.0),
    ("bf16-student-frozen-encoder", "bfloat16", True, 2, 1.0),
    ("bf16-student-frozen-encoder-batch1", "bfloat16", True, 1, 1.0),
    # Real widths and vocabulary, half the layers of both models: when the machine is too busy.
    ("half-depth-bf16-student-frozen-encoder-batch1", "bfloat16", True, 1, 0.5),
    ("quarter-depth-bf16-student-frozen-encoder-batch1", "bfloat16", True, 1, 0.25),
    ("eighth-depth-bf16-student-frozen-encoder-batch1", "bfloat16", True, 1, 0.125),
]
RUNTIME_CHILD = ("import resource, torch, transformers, qwen_asr, distill.stages.distill_qwen3_asr\n"
                 "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def clips(out: Path, n: int) -> Path:
    """n 10-s clips of real read speech (librivox-5 utterances joined, cycled) + a JSONL manifest."""
    import numpy as np
    import soundfile as sf

    from distill.assets import load_dataset
    from distill.evaluation.asr import load_audio

    rows = list(load_dataset("librivox-5"))
    waves = [(load_audio(r["audio_path"]), r["text"]) for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    lines, k = [], 0
    for i in range(n):
        audio, text = np.zeros(0, np.float32), []
        while len(audio) < CLIP_S * 16000:
            wave, words = waves[k % len(waves)]
            audio, k = np.concatenate([audio, wave]), k + 1
            text.append(words)
        path = out / f"clip{i}.wav"
        sf.write(path, audio[: int(CLIP_S * 16000)], 16000)
        lines.append(json.dumps({"id": f"clip{i}", "audio_path": str(path), "text": " ".join(text)}))
    (out / "clips.jsonl").write_text("\n".join(lines) + "\n")
    return out / "clips.jsonl"


def recipe(manifest: Path, teacher: str, student: str, dtype: str, frozen: bool, batch: int,
           output_dir: Path) -> dict:
    return {"name": "bench-qwen3-asr-real-shape", "seed": 0, "output_dir": str(output_dir), "stages": [{
        "name": "distill", "kind": "distill-qwen3-asr",
        "teacher": {"source": f"{teacher}/config.json", "dtype": "bfloat16", "tokenizer": "asset:qwen3-tokenizer"},
        "student": {"init": "config", "model": {"source": student, "dtype": dtype,
                                                "tokenizer": "asset:qwen3-tokenizer"}},
        "data": {"source": str(manifest), "split": None, "max_seconds": CLIP_S, "max_items": 2 * batch},
        "language": "en", "wer_filter": None, "max_new_tokens": 32, "label_batch_size": batch,
        "freeze_encoder": frozen,
        "train": {"steps": 2, "batch_size": batch, "lr": 1.0e-5, "log_every": 1, "checkpoint_every": 100}}]}


def shallower(config_dir: str, depth: float, out: Path) -> str:
    """A copy of a shape-only config with `depth` of its encoder and decoder layers."""
    if depth == 1.0:
        return config_dir
    cfg = json.loads((ROOT / config_dir / "config.json").read_text())
    audio, text = cfg["thinker_config"]["audio_config"], cfg["thinker_config"]["text_config"]
    audio["encoder_layers"] = round(audio["encoder_layers"] * depth)
    text["num_hidden_layers"] = round(text["num_hidden_layers"] * depth)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(out)


def runtime_kib(env: dict) -> int:
    res = subprocess.run([sys.executable, "-c", RUNTIME_CHILD], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return int(res.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="recipes/asr/configs/qwen3-asr-1.7b")
    ap.add_argument("--student", default="recipes/asr/configs/qwen3-asr-0.6b")
    ap.add_argument("--margin-gib", type=float, default=3.0, help="left free for the machine's other users")
    ap.add_argument("--work", default="runs/bench-qwen3-asr-real-shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", default="bench/results/qwen3_asr_real_shape")
    args = ap.parse_args()

    import yaml

    from distill import recipe as recipe_mod
    from distill.plan_asr import available_gib, estimate_bytes

    work = ROOT / args.work
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT),
           "TOKENIZERS_PARALLELISM": "false"}
    manifest = clips(work / "data", 4)
    base_kib = runtime_kib(env)
    plans, chosen = [], None
    for name, dtype, frozen, batch, depth in VARIANTS:
        teacher_dir = shallower(args.teacher, depth, work / f"configs-{depth}" / "teacher")
        student_dir = shallower(args.student, depth, work / f"configs-{depth}" / "student")
        data = recipe(manifest, teacher_dir, student_dir, dtype, frozen, batch, work / "runs")
        stage = recipe_mod.build(data).stages[0]
        est, teacher, student = estimate_bytes(stage)
        total = est / GIB + base_kib / 1024**2
        plans.append({"variant": name, "student_dtype": dtype, "freeze_encoder": frozen, "batch": batch,
                      "depth": depth, "teacher_params": teacher.params, "student_params": student.params,
                      "plan_gib": round(est / GIB, 3), "plan_plus_runtime_gib": round(total, 3), "recipe": data})
    avail = available_gib()  # read after the planning: this process's own memory is already taken
    budget = avail - args.margin_gib
    for p in plans:
        p["fits_budget"] = p["plan_plus_runtime_gib"] <= budget
        if chosen is None and p["fits_budget"]:
            chosen = (p, p["recipe"])
    for p in plans:
        del p["recipe"]
    print(json.dumps({"available_gib": round(avail, 2), "budget_gib": round(budget, 2),
                      "runtime_gib": round(base_kib / 1024**2, 3), "variants": plans}, indent=2))
    if args.dry_run or chosen is None:
        if chosen is None:
            print("no variant fits the memory available now: not run")
        return
    info, data = chosen
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "distill", "run", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    (work / "run.log").write_text(run.stdout + run.stderr)
    if run.returncode:
        sys.exit(f"run failed ({run.returncode}); see {work / 'run.log'}")
    run_dir = Path(next(line.split(": ", 1)[1] for line in run.stdout.splitlines() if line.startswith("run finished")))
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    manifest_extra = json.loads((run_dir / "artifacts/distill/manifest.json").read_text())["extra"]
    peak = peak_kib / 1024**2
    result = {
        "what": "random-weight Qwen3-ASR 1.7B-shaped teacher (bf16) -> 0.6B-shaped student, real stage, "
                "pseudo-labels + 2 optimizer steps on 10-s clips, CPU",
        "command": "python bench/qwen3_asr_real_shape.py", "threads": args.threads,
        "load_average_before": load_before, "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
        "available_gib_at_start": round(avail, 2), "margin_gib": args.margin_gib,
        "chosen": info,
        "variants": plans, "runtime_gib": round(base_kib / 1024**2, 3),
        "plan_estimate_gib": info["plan_gib"], "plan_plus_runtime_gib": info["plan_plus_runtime_gib"],
        "measured_peak_rss_gib": round(peak, 3),
        "measured_over_plan_plus_runtime": round(peak / info["plan_plus_runtime_gib"], 3),
        "wall_s": round(wall, 1), "train_seconds": manifest_extra.get("train_seconds"),
        "steps": [{k: m[k] for k in ("step", "loss", "kd", "ce", "label_tokens") if k in m} for m in metrics],
    }
    out = ROOT / args.out
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {p['variant']} | {p['plan_gib']:.2f} | {p['plan_plus_runtime_gib']:.2f} | "
                     f"{'yes' if p['fits_budget'] else 'no'} |" for p in plans)
    out.with_suffix(".md").write_text(
        f"# Qwen3-ASR 1.7B -> 0.6B real-shape smoke (CPU)\n\n{result['what']}.\n\n"
        f"`{result['command']}`, {args.threads} threads, load average before {' '.join(load_before)}, after "
        f"{' '.join(result['load_average_after'])}; {avail:.1f} GiB available at start, {args.margin_gib} GiB "
        f"left for other users.\n\n| variant | plan GiB | plan + runtime GiB | fits budget |\n|---|---|---|---|\n"
        f"{rows}\n\nRan **{info['variant']}** (teacher {info['teacher_params'] / 1e9:.3f}B params bf16, student "
        f"{info['student_params'] / 1e9:.3f}B {info['student_dtype']}, batch {info['batch']} x {CLIP_S:g} s): measured peak RSS {peak:.2f} GiB vs plan {info['plan_gib']:.2f} + "
        f"Python runtime {base_kib / 1024**2:.2f} = {info['plan_plus_runtime_gib']:.2f} GiB "
        f"(ratio {result['measured_over_plan_plus_runtime']:.2f}); wall {wall:.0f} s.\n\n"
        "Steps: " + ", ".join(f"step {s['step']} loss {s['loss']:.3f} (kd {s['kd']:.3f}, ce {s['ce']:.3f})"
                             for s in result["steps"]) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
