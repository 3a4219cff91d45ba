"""Our Whisper teacher, student and the student's export vs faster-whisper running the teacher.

Same clips (real held-out speech: asterisk-en test prompts, librivox-5, cards-5), batch 1, greedy,
the same thread count everywhere (torch, CTranslate2 intra_threads, faster-whisper cpu_threads).
Systems:
  teacher-pt         whisper-base, PyTorch fp32 (the harness's HF adapter)
  student-pt         the newest complete whisper-base-distil student under runs/*/artifacts/, else
                     an untrained 10-s-window cut of whisper-base (config says which)
  student-ct2-int8   the student exported with `distill.ct2.convert` (int8), our CT2 adapter
  student-ct2-int8-buckets  the same export padding each clip to the shortest --buckets window that
                     leaves --bucket-padding s after it (the export option `window_buckets`)
  student-onnx-int8  the student's ONNX INT8 export, when one exists (--student-onnx or by lineage)
  teacher-ct2-int8   the teacher's original CTranslate2 weights through our CT2 adapter
  fw-int8/fw-float32 faster-whisper `WhisperModel.transcribe` on the teacher's original CT2 weights
                     (beam_size=1, temperature 0 without fallback, no VAD, no timestamps,
                     condition_on_previous_text off)
Every system is loaded once; each round times every system on all clips, in an order rotated per
round (alternating runs on a shared CPU), after one untimed warm-up clip; the load average is
recorded before and after each timed pass. RTFx = sum(audio s) / sum(transcribe s); a system's
RTFx is its best round, and ratios are also given per round (systems timed minutes apart).
WER: the project's normaliser (distill.evaluation.metrics), first round's transcripts.

    python bench/asr_vs_faster_whisper.py --asterisk 20 --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

OUT = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench-asr-vs-faster-whisper"  # ignored by git: cut student, exports, CT2 files
TEACHER = "asset:whisper-base"


class FasterWhisper:
    """faster-whisper behind the adapters' `transcribe` call, greedy as in our adapters."""

    backend = "faster-whisper"

    def __init__(self, path: Path, compute_type: str, threads: int):
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(path), device="cpu", compute_type=compute_type, cpu_threads=threads)
        self.dtype = self.model.model.compute_type

    def transcribe(self, audios: list, language: str = "en") -> list[str]:
        out = []
        for audio in audios:
            segments, _ = self.model.transcribe(audio, language=language, beam_size=1, temperature=0.0,
                                                condition_on_previous_text=False, without_timestamps=True,
                                                vad_filter=False)
            out.append(" ".join(s.text.strip() for s in segments))
        return out


def clips(n_asterisk: int) -> list[dict]:
    from distill.evaluation import asr
    from distill.evaluation.data import limit_rows, task_rows
    from distill.evaluation.tasks import load_task

    items = []
    for name, limit in (("asterisk-en", n_asterisk), ("librivox-5", None), ("cards-5", None)):
        spec = load_task(name)
        got, _ = asr.load_items(spec, limit_rows(task_rows(spec), limit, name))
        items += [{**it, "task": name} for it in got]
    return items


def newest_student() -> Path | None:
    """The newest complete `kd` artifact of a whisper-base-distil run (the recipe's student; its
    other stages are ablations), else its newest hf-whisper artifact (manifest written last)."""
    found = []
    for manifest in ROOT.glob("runs/whisper-base-distil-*/artifacts/*/manifest.json"):
        data = json.loads(manifest.read_text())
        if data.get("kind") == "hf-whisper":
            found.append((manifest.parent.name == "kd", data.get("created", ""), manifest.parent))
    return max(found)[2] if found else None


def cut_student(teacher_dir: Path, seconds: int) -> Path:
    """whisper-base with its encoder window cut to `seconds` (positional table prefix), untrained."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from distill import speech

    out = WORK / f"student-cut{seconds}s"
    if (out / "model.safetensors").is_file():
        return out
    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir)
    student, _ = speech.whisper_student(teacher, window_seconds=seconds)
    student.save_pretrained(out)
    speech.student_processor(WhisperProcessor.from_pretrained(teacher_dir), seconds).save_pretrained(out)
    return out


def ct2_export(src: Path, name: str) -> Path:
    from distill import ct2

    out = WORK / name
    if not (out / "README.md").is_file():  # the converter's last file
        out.mkdir(parents=True, exist_ok=True)
        ct2.convert(src, out, "hf-whisper", "int8")
    return out


def onnx_of(student_id: str | None) -> Path | None:
    """An ONNX INT8 export whose nearest parent is the student (e.g. from the edge recipe)."""
    if student_id is None:
        return None
    for manifest in ROOT.glob("runs/*/artifacts/*/manifest.json"):
        data = json.loads(manifest.read_text())
        quant = (data.get("extra") or {}).get("quantization") or {}
        if data.get("kind") == "onnx" and data.get("lineage", [None])[0] == student_id and quant:
            return manifest.parent
    return None


def load_adapter(path):
    """(the harness's adapter for `path`, its ModelRef): any artifact, asset:<id> or HF directory."""
    from distill.evaluation.adapters import ADAPTERS
    from distill.evaluation.loading import resolve_model

    ref = resolve_model(str(path))
    return ADAPTERS[ref.adapter](ref.source, "cpu", ref.manifest), ref


def timed_pass(asr, items: list[dict], audio_s: float, desc: str, batch_size: int = 1) -> tuple[dict, list[str]]:
    """One untimed warm-up batch, then every clip in the harness's length-sorted batches
    (distill.evaluation.asr.transcribe): (RTFx and load averages, transcripts in clip order)."""
    from distill.evaluation.asr import transcribe

    asr.transcribe([it["audio"] for it in items[:batch_size]], language="en")
    before = os.getloadavg()
    texts, timings = transcribe(asr, items, batch_size, "en", desc=desc)
    compute = sum(c for _, c, _ in timings)
    return {"compute_s": round(compute, 3), "rtfx": round(audio_s / compute, 3), "batch_size": batch_size,
            "load_avg_before": [round(x, 2) for x in before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}, texts


def command_line(script: str, args) -> str:
    """The command that reproduces a run, every option spelled out (defaults included)."""
    return f"python bench/{script} " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v is not None)


def write_outputs(name: str, result: dict, items: list[dict], texts: dict[str, list[str]], md: str) -> None:
    """bench/results/<name>.json, <name>_samples.jsonl (every system's transcript per clip), <name>.md."""
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(OUT / f"{name}_samples.jsonl", "w") as f:
        for i, it in enumerate(items):
            f.write(json.dumps({"id": it["id"], "task": it["task"], "audio_s": round(it["seconds"], 3),
                                "reference": it["reference"], **{n: t[i] for n, t in texts.items()}}) + "\n")
    (OUT / f"{name}.md").write_text(md)
    print(md)


def load_systems(args) -> tuple[dict, dict]:
    import torch

    from distill.assets import asset_path
    from distill.assets.models import whisper_ct2_dir
    from distill.evaluation import ct2_models

    torch.set_num_threads(args.threads)
    teacher_dir = asset_path("whisper-base")
    student = Path(args.student) if args.student else newest_student()
    info = {"teacher": TEACHER}
    if student is None:
        student = cut_student(teacher_dir, args.cut_seconds)
        info["student"] = (f"untrained whisper-base with its encoder window cut to {args.cut_seconds} s "
                           "(no whisper-base-distil artifact existed when this ran)")
    else:
        info["student"] = f"artifact {student.relative_to(ROOT) if student.is_relative_to(ROOT) else student}"
    systems, refs = {}, {}
    systems["teacher-pt"], _ = load_adapter(teacher_dir)
    systems["student-pt"], refs["student"] = load_adapter(student)
    systems["student-ct2-int8"], _ = load_adapter(ct2_export(student, f"ct2-int8-{student.name}"))
    if args.buckets:  # the same loaded CT2 model, another padding rule
        systems["student-ct2-int8-buckets"] = dataclasses.replace(
            systems["student-ct2-int8"], window_buckets=tuple(args.buckets), bucket_padding_s=args.bucket_padding)
        info["buckets"] = {"window_buckets": args.buckets, "bucket_padding_s": args.bucket_padding}
    onnx = Path(args.student_onnx) if args.student_onnx else onnx_of(
        refs["student"].artifact_id if refs["student"].manifest else None)
    if onnx is not None:
        systems["student-onnx-int8"], _ = load_adapter(onnx)
        info["student_onnx"] = str(onnx.relative_to(ROOT) if onnx.is_relative_to(ROOT) else onnx)
    teacher_ct2 = whisper_ct2_dir("base", WORK / "whisper-base-ct2")
    systems["teacher-ct2-int8"] = ct2_models.load_ct2(str(teacher_ct2), "cpu", compute_type="int8")
    systems["fw-int8"] = FasterWhisper(teacher_ct2, "int8", args.threads)
    systems["fw-float32"] = FasterWhisper(teacher_ct2, "float32", args.threads)
    info["window_s"] = {name: getattr(s, "max_audio_seconds", 30) for name, s in systems.items()}
    return systems, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--asterisk", type=int, default=20, help="asterisk-en held-out prompts (spread), + librivox-5 + cards-5")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--torch-rounds", type=int, help="rounds for the PyTorch systems (default: --rounds); "
                    "under CPU contention one PyTorch pass can take as long as many CT2 passes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--student", help="student HF directory (default: newest whisper-base-distil artifact, else a cut)")
    ap.add_argument("--student-onnx", help="the student's ONNX INT8 export (default: found by lineage)")
    ap.add_argument("--cut-seconds", type=int, default=10)
    ap.add_argument("--buckets", type=int, nargs="*", help="also time the student's CT2 export with these "
                    "window buckets (s), e.g. 5")
    ap.add_argument("--bucket-padding", type=float, default=1.0, help="padding (s) a clip keeps in a bucket")
    ap.add_argument("--name", default="asr_vs_faster_whisper", help="output file stem under bench/results/")
    args = ap.parse_args()
    args.torch_rounds = args.rounds if args.torch_rounds is None else args.torch_rounds

    from distill import provenance
    from distill.evaluation import metrics

    items = clips(args.asterisk)
    audio_s = sum(it["seconds"] for it in items)
    systems, info = load_systems(args)
    names = list(systems)
    preds = {n: None for n in names}
    passes = []  # one entry per (round, system)
    # Resumable: each finished pass is appended to a log keyed by the clips and the systems, so a
    # killed run continues at the next pass (`python bench/asr_vs_faster_whisper.py` again).
    key = json.dumps({"clips": [it["id"] for it in items], "threads": args.threads,
                      "systems": {n: f"{systems[n].backend}/{systems[n].dtype}" for n in names},
                      "student": info["student"]}, sort_keys=True)
    log = WORK / "passes.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(d["round"], d["system"]): d for d in done if d.get("key") == key}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if r >= args.torch_rounds and systems[name].backend == "torch-eager":
                continue
            if (r + 1, name) in done:
                entry = done[(r + 1, name)]
                passes.append({k: v for k, v in entry.items() if k not in ("key", "texts")})
                preds[name] = preds[name] or entry["texts"]
                continue
            timing, texts = timed_pass(systems[name], items, audio_s, f"round {r + 1} {name}")
            passes.append({"round": r + 1, "system": name, **timing})
            print(json.dumps(passes[-1]), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps({**passes[-1], "key": key, "texts": texts}) + "\n")
            if preds[name] is None:
                preds[name] = texts
    refs = [it["reference"] for it in items]
    result = {"command": command_line("asr_vs_faster_whisper.py", args),
              "git": provenance.git_state(), "versions": provenance.versions(),
              "machine": provenance.machine("cpu"), "created": provenance.now(),
              "conditions": {"batch_size": 1, "decoding": "greedy", "threads": args.threads, "device": "cpu",
                             "warmup": "1 untimed clip per system per round", "timer": "time.perf_counter",
                             "order": "rotated per round", "rounds": args.rounds,
                             "torch_rounds": args.torch_rounds},
              "clips": {"n": len(items), "audio_s": round(audio_s, 2),
                        "tasks": {t: sum(it["task"] == t for it in items) for t in ("asterisk-en", "librivox-5", "cards-5")}},
              **info, "systems": {}, "passes": passes}
    # Clips that fit every system's window (a cut-window student decodes longer ones window by
    # window, a different task): WER on those alone, beside the WER on all clips.
    shortest = min(info["window_s"].values())
    fits = [i for i, it in enumerate(items) if it["seconds"] <= shortest]
    result["clips"].update(fit_window_s=shortest, n_fit=len(fits))
    for name in names:
        scores = metrics.asr_scores(preds[name], refs, "english")
        short = metrics.asr_scores([preds[name][i] for i in fits], [refs[i] for i in fits], "english")
        rounds = [p for p in passes if p["system"] == name]
        result["systems"][name] = {"backend": systems[name].backend, "dtype": systems[name].dtype,
                                   "wer": scores["wer"], "wer_ortho": scores["wer_ortho"],
                                   "wer_fit_window": short["wer"],
                                   "rtfx_best": max(p["rtfx"] for p in rounds),
                                   "rtfx_rounds": [p["rtfx"] for p in rounds]}
    exports = [n for n in names if n.startswith("student-") and n != "student-pt"]
    export = max(exports, key=lambda n: result["systems"][n]["rtfx_best"])  # the fastest student export
    s, fw = result["systems"], result["systems"]["fw-int8"]
    result["target"] = {
        "text": "student best export >= 6x faster-whisper int8 running the teacher, at <= +1.0 WER (abs)",
        "best_export": export, "speedup_best": round(s[export]["rtfx_best"] / fw["rtfx_best"], 3),
        "speedup_per_round": [round(a / b, 3) for a, b in zip(s[export]["rtfx_rounds"], fw["rtfx_rounds"])],
        "wer_delta_abs": round(100 * (s[export]["wer"] - fw["wer"]), 2),
        "wer_delta_vs_teacher_pt_abs": round(100 * (s[export]["wer"] - s["teacher-pt"]["wer"]), 2),
        "wer_fit_window_delta_abs": round(100 * (s[export]["wer_fit_window"] - fw["wer_fit_window"]), 2)}
    result["target"]["met"] = result["target"]["speedup_best"] >= 6 and result["target"]["wer_delta_abs"] <= 1.0
    write_outputs(args.name, result, items, {n: preds[n] for n in names}, report(result, args.name))


def report(res: dict, name: str) -> str:
    t = res["target"]
    rows = "\n".join(
        f"| {n} | {s['backend']} | {s['dtype']} | {res['window_s'][n]:g} | {100 * s['wer']:.2f} | "
        f"{100 * s['wer_fit_window']:.2f} | "
        f"{s['rtfx_best']:.2f} | {', '.join(f'{x:.2f}' for x in s['rtfx_rounds'])} |"
        for n, s in res["systems"].items())
    loads = [p["load_avg_before"][0] for p in res["passes"]] + [p["load_avg_after"][0] for p in res["passes"]]
    return f"""# Whisper: our teacher, student and its export vs faster-whisper

Command: `{res['command']}` ({res['created']}, commit {res['git'].get('sha', '?')[:10]}{' dirty' if res['git'].get('dirty') else ''}).
{res['clips']['n']} real held-out clips ({res['clips']['audio_s']} s; {res['clips']['tasks']}), batch 1, greedy,
{res['conditions']['threads']} threads everywhere, 1 warm-up clip per pass, {res['conditions']['rounds']} rounds
({res['conditions']['torch_rounds']} for the PyTorch systems) with the systems in a rotated order each round; 1-min load average over the passes {min(loads):.2f}-{max(loads):.2f} (per pass in the JSON).
Teacher: `{res['teacher']}`. Student: {res['student']}.

| system | backend | dtype | window s | WER % | WER % clips <= {res['clips']['fit_window_s']:g} s ({res['clips']['n_fit']}) | RTFx (best) | RTFx per round |
|---|---|---|---|---|---|---|---|
{rows}

Target (issues #9/#12): {t['text']}. Best export: **{t['best_export']}**, {t['speedup_best']:.2f}x faster-whisper
int8 (per round: {', '.join(f'{x:.2f}x' for x in t['speedup_per_round'])}) at {t['wer_delta_abs']:+.2f} WER points vs
faster-whisper int8 ({t['wer_delta_vs_teacher_pt_abs']:+.2f} vs the PyTorch teacher; {t['wer_fit_window_delta_abs']:+.2f} vs
faster-whisper int8 on the clips that fit the student's window): **{'met' if t['met'] else 'not met'}**.

Raw transcripts of every system: `{name}_samples.jsonl`; all numbers: `{name}.json`.
"""


if __name__ == "__main__":
    main()
