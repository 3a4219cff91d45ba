"""ASR speed and WER: our harness vs a plain transformers ASR pipeline, same model, same audio.

Both use the same loaded Whisper model, greedy decoding, the same batch size and one untimed
warm-up batch. Ours sorts by length before batching; the pipeline takes the items in dataset order.
Runs alternate (ours, pipeline, ours, pipeline) and each side reports its faster run, because this
CPU is shared and a single run is noisy. RTFx = sum(audio s) / wall s of the whole transcription.

    DISTILL_CACHE=... python bench/eval_asr_vs_pipeline.py --model asset:whisper-tiny.en --items 48
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="asset:whisper-tiny.en")
    ap.add_argument("--items", type=int, default=48, help="asterisk-en items (<= 30 s) + librivox-5 + cards-5")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from transformers import pipeline

    from distill.evaluation import asr, metrics
    from distill.evaluation.adapters import ADAPTERS
    from distill.evaluation.data import task_rows
    from distill.evaluation.loading import resolve_model
    from distill.evaluation.tasks import load_task

    ref = resolve_model(args.model)
    model = ADAPTERS[ref.adapter](ref.source, "cpu", ref.manifest)
    items = []
    for name, limit in (("asterisk-en", None), ("librivox-5", None), ("cards-5", None)):
        spec = load_task(name)
        got, _ = asr.load_items(spec, task_rows(spec, limit))
        items += [it for it in got if it["seconds"] <= 30][: args.items if name == "asterisk-en" else None]
    audio_s = sum(it["seconds"] for it in items)
    refs = [it["reference"] for it in items]
    pipe = pipeline("automatic-speech-recognition", model=model.model, tokenizer=model.processor.tokenizer,
                    feature_extractor=model.processor.feature_extractor, device="cpu")
    gen = {"num_beams": 1, "do_sample": False, "max_new_tokens": model.max_new_tokens}

    def ours():
        preds, _ = asr.transcribe(model, items, args.batch_size, "en", desc="ours")
        return preds

    def theirs():
        out = pipe([{"raw": it["audio"], "sampling_rate": 16000} for it in items],
                   batch_size=args.batch_size, generate_kwargs=gen)
        return [o["text"] for o in out]

    warm = items[: args.batch_size]
    model.transcribe([it["audio"] for it in warm])
    pipe([{"raw": it["audio"], "sampling_rate": 16000} for it in warm], batch_size=args.batch_size,
         generate_kwargs=gen)
    times = {"ours": [], "pipeline": []}
    preds = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("pipeline", theirs)):
            t0 = time.perf_counter()
            preds[name] = fn()
            times[name].append(time.perf_counter() - t0)
    res = {"model": args.model, "items": len(items), "audio_seconds": audio_s, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "device": platform.processor() or platform.machine(),
           "dtype": model.dtype, "backend": model.backend, "warmup_batches": 1, "repeats": args.repeats,
           "timer": "time.perf_counter, best of repeats", "seconds": times}
    for name in ("ours", "pipeline"):
        scores = metrics.asr_scores(preds[name], refs, "english")
        res[name] = {"wer": scores["wer"], "wer_ortho": scores["wer_ortho"],
                     "rtfx": audio_s / min(times[name])}
    res["identical_transcripts"] = sum(a.strip() == b.strip() for a, b in zip(preds["ours"], preds["pipeline"]))
    res["rtfx_ratio"] = res["ours"]["rtfx"] / res["pipeline"]["rtfx"]
    print(json.dumps(res, indent=1))
    OUT.mkdir(exist_ok=True)
    stem = f"eval_asr_vs_pipeline_{ref.artifact_id.split('/')[-1]}"
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / f"{stem}.md").write_text(
        f"# ASR: distill harness vs transformers pipeline\n\nModel `{args.model}`, {len(items)} utterances "
        f"({audio_s:.1f} s: asterisk-en <= 30 s + librivox-5 + cards-5), batch {args.batch_size}, greedy, "
        f"{res['dtype']}, {res['threads']} threads, {res['device']}, 1 warm-up batch, best of {args.repeats}.\n"
        f"Command: `python bench/eval_asr_vs_pipeline.py --model {args.model} --items {args.items}`\n\n"
        "| | WER % | WER ortho % | RTFx |\n|---|---|---|---|\n"
        f"| distill | {100 * res['ours']['wer']:.2f} | {100 * res['ours']['wer_ortho']:.2f} | {res['ours']['rtfx']:.2f} |\n"
        f"| pipeline | {100 * res['pipeline']['wer']:.2f} | {100 * res['pipeline']['wer_ortho']:.2f} | "
        f"{res['pipeline']['rtfx']:.2f} |\n\nRTFx ratio {res['rtfx_ratio']:.2f}x; identical transcripts "
        f"{res['identical_transcripts']}/{len(items)}.\n")


if __name__ == "__main__":
    main()
