"""How short a window can a Whisper student's clip be padded to? A sweep of CT2 window buckets.

A CTranslate2 Whisper export runs any encoder length up to its window, so a clip can be padded to a
shorter bucket (the ct2 export's `window_buckets` / `bucket_padding_s`). A model that never saw short
padding repeats itself there (whisper-base loops when less than ~6 s follows the speech), so each
bucket set is measured, not assumed: every real held-out clip (all asterisk-en test prompts,
librivox-5, cards-5), batch 1 (or --batch-size; length-sorted as the harness batches), greedy, one CT2 int8 model, the bucket rule changed between passes.
The teacher's own CT2 int8 weights (30-s window, no buckets) run the same clips as the reference.
A bucket set is *safe* when its pooled WER stays within --tolerance points of the same model without
buckets and it adds no repetition loop.

    python bench/asr_window_buckets.py --student runs/<run>/artifacts/<stage> --sets 5 4,5 3,5 \
        --padding 1.0 0.5 --name asr_window_buckets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import asr_vs_faster_whisper as peers  # the peer bench's clips, exports and timed pass

OUT = peers.OUT
ROOT = peers.ROOT


def bucket_systems(student_ct2, sets: list[tuple[int, ...]], paddings: list[float]) -> dict:
    """name -> the same loaded CT2 model under each bucket rule ('none' = its own window only)."""
    systems = {"none": student_ct2}
    for buckets in sets:
        for pad in paddings:
            name = f"{','.join(map(str, buckets))}@{pad:g}s"
            systems[name] = dataclasses.replace(student_ct2, window_buckets=buckets, bucket_padding_s=pad)
    return systems


def scores(preds: list[str], items: list[dict], keep=lambda it: True) -> dict:
    from distill.evaluation import metrics

    rows = [(p, it["reference"]) for p, it in zip(preds, items) if keep(it)]
    if not rows:
        return {"n": 0, "wer": None, "errors": 0, "ref_words": 0, "loops": 0}
    s = metrics.asr_scores([p for p, _ in rows], [r for _, r in rows], "english")
    loops = sum(metrics.repetition_loop(p, r) for p, r in rows)
    return {"n": len(rows), "wer": s["wer"], "errors": s["substitutions"] + s["insertions"] + s["deletions"],
            "ref_words": s["n_ref_words"], "loops": loops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True, help="the student's HF Whisper directory (a distill-asr artifact)")
    ap.add_argument("--sets", nargs="+", default=["5"], help="bucket sets to try, each comma-separated seconds")
    ap.add_argument("--padding", type=float, nargs="+", default=[1.0], help="seconds a clip keeps after it")
    ap.add_argument("--tolerance", type=float, default=0.5, help="WER points a safe set may add")
    ap.add_argument("--asterisk", type=int, help="asterisk-en test prompts (evenly spread; default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1, help="clips per call (> 1: length-sorted batches)")
    ap.add_argument("--name", default="asr_window_buckets", help="output file stem under bench/results/")
    args = ap.parse_args()

    import torch

    from distill import provenance
    from distill.assets.models import whisper_ct2_dir
    from distill.evaluation import ct2_models

    torch.set_num_threads(args.threads)
    student = Path(args.student)
    sets = [tuple(int(x) for x in s.split(",")) for s in args.sets]
    items = peers.clips(args.asterisk)
    audio_s = sum(it["seconds"] for it in items)
    ct2, _ = peers.load_adapter(peers.ct2_export(student, f"ct2-int8-{student.name}"))
    systems = bucket_systems(ct2, sets, args.padding)
    teacher = ct2_models.load_ct2(str(whisper_ct2_dir("base", peers.WORK / "whisper-base-ct2")), "cpu",
                                  compute_type="int8")
    systems = {"teacher-ct2-int8": teacher, **systems}
    result = {"command": peers.command_line("asr_window_buckets.py", args),
              "git": provenance.git_state(), "versions": provenance.versions(),
              "machine": provenance.machine("cpu"), "created": provenance.now(),
              "student": str(student.relative_to(ROOT) if student.is_relative_to(ROOT) else student),
              "student_window_s": ct2.max_audio_seconds,
              "conditions": {"batch_size": args.batch_size, "decoding": "greedy", "threads": args.threads, "device": "cpu",
                             "compute_type": ct2.dtype, "warmup": "1 untimed batch per pass",
                             "timer": "time.perf_counter"},
              "clips": {"n": len(items), "audio_s": round(audio_s, 2),
                        "tasks": {t: sum(it["task"] == t for it in items) for t in ("asterisk-en", "librivox-5", "cards-5")}},
              "systems": {}}
    texts = {}
    for name, system in systems.items():
        timing, texts[name] = peers.timed_pass(system, items, audio_s, name, args.batch_size)
        result["systems"][name] = {
            "window_buckets": list(getattr(system, "window_buckets", ())),
            "bucket_padding_s": system.bucket_padding_s if system.window_buckets else None,
            **timing, "pooled": scores(texts[name], items),
            "asterisk-en": scores(texts[name], items, lambda it: it["task"] == "asterisk-en"),
            "up_to_5s": scores(texts[name], items, lambda it: it["seconds"] <= 5),
            "5s_to_window": scores(texts[name], items, lambda it: 5 < it["seconds"] <= ct2.max_audio_seconds),
            "past_window": scores(texts[name], items, lambda it: it["seconds"] > ct2.max_audio_seconds)}
        print(json.dumps({"system": name, "rtfx": timing["rtfx"],
                          "wer": result["systems"][name]["pooled"]["wer"]}), flush=True)
    base = result["systems"]["none"]["pooled"]
    for name, s in result["systems"].items():
        if name in ("none", "teacher-ct2-int8"):
            continue
        s["safe"] = (100 * (s["pooled"]["wer"] - base["wer"]) <= args.tolerance
                     and s["pooled"]["loops"] <= base["loops"])
    peers.write_outputs(args.name, result, items, texts, report(result, args))


def report(res: dict, args) -> str:
    def cell(s: dict, part: str) -> str:
        p = s[part]
        return f"{100 * p['wer']:.2f} ({p['errors']}/{p['ref_words']})" if p["n"] else "-"

    rows = []
    for name, s in res["systems"].items():
        safe = {True: "yes", False: "**no**"}.get(s.get("safe"), "")
        rows.append(f"| {name} | {cell(s, 'pooled')} | {cell(s, 'asterisk-en')} | {cell(s, 'up_to_5s')} | "
                    f"{cell(s, '5s_to_window')} | {cell(s, 'past_window')} | {s['pooled']['loops']} | "
                    f"{s['rtfx']:.2f} | {safe} |")
    safe = [n for n, s in res["systems"].items() if s.get("safe")]
    best = max(safe, key=lambda n: res["systems"][n]["rtfx"]) if safe else None
    c = res["clips"]
    w = res["student_window_s"]
    verdict = (f"Fastest safe set: **{best}** (RTFx {res['systems'][best]['rtfx']:.2f} vs "
               f"{res['systems']['none']['rtfx']:.2f} without buckets)." if best else "No bucket set was safe.")
    return f"""# Window buckets for a Whisper student in CTranslate2: how short is safe?

Command: `{res['command']}` ({res['created']}, commit {res['git'].get('sha', '?')[:10]}{' dirty' if res['git'].get('dirty') else ''}).
Student: `{res['student']}` ({w:g}-s window), CTranslate2 {res['conditions']['compute_type']}; `teacher-ct2-int8` is
the teacher's own CT2 weights (30-s window, no buckets). {c['n']} real held-out clips ({c['audio_s']} s;
{c['tasks']}), batch {res['conditions']['batch_size']}{' (length-sorted)' if res['conditions']['batch_size'] > 1 else ''}, greedy, {res['conditions']['threads']} threads, one pass per row after 1 warm-up batch
(load average per row in the JSON). A row `B@P` pads each clip to the shortest bucket in B that
leaves P s after it, else to the model's window. WER % (errors / reference words); loops = clips
that repeat an n-gram 4+ times where the reference does not. Safe: pooled WER within
+{args.tolerance:g} points of `none` and no extra loop.

| system | pooled | asterisk-en | clips <= 5 s | 5-{w:g} s | > {w:g} s | loops | RTFx | safe |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{verdict}

Raw transcripts: `{args.name}_samples.jsonl`; all numbers: `{args.name}.json`.
"""


if __name__ == "__main__":
    main()
