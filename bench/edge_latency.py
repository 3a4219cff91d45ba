"""Batch-1 speed of a Whisper model and its edge exports, side by side in one process, interleaved.

The edge recipe times each artifact once, one after another (suite asr-latency). On a shared CPU
two such passes minutes apart can differ by a quarter: whisper-base PyTorch fp32 measured 6.87 and
9.00 RTFx at batch 1 in two runs of the same recipe. Here every system is loaded once and timed on
the same clips in rounds, the order rotated per round, and each export's speed-up over the source
is taken within a round (its median over rounds is the number to quote).

Systems: the run's source model (the first lineage entry of its artifacts, PyTorch fp32 through the
harness's adapter) and the run's artifacts named by --artifacts, each through its own adapter
(ONNX Runtime, CTranslate2, torch dynamic INT8), all with the same thread count.
Clips: asterisk-en held-out prompts (spread, the asr-latency audio) + librivox-5 + cards-5.

    python bench/edge_latency.py runs/<whisper-base-edge run> --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from asr_vs_faster_whisper import clips, load_adapter, timed_pass, write_outputs  # same clips, timing, files

ROOT = Path(__file__).resolve().parent.parent


def load_systems(run: Path, names: list[str], threads: int) -> tuple[dict, dict]:
    import torch

    torch.set_num_threads(threads)
    first = json.loads((run / "artifacts" / names[0] / "manifest.json").read_text())
    source = first["lineage"][0]
    systems, info = {}, {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
                         "source": source, "artifacts": {}}
    systems["source"], _ = load_adapter(source.replace("asset/", "asset:", 1))
    for name in names:
        systems[name], ref = load_adapter(run / "artifacts" / name)
        info["artifacts"][name] = {"size_bytes": ref.size_bytes, "lineage": ref.lineage}
    return systems, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a whisper-base-edge run directory (runs/<id>)")
    ap.add_argument("--artifacts", default="onnx,onnx-int8,ct2-int8,torch-int8",
                    help="comma-separated stage names of the run to time beside the source")
    ap.add_argument("--asterisk", type=int, default=16, help="asterisk-en held-out prompts (spread)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="edge_latency", help="output file stem under bench/results/")
    args = ap.parse_args()

    from distill import provenance
    from distill.evaluation import metrics

    items = clips(args.asterisk)
    audio_s = sum(it["seconds"] for it in items)
    systems, info = load_systems(args.run.resolve(), args.artifacts.split(","), args.threads)
    names = list(systems)
    texts, passes = {}, []
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timing, out = timed_pass(systems[name], items, audio_s, f"round {r + 1} {name}")
            texts.setdefault(name, out)
            passes.append({"round": r + 1, "system": name, **timing})
            print(json.dumps(passes[-1]), flush=True)
    refs = [it["reference"] for it in items]
    rtfx = {n: [p["rtfx"] for p in passes if p["system"] == n] for n in names}
    result = {"command": f"python bench/edge_latency.py {info['run']} --artifacts {args.artifacts} "
                         f"--asterisk {args.asterisk} --rounds {args.rounds} --threads {args.threads}",
              "git": provenance.git_state(), "versions": provenance.versions(),
              "machine": provenance.machine("cpu"), "created": provenance.now(),
              "conditions": {"batch_size": 1, "decoding": "greedy", "threads": args.threads, "device": "cpu",
                             "warmup": "1 untimed clip per system per round", "timer": "time.perf_counter",
                             "order": "rotated per round", "rounds": args.rounds},
              "clips": {"n": len(items), "audio_s": round(audio_s, 2)}, **info, "systems": {}, "passes": passes}
    for name in names:
        ratios = [a / b for a, b in zip(rtfx[name], rtfx["source"])]
        result["systems"][name] = {
            "backend": systems[name].backend, "dtype": systems[name].dtype,
            "wer": metrics.asr_scores(texts[name], refs, "english")["wer"],
            "rtfx_rounds": rtfx[name], "rtfx_median": statistics.median(rtfx[name]),
            "vs_source_rounds": [round(x, 3) for x in ratios], "vs_source_median": round(statistics.median(ratios), 3)}
    write_outputs(args.name, result, items, texts, report(result, args.name))


def report(res: dict, name: str) -> str:
    rows = "\n".join(
        f"| {n} | {s['backend']} | {s['dtype']} | {100 * s['wer']:.2f} | {s['rtfx_median']:.2f} | "
        f"{', '.join(f'{x:.2f}' for x in s['rtfx_rounds'])} | **{s['vs_source_median']:.2f}x** | "
        f"{', '.join(f'{x:.2f}' for x in s['vs_source_rounds'])} |"
        for n, s in res["systems"].items())
    loads = [p["load_avg_before"][0] for p in res["passes"]] + [p["load_avg_after"][0] for p in res["passes"]]
    git = res["git"]
    return f"""# Batch-1 speed of {res['source']} and its edge exports, interleaved

Command: `{res['command']}` ({res['created']}, commit {(git.get('sha') or '?')[:10]}{' dirty' if git.get('dirty') else ''}); this file, `{name}.json` and `{name}_samples.jsonl` are written by that script.

Conditions: batch 1, greedy, {res['conditions']['threads']} threads for every runtime, {res['clips']['n']} clips of real held-out speech ({res['clips']['audio_s']:.1f} s of audio), {res['conditions']['rounds']} rounds in rotated order, one untimed warm-up clip per system per round; 1-min load average {min(loads):.2f}-{max(loads):.2f} during the passes. RTFx = audio seconds / transcription seconds; the ratio to the source is taken within each round.

| system | runtime | dtype | WER % | RTFx (median) | RTFx per round | vs source (median) | vs source per round |
|---|---|---|---|---|---|---|---|
{rows}

Systems: `source` is {res['source']} in PyTorch fp32; the others are artifacts of run `{res['run']}`.
"""


if __name__ == "__main__":
    main()
