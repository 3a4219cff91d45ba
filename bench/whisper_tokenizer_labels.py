"""How much the BPE merge missing from whisper-base's tokenizer files costs reference labels.

whisper-base scores each asterisk-en train reference (its own audio, teacher-forced) twice: labels
encoded by the tokenizer files as shipped, and by the repaired tokenizer (distill.whisper_tokenizer).
Per-token cross-entropy over text + EOS, fp32, the model's greedy prefix <|en|><|transcribe|><|notimestamps|>.

    python bench/whisper_tokenizer_labels.py --n 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="asterisk-en train utterances (clean)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from distill import provenance, speech
    from distill.assets import asset_path
    from distill.whisper_tokenizer import whisper_processor

    torch.set_num_threads(args.threads)
    path = asset_path("whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    procs = {"files": WhisperProcessor.from_pretrained(path), "repaired": whisper_processor(path)}
    start = model.generation_config.decoder_start_token_id
    utts = speech.read_utterances("asset:asterisk-en", "train", args.n, noisy=False)
    totals = {k: {"nll": 0.0, "tokens": 0} for k in procs}
    differ = 0
    for u in utts:
        feats = procs["files"].feature_extractor(speech.load_wave(u.audio_path)[0], sampling_rate=16000,
                                                 return_tensors="pt").input_features
        labels = {k: speech.reference_labels(p.tokenizer, [u.text], "en")[0] for k, p in procs.items()}
        differ += labels["files"] != labels["repaired"]
        for k, y in labels.items():
            with torch.no_grad():
                logits = model(input_features=feats, decoder_input_ids=torch.tensor([[start] + y[:-1]])).logits
            logp = logits[0].log_softmax(-1)[torch.arange(len(y)), torch.tensor(y)]
            totals[k]["nll"] -= float(logp[3:].sum())
            totals[k]["tokens"] += len(y) - 3
    result = {"command": f"python bench/whisper_tokenizer_labels.py --n {args.n} --threads {args.threads}",
              "git": provenance.git_state(), "created": provenance.now(), "utterances": len(utts),
              "encoded_differently": differ,
              "per_token_nll": {k: round(v["nll"] / v["tokens"], 4) for k, v in totals.items()},
              "label_tokens": {k: v["tokens"] for k, v in totals.items()}}
    OUT.mkdir(exist_ok=True)
    (OUT / "whisper_tokenizer_labels.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
