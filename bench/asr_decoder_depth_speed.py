"""What a Whisper student's decoder depth costs at batch 1 in CTranslate2, speed only.

The student's decoder is cut to k evenly spaced layers (first and last kept), untrained, exported to
CT2 int8, and timed on real held-out clips that fit its window: the encoder, then a fixed number of
generated tokens (end-of-text suppressed, so every depth decodes the same length). The transcripts
of an untrained cut are meaningless; this measures only where the time goes.

    python bench/asr_decoder_depth_speed.py --student runs/<run>/artifacts/<stage> --layers 6 4 2 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import asr_vs_faster_whisper as peers

OUT = peers.OUT


def cut(src: Path, k: int) -> Path:
    """The student with k evenly spaced decoder layers (speech.whisper_student, untrained)."""
    from transformers import WhisperForConditionalGeneration

    from distill.speech import whisper_student
    from distill.whisper_tokenizer import whisper_processor

    out = peers.WORK / f"decoder{k}-{src.name}"
    if not (out / "model.safetensors").is_file():
        model, _ = whisper_student(WhisperForConditionalGeneration.from_pretrained(src), decoder_layers=k)
        model.save_pretrained(out)
        whisper_processor(src).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True)
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 4, 2, 1])
    ap.add_argument("--tokens", type=int, default=20, help="tokens generated per clip")
    ap.add_argument("--buckets", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--clips", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from distill import provenance

    torch.set_num_threads(args.threads)
    src = Path(args.student)
    n_layers = json.loads((src / "config.json").read_text())["decoder_layers"]
    rows = {}
    for k in args.layers:
        path = src if k == n_layers else cut(src, k)
        asr, _ = peers.load_adapter(peers.ct2_export(path, f"ct2-int8-{path.name}"))
        asr = dataclasses.replace(asr, window_buckets=tuple(args.buckets), bucket_padding_s=1.0)
        items = [it for it in peers.clips(None) if it["seconds"] + 1 <= asr.max_audio_seconds][: args.clips]
        prompt, eot = asr.prompt("en", None, timestamps=False), asr._ids["<|endoftext|>"]
        enc_s = dec_s = 0.0
        before = os.getloadavg()
        for j, it in enumerate(items[:1] + items):  # the first: warm-up
            feats = asr._features([it["audio"]], asr.window_for(len(it["audio"])))
            t0 = time.perf_counter()
            enc = asr.model.encode(feats, to_cpu=False)
            t1 = time.perf_counter()
            asr.model.generate(enc, [prompt], beam_size=1, max_length=len(prompt) + args.tokens,
                               suppress_tokens=[eot])
            t2 = time.perf_counter()
            if j:
                enc_s, dec_s = enc_s + t1 - t0, dec_s + t2 - t1
        rows[k] = {"clips": len(items), "encoder_ms_per_clip": round(1000 * enc_s / len(items), 1),
                   "decoder_ms_per_clip": round(1000 * dec_s / len(items), 1),
                   "load_avg_before": [round(x, 2) for x in before],
                   "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
        print(k, rows[k], flush=True)
    full = rows[max(rows)]
    for r in rows.values():
        r["speedup_vs_full_depth"] = round((full["encoder_ms_per_clip"] + full["decoder_ms_per_clip"])
                                           / (r["encoder_ms_per_clip"] + r["decoder_ms_per_clip"]), 2)
    result = {"command": peers.command_line("asr_decoder_depth_speed.py", args), "git": provenance.git_state(),
              "machine": provenance.machine("cpu"), "created": provenance.now(), "student": str(src),
              "conditions": {"batch_size": 1, "threads": args.threads, "compute_type": "int8",
                             "buckets": args.buckets, "tokens_per_clip": args.tokens},
              "decoder_layers": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "asr_decoder_depth_speed.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
