"""The training loop every training stage shares: AdamW, warm-up + cosine, accumulation, clipping,
checkpoints and exact resume.

Exact resume: a checkpoint holds the weights (safetensors), optimizer and scheduler state, torch
RNG state and the step. The data order is a pure function of (seed, step) (see data.Blocks), so
restoring the step restores the data position too.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.context import RunContext
    from distill.data import Blocks
    from distill.recipe import TrainSpec

logger = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
KEEP_CHECKPOINTS = 2


def lr_lambda(spec: TrainSpec) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warm-up, then cosine down to min_lr_ratio."""

    def factor(step: int) -> float:
        if spec.warmup_steps and step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        span = max(1, spec.steps - spec.warmup_steps)
        progress = min(1.0, (step - spec.warmup_steps) / span)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_checkpoint(ckpt_root: Path, step: int, modules: dict[str, torch.nn.Module], optimizer,
                    scheduler, extra: dict) -> Path:
    """Write step-NNNNNNN/ via a temp dir + rename, then prune old checkpoints."""
    from safetensors.torch import save_model

    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f"step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_model(module, str(tmp / f"{name}.safetensors"))  # handles tied weights
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, scheduler) -> dict:
    from safetensors.torch import load_model

    for name, module in modules.items():
        load_model(module, str(path / f"{name}.safetensors"))
    state = torch.load(path / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return json.loads((path / "state.json").read_text())


def train(
    modules: dict[str, torch.nn.Module],
    step_fn: StepFn,
    blocks: Blocks,
    spec: TrainSpec,
    ctx: RunContext,
    eval_fn: Callable[[], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Optimise the parameters of `modules` (e.g. {"student": model, "proj": projections}).

    step_fn(batch [B, S] token ids) -> (loss to minimise, metrics to log). Returns final metrics.
    """
    from tqdm.auto import tqdm

    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec))
    ckpt_root = ctx.checkpoint_dir()
    ckpt_root.mkdir(parents=True, exist_ok=True)

    start, tokens_seen = 0, 0
    last = latest_checkpoint(ckpt_root)
    if last is not None:
        state = load_checkpoint(last, modules, optimizer, scheduler)
        start, tokens_seen = state["step"], state.get("tokens_seen", 0)
        logger.info("resumed from %s (step %d)", last.name, start)

    for m in modules.values():
        m.train()
    rows_per_step = spec.batch_size * spec.grad_accum
    final: dict[str, float] = {}
    bar = tqdm(range(start, spec.steps), initial=start, total=spec.steps, desc=ctx.stage_name,
               unit="step", dynamic_ncols=True)
    window_t, window_tok = time.perf_counter(), 0
    for step in bar:
        metrics_sum: dict[str, float] = {}
        for micro in range(spec.grad_accum):
            batch = blocks.batch(step * rows_per_step + micro * spec.batch_size, spec.batch_size)
            loss, metrics = step_fn(batch)
            if not torch.isfinite(loss):
                good = latest_checkpoint(ckpt_root)
                raise DistillError(
                    f"loss became {loss.item()} at step {step} (stage {ctx.stage_name})",
                    f"lower the lr or check the data; last good checkpoint: "
                    f"{good.name if good else 'none'} (resume with --resume after changing the recipe)",
                )
            (loss / spec.grad_accum).backward()
            for k, v in metrics.items():
                metrics_sum[k] = metrics_sum.get(k, 0.0) + v / spec.grad_accum
            window_tok += batch.numel()
        if spec.max_grad_norm:
            metrics_sum["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += rows_per_step * batch.shape[1]
        done = step + 1

        if done % spec.log_every == 0 or done == spec.steps:
            elapsed = time.perf_counter() - window_t
            metrics_sum.update(lr=scheduler.get_last_lr()[0], tokens=tokens_seen,
                               tok_per_s=window_tok / max(elapsed, 1e-9))
            window_t, window_tok = time.perf_counter(), 0
            if eval_fn is not None and spec.eval_every and done % spec.eval_every == 0:
                metrics_sum.update(eval_fn())
            ctx.log_metrics(done, **metrics_sum)
            bar.set_postfix(loss=f"{metrics_sum.get('loss', float('nan')):.4f}",
                            tok_s=f"{metrics_sum['tok_per_s']:.0f}")
            final = metrics_sum
        if done % spec.checkpoint_every == 0 and done < spec.steps:
            save_checkpoint(ckpt_root, done, modules, optimizer, scheduler, {"tokens_seen": tokens_seen})
    bar.close()
    for m in modules.values():
        m.eval()
    if eval_fn is not None:
        final.update(eval_fn())
        ctx.log_metrics(spec.steps, **{k: v for k, v in final.items() if k.startswith("eval_")})
    return final
