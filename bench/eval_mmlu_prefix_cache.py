"""5-shot MMLU scoring with and without the shared few-shot prefix cache, side by side.

Same model, same items, one process: the shared-prefix path (each subject's header + exemplars run
once, KV cache reused) against full-prompt scoring of every question (what lm-eval does). Reports
items/s, the speed-up, and that both pick the same answer on every item.

    python bench/eval_mmlu_prefix_cache.py --subjects astronomy virology --per-subject 12 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="asset:smollm2-135m-instruct")
    ap.add_argument("--subjects", nargs="+", default=["astronomy", "virology"])
    ap.add_argument("--per-subject", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from distill.evaluation import mc
    from distill.evaluation.adapters import ADAPTERS
    from distill.evaluation.data import load_source
    from distill.evaluation.loading import resolve_model
    from distill.evaluation.tasks import load_task

    ref = resolve_model(args.model)
    lm = ADAPTERS[ref.adapter](ref.source, "cpu", ref.manifest)
    rows, counts = [], {}
    for row in load_source("asset:mmlu-mini", "test"):
        if row["subject"] in args.subjects and counts.get(row["subject"], 0) < args.per_subject:
            counts[row["subject"]] = counts.get(row["subject"], 0) + 1
            rows.append(row)
    reqs = mc.build_requests(load_task("mmlu-mini-5shot"), rows, load_source("asset:mmlu-dev"))
    t0 = time.perf_counter()
    cached = mc.score_requests(lm, reqs, batch_size=args.batch_size, desc="shared prefix")
    t_cached = time.perf_counter() - t0
    default_min = mc.MIN_SHARED_PREFIX
    mc.MIN_SHARED_PREFIX = 10**9  # disable: every prompt scored in full
    t0 = time.perf_counter()
    full = mc.score_requests(lm, reqs, batch_size=args.batch_size, desc="full prompts")
    t_full = time.perf_counter() - t0
    mc.MIN_SHARED_PREFIX = default_min
    pick = lambda ll: max(range(len(ll)), key=ll.__getitem__)  # noqa: E731
    result = {
        "model": args.model, "items": len(reqs), "subjects": args.subjects, "shots": 5,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "dtype": lm.dtype,
        "device": platform.processor() or platform.machine(), "timer": "time.perf_counter",
        "seconds_shared_prefix": t_cached, "seconds_full_prompts": t_full,
        "items_per_s_shared_prefix": len(reqs) / t_cached, "items_per_s_full_prompts": len(reqs) / t_full,
        "speedup": t_full / t_cached,
        "identical_choices": sum(pick(a) == pick(b) for a, b in zip(cached, full)),
        "max_abs_loglik_diff": max(abs(x - y) for a, b in zip(cached, full) for x, y in zip(a, b)),
        "command": "python bench/eval_mmlu_prefix_cache.py --subjects " + " ".join(args.subjects)
                   + f" --per-subject {args.per_subject} --threads {args.threads}",
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "eval_mmlu_prefix_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
