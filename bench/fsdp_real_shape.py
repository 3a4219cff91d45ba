"""A few FSDP steps of a real-shaped student through the shared training loop: peak memory vs the plan.

Each process builds the student from a shape-only config (default Qwen3-1.7B, the student of
recipes/moe/qwen3-30b-a3b-to-1.7b.yaml; random weights), shards it with train.parallel fsdp and
takes `--steps` optimizer steps of offline KD: the loss reads a random top-k "cache" of the real
k and vocabulary, as the recipe's training does (the teacher is never loaded). Rank 0 writes, per
process, the measured peak (torch.cuda.max_memory_allocated, or ru_maxrss on CPU) beside
`distill plan`'s per-device total for the same stage, batch, sequence length and process count.
  torchrun --nproc_per_node 2 bench/fsdp_real_shape.py --out bench/results/gpu_check/fsdp_real_shape.json
  (CPU sanity check of the script itself: --config a tiny shape, see bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill import losses, plan, recipe, students  # noqa: E402
from distill.context import RunContext, join_processes  # noqa: E402
from distill.data import Blocks  # noqa: E402
from distill.training import train  # noqa: E402

GIB = 1024**3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/moe/qwen3-30b-a3b-to-1.7b.yaml")
    ap.add_argument("--config", default="recipes/moe/configs/qwen3-1.7b", help="student shape (config.json dir)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="per process")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--work", default="runs/bench-fsdp-real-shape")
    ap.add_argument("--out", default="bench/results/gpu_check/fsdp_real_shape.json")
    args = ap.parse_args()

    from transformers import AutoConfig, AutoModelForCausalLM

    procs = join_processes()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{procs.local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    r = recipe.load(ROOT / args.recipe, [
        "eval=null", f"stages.0.train.steps={args.steps}", "stages.0.train.warmup_steps=0",
        f"stages.0.train.batch_size={args.batch}", "stages.0.train.log_every=1", "stages.0.train.checkpoint_every=1000",
        "stages.0.train.parallel=fsdp", f"stages.0.data.seq_len={args.seq}"])
    stage = r.stages[0]
    cfg = AutoConfig.from_pretrained(ROOT / args.config)
    torch.manual_seed(0)
    with torch.device(device):
        student = AutoModelForCausalLM.from_config(cfg)
    vocab, k = cfg.vocab_size, stage.loss.top_k
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (args.batch * procs.world_size * (args.steps + 1), args.seq), generator=gen)
    work = ROOT / args.work
    if procs.is_main:  # a fresh run each time: no checkpoint to resume from
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    procs.barrier()
    ctx = RunContext(run_dir=work, run_id="bench", recipe=r, recipe_sha256="bench", stage_name="fsdp",
                     procs=procs, scratch_dir=work / f"scratch-{procs.rank}")

    def step(batch: torch.Tensor, rows: list[int]):
        g = torch.Generator().manual_seed(rows[0])  # a random "cache" row: real k, real vocabulary
        top_idx = torch.randint(0, vocab, (*batch.shape, k), generator=g).to(batch.device)
        top_logp = torch.log_softmax(torch.randn(*batch.shape, k + 1, generator=g), -1)[..., :k].to(batch.device)
        hidden = students.final_hidden(student, batch)
        total, kd, ce = losses.chunked_kd_ce(hidden, students.output_head(student)[:vocab], None, None,
                                             losses.shift_labels(batch), kd_weight=1.0, ce_weight=0.1,
                                             chunk_size=stage.loss.chunk_size, teacher_top_idx=top_idx,
                                             teacher_top_logp=top_logp.sort(-1, descending=True).values)
        return total, {"loss": float(total.detach()), "kd": float(kd), "ce": float(ce)}

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    final = train({"student": student}, step, Blocks(tokens, seed=0), stage.train, ctx, with_rows=True)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peaks = [peak]
    if procs.world_size > 1:
        import torch.distributed as dist

        peaks = [None] * procs.world_size
        dist.all_gather_object(peaks, peak)
    if not procs.is_main:
        return
    shape = plan.shape_of("student", cfg)
    # Offline KD: the plan's teacher rows are 0, so the student's shape stands in for the teacher's.
    rows = {label: fn(procs.world_size) for label, fn in plan.device_rows(stage, shape, shape)}
    planned = sum(rows.values())
    out = {"student_config": args.config, "params": shape.params, "processes": procs.world_size,
           "device": torch.cuda.get_device_name(device) if cuda else "cpu", "steps": args.steps,
           "batch_per_process": args.batch, "seq_len": args.seq, "top_k": k, "seconds": round(seconds, 1),
           "final": final, "peak_measured_gib": [round(p / GIB, 3) for p in peaks],
           "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss (whole process)",
           "plan_total_gib": round(planned / GIB, 3), "plan_rows_gib": {k_: round(v / GIB, 3) for k_, v in rows.items()},
           "torch": torch.__version__, "command": "torchrun " + " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"FSDP {procs.world_size} x {out['device']}: peak per process {out['peak_measured_gib']} GiB "
          f"({out['peak_kind']}) vs plan {out['plan_total_gib']} GiB per device")


if __name__ == "__main__":
    main()
