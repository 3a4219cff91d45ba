"""Cross-check and speed comparison: our MMLU scoring vs lm-evaluation-harness, same model, same items.

Both run in this process on the same already-loaded model (load time excluded from both), over the
same rows: the first N test items of every subject of `mmlu-mini` and the subject's `mmlu-dev`
exemplars. lm-eval gets one task per subject, built from its own `_default_template_yaml` with the
dataset pointed at local JSON files, and its HF backend (HFLM). Compared per item: the chosen
letter, and the four log-likelihoods.

    DISTILL_CACHE=... python bench/eval_mmlu_vs_lmeval.py --per-subject 4 --shots 0 5 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

OUT = Path(__file__).parent / "results"


def lm_eval_tasks(tmp: Path, test_rows: list[dict], dev_rows: list[dict]) -> list[str]:
    """One lm-eval task YAML per subject (its real template), data from local JSON files."""
    import lm_eval

    template_file = Path(lm_eval.__file__).parent / "tasks/mmlu/default/_default_template_yaml"
    template = yaml.safe_load(template_file.read_text())
    names = []
    for subject in sorted({r["subject"] for r in test_rows}):
        test = [r for r in test_rows if r["subject"] == subject]
        dev = [r for r in dev_rows if r["subject"] == subject]
        (tmp / f"{subject}.test.jsonl").write_text("\n".join(json.dumps(r) for r in test))
        (tmp / f"{subject}.dev.jsonl").write_text("\n".join(json.dumps(r) for r in dev) or "")
        cfg = dict(template)
        cfg.update(task=f"bench_mmlu_{subject}", dataset_path="json",
                   dataset_kwargs={"data_files": {"test": str(tmp / f"{subject}.test.jsonl"),
                                                  "dev": str(tmp / f"{subject}.dev.jsonl")}},
                   description="The following are multiple choice questions (with answers) about "
                               f"{' '.join(subject.split('_'))}.\n\n")
        (tmp / f"bench_mmlu_{subject}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        names.append(cfg["task"])
    return names


def run_lm_eval(lm, names, tmp, shots, batch_size):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=hflm, tasks=names, num_fewshot=shots, batch_size=batch_size,
                                  log_samples=True, task_manager=TaskManager(include_path=str(tmp)),
                                  bootstrap_iters=0)
    seconds = time.perf_counter() - t0
    per_item = {}
    for name in names:
        for s in out["samples"][name]:
            per_item[s["doc"]["id"]] = [float(r[0]) for r in s["filtered_resps"]]
    return per_item, seconds


def run_ours(lm, test_rows, dev_rows, shots, batch_size):
    from distill.evaluation import mc
    from distill.evaluation.tasks import load_task

    spec = load_task("mmlu-mini-5shot").model_copy(update={"num_fewshot": shots})
    t0 = time.perf_counter()
    requests = mc.build_requests(spec, test_rows, dev_rows)
    lls = mc.score_requests(lm, requests, batch_size=batch_size, desc=f"ours {shots}-shot")
    seconds = time.perf_counter() - t0
    return {r.item_id: ll for r, ll in zip(requests, lls)}, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="asset:smollm2-135m-instruct")
    ap.add_argument("--per-subject", type=int, default=4, help="first N mmlu-mini items per subject")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 5])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from distill.evaluation import metrics
    from distill.evaluation.adapters import ADAPTERS
    from distill.evaluation.data import load_source
    from distill.evaluation.loading import resolve_model

    ref = resolve_model(args.model)
    lm = ADAPTERS[ref.adapter](ref.source, "cpu", ref.manifest)
    counts: dict[str, int] = {}
    test_rows = []
    for row in load_source("asset:mmlu-mini", "test"):
        if counts.get(row["subject"], 0) < args.per_subject:
            counts[row["subject"]] = counts.get(row["subject"], 0) + 1
            test_rows.append(row)
    dev_rows = load_source("asset:mmlu-dev")
    # lm-eval refuses a subject with fewer exemplars than shots (ours warns and uses what exists):
    # compare on the subjects both can score.
    pool: dict[str, int] = {}
    for row in dev_rows:
        pool[row["subject"]] = pool.get(row["subject"], 0) + 1
    test_rows = [r for r in test_rows if pool.get(r["subject"], 0) >= max(args.shots)]
    report = {"model": args.model, "items": len(test_rows), "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "device": platform.processor() or platform.machine(),
              "dtype": lm.dtype, "timer": "time.perf_counter, model load excluded, prompts+scoring included",
              "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        names = lm_eval_tasks(Path(tmp), test_rows, dev_rows)
        for shots in args.shots:
            ours, t_ours = run_ours(lm, test_rows, dev_rows, shots, args.batch_size)
            theirs, t_theirs = run_lm_eval(lm, names, Path(tmp), shots, args.batch_size)
            assert set(ours) == set(theirs), "item sets differ"
            gold = {r["id"]: r["answer"] for r in test_rows}
            same = sum(metrics.argmax_first(ours[i]) == metrics.argmax_first(theirs[i]) for i in ours)
            diff = max(abs(a - b) for i in ours for a, b in zip(ours[i], theirs[i]))
            acc = lambda d: sum(metrics.argmax_first(d[i]) == gold[i] for i in d) / len(d)  # noqa: E731
            run = {"shots": shots, "acc_ours": acc(ours), "acc_lm_eval": acc(theirs),
                   "identical_choices": same, "n": len(ours), "max_abs_loglik_diff": diff,
                   "seconds_ours": t_ours, "seconds_lm_eval": t_theirs,
                   "items_per_s_ours": len(ours) / t_ours, "items_per_s_lm_eval": len(theirs) / t_theirs,
                   "speedup": t_theirs / t_ours, "load_average_1min_after": os.getloadavg()[0]}
            print(json.dumps(run))
            report["runs"].append(run)
            write(report, args)  # after every shot count: a long 5-shot run may be stopped


def write(report: dict, args) -> None:
    OUT.mkdir(exist_ok=True)
    report = dict(report, runs=list(report["runs"]))
    # Keep earlier runs with other shot counts (each run line carries its own command/conditions).
    previous = OUT / "eval_mmlu_vs_lmeval.json"
    done = {r["shots"] for r in report["runs"]}
    if previous.is_file():
        old = json.loads(previous.read_text())
        kept = [r for r in old.get("runs", []) if r["shots"] not in done]
        for r in kept:
            r.setdefault("conditions", {k: old[k] for k in ("items", "batch_size", "threads") if k in old})
        report["runs"] = sorted(kept + report["runs"], key=lambda r: r["shots"])
    for r in report["runs"]:
        r.setdefault("conditions", {"items": report["items"], "batch_size": args.batch_size,
                                    "threads": report["threads"]})
    previous.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# MMLU: distill vs lm-evaluation-harness {__import__('lm_eval').__version__}", "",
             f"Model `{args.model}`, first N mmlu-mini items of every subject, batch {args.batch_size}, "
             f"{report['dtype']}, {report['device']}; {report['timer']}. Both scorers run in one "
             f"process, one after the other, on the same loaded model. Latest command: "
             f"`python bench/eval_mmlu_vs_lmeval.py --per-subject {args.per_subject} --shots "
             f"{' '.join(map(str, args.shots))} --batch-size {args.batch_size} --threads {report['threads']}`. "
             "5-shot: our scorer runs each subject's shared few-shot prefix once (KV cache) and every "
             "question then costs only its own tokens; lm-eval scores every full prompt.", "",
             "| shots | items | threads | acc ours | acc lm-eval | identical choices | max abs loglik diff | "
             "items/s ours | items/s lm-eval | speed-up | load avg after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        c = r["conditions"]
        lines.append(f"| {r['shots']} | {c.get('items')} | {c.get('threads')} | {r['acc_ours']:.4f} | {r['acc_lm_eval']:.4f} | "
                     f"{r['identical_choices']}/{r['n']} | {r['max_abs_loglik_diff']:.2e} | "
                     f"{r['items_per_s_ours']:.2f} | {r['items_per_s_lm_eval']:.2f} | {r['speedup']:.2f}x | "
                     f"{r.get('load_average_1min_after', float('nan')):.1f} |")
    (OUT / "eval_mmlu_vs_lmeval.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
