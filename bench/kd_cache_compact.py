"""Teacher-cache formats: bytes/token vs what the cached distribution loses, on a real teacher.

SmolLM2-135M-Instruct (vocab 49,152: 16-bit ids) over held-out `text-en` blocks. For every token the
full teacher distribution P (fp32, all 49,152 ids) is computed once; each cache format stores its
top-k (k=64 by default) and is decoded back exactly as training reads it (distill.teacher_cache).
Reported per format, mean over tokens:
  bytes/token       measured on the encoded tensors (49,152 rows); and for Qwen3's 151,936-row
                    vocab from the same layout (distill.cache_codec.compact_bytes_per_token)
  kl_bucket         KL(P_b || Q_b) over the k+1 buckets the KD loss compares (the k ids + the
                    tail): the error the format adds to the training target (0 = exact top-k)
  kl_full           KL(P || Q) over the whole vocabulary, with Q's tail mass spread evenly over the
                    ids outside the top-k: dominated by top-k truncation itself, same for all formats
  max_abs_logp      largest error of a cached log-prob vs the exact top-k value
  python bench/kd_cache_compact.py [--tokens 4096] [--k 64] > bench/results/kd_cache_compact.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from distill import cache_codec
from distill.assets import asset_path
from distill.data import pack, read_texts, tokenize
from distill.models import load_causal_lm
from distill.recipe import ModelRef

QWEN3_VOCAB = 151_936
BITS = (1, 2, 3, 4, 5, 6, 8)


def bucket_logp(top_logp: torch.Tensor) -> torch.Tensor:
    """[n, k] log-probs -> [n, k+1] with the tail bucket, as distill.losses builds the KD target."""
    rest = torch.logsumexp(top_logp, dim=-1, keepdim=True).clamp(max=0.0)
    return torch.cat([top_logp, torch.log((-torch.expm1(rest)).clamp(min=1e-30))], dim=-1)


def bucket_kl(p_top: torch.Tensor, q_top: torch.Tensor) -> torch.Tensor:
    """KL over k+1 buckets from top-k log-probs [n, k] (each with its own tail). -> [n]."""
    pb, qb = bucket_logp(p_top), bucket_logp(q_top)
    return (pb.exp() * (pb - qb)).sum(-1)


def full_kl(p_full: torch.Tensor, ids: torch.Tensor, q_top: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the vocabulary; Q = decoded top-k + its tail spread over the other ids. -> [n]."""
    vocab, k = p_full.shape[-1], ids.shape[-1]
    tail = bucket_logp(q_top)[:, -1:]
    q = (tail - torch.log(torch.tensor(float(vocab - k)))).expand(-1, vocab).clone()
    q.scatter_(1, ids, q_top)
    return (p_full.exp() * (p_full - q)).sum(-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = open("/proc/loadavg").read().split()[:3]

    model, tok = load_causal_lm(ModelRef(source=f"{asset_path('smollm2-135m-instruct')}"))
    ids_all = tokenize(read_texts("asset:text-en", "heldout"), tok, args.tokens)
    blocks = pack(ids_all, args.seq_len)
    vocab = model.get_output_embeddings().weight.shape[0]
    names = ["fp16 (ids uint16 / int32, log-probs fp16)"] + [f"compact, logp_bits {b}" for b in BITS]
    stats = {n: {"bucket": [], "full": [], "max_abs": 0.0} for n in names}
    truncation, tails = [], []
    t0 = time.perf_counter()
    for i in range(len(blocks)):  # one block at a time: a [tokens, 49152] fp32 tensor is 200 KB a token
        with torch.no_grad():
            p_full = torch.log_softmax(model(input_ids=blocks[i : i + 1]).logits[0].float(), -1)
        exact_v, exact_i = p_full.topk(args.k, -1)
        order = exact_i.argsort(-1)  # the compact format returns ids ascending: compare by id
        by_id_i, by_id_v = exact_i.gather(-1, order), exact_v.gather(-1, order)
        truncation.append(full_kl(p_full, exact_i, exact_v))
        tails.append(-torch.expm1(torch.logsumexp(exact_v, -1)))
        decoded = {names[0]: (by_id_i, by_id_v.half().float())}
        for bits, name in zip(BITS, names[1:]):
            enc = cache_codec.encode_compact(exact_i, exact_v, vocab, bits)
            assert sum(t.shape[1] * t.element_size() for t in enc.values()) == cache_codec.compact_bytes_per_token(
                args.k, vocab, bits)
            decoded[name] = cache_codec.decode_compact(enc, args.k, vocab, bits)
        for name, (ids, logp) in decoded.items():
            assert torch.equal(ids, by_id_i)
            stats[name]["bucket"].append(bucket_kl(by_id_v, logp))
            stats[name]["full"].append(full_kl(p_full, ids, logp))
            stats[name]["max_abs"] = max(stats[name]["max_abs"], float((logp - by_id_v).abs().max()))
    seconds = time.perf_counter() - t0

    out = {"teacher": "asset:smollm2-135m-instruct (GGUF Q4_1 dequantized to fp32)", "vocab": vocab,
           "data": "asset:text-en heldout", "tokens": int(blocks.numel()), "seq_len": args.seq_len,
           "top_k": args.k, "threads": args.threads, "seconds": round(seconds, 1),
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "loadavg_before": load_before, "command": "python " + " ".join(sys.argv),
           "truncation_kl_full_exact_topk_mean": float(torch.cat(truncation).mean()),
           "teacher_tail_mass_mean": float(torch.cat(tails).mean()), "formats": []}
    sizes = {names[0]: (4 * args.k, 6 * args.k)}
    size = cache_codec.compact_bytes_per_token
    sizes.update({n: (size(args.k, vocab, b), size(args.k, QWEN3_VOCAB, b))
                  for b, n in zip(BITS, names[1:])})
    for name in names:
        bucket, full = torch.cat(stats[name]["bucket"]), torch.cat(stats[name]["full"])
        out["formats"].append({
            "format": name, "bytes_per_token": sizes[name][0], "bytes_per_token_qwen3_vocab": sizes[name][1],
            "kl_bucket_mean": float(bucket.mean()), "kl_bucket_p99": float(bucket.quantile(0.99)),
            "kl_full_mean": float(full.mean()), "max_abs_logp": stats[name]["max_abs"],
        })
        print(out["formats"][-1], file=sys.stderr)
    out["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
