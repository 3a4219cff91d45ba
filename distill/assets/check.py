"""Sanity checks of converted assets, recorded under results/assets/ with the command that made them.

    python -m distill.assets.check asr --model whisper-base --data librivox-5 cards-5 \
        --out results/assets/wer_whisper-base_librivox-cards.json
    python -m distill.assets.check asr --model whisper-tiny.en --data asterisk-en --min-words 4 \
        --out results/assets/wer_whisper-tiny.en_asterisk-en_min4words.json
    python -m distill.assets.check lm --out results/assets/smollm2_check.json
    python -m distill.assets.check rescore results/assets/<record>.json   # new references, same hypotheses

This is a check of the converters, not the evaluation harness: greedy decoding, Whisper's
EnglishTextNormalizer (with the model's own spelling map) and jiwer's corpus WER.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def normalizer_for(model_dir: Path):
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(json.loads((Path(model_dir) / "normalizer.json").read_text()))


def corpus_wer(refs: list[str], hyps: list[str], normalize) -> tuple[float, int]:
    """Normalised corpus WER (errors / reference words) and the number of pairs scored.

    Pairs whose normalised reference is empty are dropped (WER is undefined for them), as the
    Open ASR Leaderboard does.
    """
    import jiwer

    pairs = [(normalize(r), normalize(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no reference with words to score")
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]), len(pairs)


def transcribe(model_dir: Path, audio_paths: list[str], batch_size: int = 8) -> tuple[list[str], float]:
    """Greedy transcripts in input order, and the seconds spent after a one-batch warm-up."""
    import soundfile as sf
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = WhisperProcessor.from_pretrained(model_dir)
    english_only = not model.generation_config.is_multilingual
    kwargs = {} if english_only else {"language": "en", "task": "transcribe"}
    # Longest first so each batch pads little and the first (warm-up) batch is the heaviest.
    order = sorted(range(len(audio_paths)), key=lambda i: -sf.info(audio_paths[i]).duration)
    out: dict[int, str] = {}

    def run(idx: list[int]) -> list[str]:
        audio = [sf.read(audio_paths[i], dtype="float32")[0] for i in idx]
        feats = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(feats, do_sample=False, num_beams=1, **kwargs)
        return processor.batch_decode(ids, skip_special_tokens=True)

    run(order[:batch_size])  # warm-up, not timed
    elapsed = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        t0 = time.perf_counter()
        texts = run(idx)
        elapsed += time.perf_counter() - t0
        out.update(zip(idx, (t.strip() for t in texts)))
    return [out[i] for i in range(len(audio_paths))], elapsed


def check_asr(model: str, data: list[str], batch_size: int, threads: int, min_words: int,
              max_seconds: float) -> dict:
    import torch

    from distill.assets import asset_path, load_dataset

    torch.set_num_threads(threads)
    rows = [r for d in data for r in load_dataset(d)]
    # Whisper sees 30 s windows; longer prompts would need long-form decoding, which is not
    # what this converter check is about.
    rows = [r for r in rows if len(r["text"].split()) >= min_words and r["duration"] <= max_seconds]
    model_dir = asset_path(model)
    hyps, seconds = transcribe(model_dir, [r["audio_path"] for r in rows], batch_size)
    normalize = normalizer_for(model_dir)
    wer, n_scored = corpus_wer([r["text"] for r in rows], hyps, normalize)
    audio = sum(r["duration"] for r in rows)
    return {
        "check": "asr-wer", "model": f"asset:{model}", "data": [f"asset:{d}" for d in data],
        "wer": round(wer, 4), "n_utterances": len(rows), "n_scored": n_scored,
        "audio_seconds": round(audio, 2), "transcribe_seconds": round(seconds, 2),
        "rtfx": round(audio / seconds, 2),
        "conditions": {"decoding": "greedy", "batch_size": batch_size, "threads": threads,
                       "dtype": "float32", "device": "cpu", "warm_up": "1 batch, untimed",
                       "min_reference_words": min_words, "max_seconds": max_seconds,
                       "normalizer": "transformers EnglishTextNormalizer + whisper english.json",
                       "wer": "jiwer corpus WER"},
        "predictions": [{"id": r["id"], "reference": r["text"], "hypothesis": h} for r, h in zip(rows, hyps)],
    }


def rescore(path: Path) -> dict:
    """Re-score a stored ASR record against the references now in its datasets.

    Hypotheses and timings are kept (raw predictions are stored so that scoring can change
    without re-decoding); only references, WER and the scored count are refreshed.
    """
    from distill.assets import asset_path, load_dataset

    result = json.loads(Path(path).read_text())
    refs = {r["id"]: r["text"] for d in result["data"] for r in load_dataset(d.removeprefix("asset:"))}
    for p in result["predictions"]:
        p["reference"] = refs[p["id"]]
    normalize = normalizer_for(asset_path(result["model"].removeprefix("asset:")))
    wer, n_scored = corpus_wer([p["reference"] for p in result["predictions"]],
                               [p["hypothesis"] for p in result["predictions"]], normalize)
    result.update(wer=round(wer, 4), n_scored=n_scored)
    return result


def check_lm(model: str, data: str, n_texts: int, max_tokens: int, threads: int) -> dict:
    """Mean token NLL on held-out texts and a greedy completion of a factual prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.assets import asset_path, load_dataset

    torch.set_num_threads(threads)
    model_dir = asset_path(model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = load_dataset(data, "heldout").shuffle(seed=0, keep_in_memory=True).select(range(n_texts))["text"]
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
            if ids.shape[1] < 2:
                continue
            loss = lm(ids, labels=ids).loss.item()
            total_nll += loss * (ids.shape[1] - 1)
            total_tokens += ids.shape[1] - 1
        prompt = "The capital of France is"
        ids = tok(prompt, return_tensors="pt").input_ids
        gen = lm.generate(ids, max_new_tokens=12, do_sample=False)
        completion = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                       add_generation_prompt=True, return_tensors="pt")
        answer = tok.decode(lm.generate(chat, max_new_tokens=20, do_sample=False)[0, chat.shape[1]:],
                            skip_special_tokens=True)
    mean = total_nll / total_tokens
    return {
        "check": "lm-heldout-loss", "model": f"asset:{model}", "data": f"asset:{data} (heldout)",
        "mean_token_nll": round(mean, 4), "perplexity": round(math.exp(mean), 2), "finite": math.isfinite(mean),
        "n_texts": len(texts), "n_tokens": total_tokens,
        "bos_prepended": tok("x").input_ids[0] == tok.bos_token_id,
        "prompt": prompt, "completion": completion,
        "chat_prompt": "What is the capital of France?", "chat_answer": answer,
        "conditions": {"max_tokens_per_text": max_tokens, "sample": "shuffle(seed=0)", "threads": threads,
                       "dtype": "float32", "device": "cpu", "decoding": "greedy"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.assets.check", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    asr = sub.add_parser("asr")
    asr.add_argument("--model", required=True)
    asr.add_argument("--data", nargs="+", required=True)
    asr.add_argument("--batch-size", type=int, default=8)
    asr.add_argument("--min-words", type=int, default=0, help="keep references with at least this many words")
    asr.add_argument("--max-seconds", type=float, default=30.0, help="keep clips at most this long")
    lm = sub.add_parser("lm")
    lm.add_argument("--model", default="smollm2-135m-instruct")
    lm.add_argument("--data", default="text-en")
    lm.add_argument("--n-texts", type=int, default=64)
    lm.add_argument("--max-tokens", type=int, default=256)
    for p in (asr, lm):
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", type=Path)
    again = sub.add_parser("rescore", help="re-score a stored ASR record (in place) with current references")
    again.add_argument("record", type=Path)
    args = parser.parse_args(argv)
    if args.what == "rescore":
        result = rescore(args.record)
        result["rescored_with"] = "python -m distill.assets.check " + " ".join(argv if argv is not None else sys.argv[1:])
        args.record.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2))
        return 0
    logging.basicConfig(level=logging.INFO)
    load_before = os.getloadavg()[0]
    if args.what == "asr":
        result = check_asr(args.model, args.data, args.batch_size, args.threads, args.min_words,
                           args.max_seconds)
    else:
        result = check_lm(args.model, args.data, args.n_texts, args.max_tokens, args.threads)
    import torch
    import transformers

    # Timings on a shared machine mean little without the load they were taken under.
    result["conditions"]["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["conditions"]["cpu_count"] = os.cpu_count()
    result["command"] = "python -m distill.assets.check " + " ".join(argv if argv is not None else sys.argv[1:])
    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    summary = {k: v for k, v in result.items() if k != "predictions"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
