"""The training loop every training stage shares: AdamW, warm-up + cosine, accumulation, clipping,
checkpoints, exact resume, and data parallelism through accelerate.

Exact resume: a checkpoint holds the weights (safetensors), optimizer and scheduler state, the
python/numpy/torch RNG states and the step. The data order is a pure function of (seed, step)
(see data.Blocks), so restoring the step restores the data position too.

Data parallel (`torchrun` or `accelerate launch`): `batch_size` is per process, so one optimizer
step sees batch_size x grad_accum x world_size rows. Rank r of micro-batch m reads the rows right
after ranks < r, so a 2-process run reads exactly the rows a 1-process run with twice the batch
reads, and (DDP averaging gradients) follows the same loss trajectory.

train.parallel fsdp shards weights, gradients and AdamW state over the processes instead of
replicating them (distill.distributed: FSDP2, one unit per decoder block); same rows, same
trajectory. The optimizer is built over the sharded parameters, then optimizer and scheduler go
through accelerator.prepare (model first, as accelerate documents for FSDP); under DDP model,
optimizer and scheduler are prepared together.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.context import RunContext
    from distill.data import Blocks
    from distill.recipe import TrainSpec

logger = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
KEEP_CHECKPOINTS = 2
SEEN = {"tok": "tokens", "utt": "utterances"}  # train(unit=...) -> the logged count of what was seen


def lr_lambda(spec: TrainSpec) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warm-up, then cosine down to min_lr_ratio."""

    def factor(step: int) -> float:
        if spec.warmup_steps and step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        span = max(1, spec.steps - spec.warmup_steps)
        progress = min(1.0, (step - spec.warmup_steps) / span)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _finished(ckpt_root: Path) -> list[Path]:
    return sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = _finished(ckpt_root)
    return done[-1] if done else None


def _rng_state() -> dict:
    # Plain containers and tensors only, so torch.load(weights_only=True) can read them back.
    np_state = np.random.get_state()
    return {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "numpy_rng": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                          int(np_state[3]), float(np_state[4])]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if "python_rng" in state:
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy_rng" in state:
        name, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(ckpt_root: Path, step: int, modules: dict[str, torch.nn.Module], optimizer,
                    scheduler, extra: dict, full_state: tuple[dict, dict] | None = None) -> Path:
    """Write step-NNNNNNN/ via a temp dir + rename, then prune old checkpoints.

    full_state: (per-module weights, optimizer state) already gathered from FSDP shards; without it
    the modules and optimizer are read as they are (1 process or DDP).
    """
    from safetensors.torch import save_file, save_model

    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f"step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        if full_state is None:
            save_model(module, str(tmp / f"{name}.safetensors"))  # handles tied weights
        else:
            save_file({k: v.contiguous() for k, v in full_state[0][name].items()}, str(tmp / f"{name}.safetensors"))
    optim_state = optimizer.state_dict() if full_state is None else full_state[1]
    torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(), **_rng_state()},
               tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _finished(ckpt_root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG; optimizer None = weights only (FSDP loads its
    name-keyed optimizer state after sharding, see `checkpoint_optimizer_state`)."""
    from safetensors.torch import load_file, load_model

    from distill import distributed

    info = json.loads((path / "state.json").read_text())
    for name, module in modules.items():
        if info.get("parallel") == distributed.FSDP:
            distributed.load_full(module, load_file(str(path / f"{name}.safetensors")))
        else:
            load_model(module, str(path / f"{name}.safetensors"))
    if optimizer is not None:
        state = torch.load(path / "trainer.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state)
    return info


def checkpoint_optimizer_state(path: Path, scheduler) -> dict:
    """The optimizer state of a checkpoint (scheduler and RNG restored on the way)."""
    state = torch.load(path / "trainer.pt", weights_only=True)
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state)
    return state["optimizer"]


class _Stepper(torch.nn.Module):
    """Wraps the trainable modules so DDP sees every parameter the step function touches."""

    def __init__(self, modules: dict[str, torch.nn.Module], step_fn: StepFn):
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)
        self.step_fn = step_fn

    def forward(self, *args):
        return self.step_fn(*args)


def has_experts(modules: dict[str, torch.nn.Module]) -> bool:
    """True for mixture-of-experts models: in a step, one rank's tokens may bypass some experts."""
    return any(name.rsplit(".", 1)[-1] == "experts"
               for module in modules.values() for name, _ in module.named_modules())


def make_accelerator(dtype: str, unused_params: bool = False):
    """accelerate's Accelerator: CPU (gloo under torchrun) without a GPU; bf16 autocast on GPU.

    unused_params: DDP skips parameters that got no gradient on a rank instead of waiting for
    them (costs an autograd-graph walk per step, so only asked for when needed).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise DistillError("accelerate's own FSDP plugin is on (distributed_type: FSDP in the accelerate "
                           "config); distill shards the model itself",
                           "set train.parallel: fsdp in the recipe and launch with "
                           "configs/accelerate/ddp-gpu.yaml (a plain multi-GPU launch) or torchrun")
    cuda = torch.cuda.is_available()
    precision = "bf16" if dtype == "bfloat16" or (dtype == "auto" and cuda) else "no"
    ddp = DistributedDataParallelKwargs(find_unused_parameters=unused_params)
    # step_scheduler_with_optimizer=False: the prepared scheduler steps once per optimizer step, not
    # once per process (accelerate's default), so the lr trajectory does not depend on the world size.
    return Accelerator(cpu=not cuda, mixed_precision=precision, kwargs_handlers=[ddp],
                       step_scheduler_with_optimizer=False)


def micro_batch(spec: TrainSpec, world: int) -> int:
    """Rows per process per micro-batch: batch_size, or global_batch split over the processes."""
    if spec.global_batch is None:
        return spec.batch_size
    per, rest = divmod(spec.global_batch, world * spec.grad_accum)
    if rest or not per:
        raise DistillError(
            f"train.global_batch {spec.global_batch} does not split over {world} process(es) x grad_accum "
            f"{spec.grad_accum}",
            f"launch a number of processes that divides {spec.global_batch // spec.grad_accum}, or change "
            "train.global_batch / train.grad_accum",
        )
    return per


def check_processes(recipe, world: int) -> None:
    """At run start, before the run directory exists: every training stage's global_batch splits
    over `world` processes (the same error train() would raise later, after the work before it)."""
    for i, stage in enumerate(recipe.stages):
        spec = getattr(stage, "train", None)
        if getattr(spec, "global_batch", None) is not None:
            try:
                micro_batch(spec, world)
            except DistillError as err:
                raise DistillError(f"stages.{i}: {err.problem}", err.fix) from None


def _check_resumable(state: dict, world: int, parallel: str, path: Path) -> None:
    """A checkpoint continues exactly only with the process count and sharding it was written with."""
    saved_world, saved_parallel = state.get("world_size", world), state.get("parallel", "ddp")
    if saved_world != world or saved_parallel != parallel:
        raise DistillError(
            f"checkpoint {path} was written by {saved_world} process(es) with parallel {saved_parallel}; "
            f"this run has {world} with parallel {parallel}",
            f"resume with {saved_world} processes and train.parallel {saved_parallel} "
            f"(e.g. torchrun --nproc_per_node {saved_world} -m distill run --resume ...)",
        )


def train(
    modules: dict[str, torch.nn.Module],
    step_fn: StepFn,
    blocks: Blocks,
    spec: TrainSpec,
    ctx: RunContext,
    eval_fn: Callable[[], dict[str, float]] | None = None,
    with_rows: bool = False,
    unit: str = "tok",
) -> dict[str, float]:
    """Optimise the parameters of `modules` (e.g. {"student": model, "proj": projections}).

    step_fn(batch [B, S] token ids) -> (loss to minimise, metrics to log); with `with_rows` it is
    called as step_fn(batch, rows) with the block indices (e.g. to look up a teacher cache).
    unit names what one element of `blocks` is, for the logged rate (`<unit>_per_s`) and the
    progress bar: "tok" for token blocks, "utt" where each row is one utterance's index (speech).
    Returns final metrics.
    On a non-finite loss it stops with a DistillError naming the step and the last good
    checkpoint (which it never overwrites).
    """
    from tqdm.auto import tqdm

    from distill import distributed

    experts = has_experts(modules)
    acc = make_accelerator(spec.dtype, unused_params=experts)
    world, rank = acc.num_processes, acc.process_index
    batch_size = micro_batch(spec, world)
    fsdp = spec.parallel == distributed.FSDP and world > 1
    if spec.parallel == distributed.FSDP:
        distributed.check_shardable(modules)  # also with 1 process: the recipe must run on N
    ckpt_root = ctx.checkpoint_dir()  # rank 0 writes checkpoints; every rank resumes from them
    if acc.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    start, tokens_seen = 0, 0
    last = latest_checkpoint(ckpt_root)
    if last is not None:
        state = json.loads((last / "state.json").read_text())
        _check_resumable(state, world, spec.parallel if world > 1 else "ddp", last)

    stepper = _Stepper(modules, step_fn)
    if fsdp:
        if last is not None:  # full weights into the plain modules, then shard them
            load_checkpoint(last, modules, None, None)
        stepper = distributed.shard(stepper, modules, experts=experts)
        params = [p for p in stepper.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec))
        if last is not None:
            distributed.load_optimizer(stepper, optimizer, checkpoint_optimizer_state(last, scheduler))
        optimizer, scheduler = acc.prepare(optimizer, scheduler)
    else:
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec))
        if last is not None:
            load_checkpoint(last, modules, optimizer, scheduler)
        stepper, optimizer, scheduler = acc.prepare(stepper, optimizer, scheduler)  # DDP only when world > 1
    if last is not None:
        start, tokens_seen = state["step"], state.get("tokens_seen", 0)
        logger.info("resumed from %s (step %d)", last.name, start)
    saved_as = {"world_size": world, "parallel": distributed.FSDP if fsdp else "ddp"}

    def checkpoint(done: int) -> None:
        full = None
        if fsdp:  # every rank takes part in gathering; rank 0 writes
            model_sd, optim_sd = distributed.full_state(stepper, optimizer.optimizer)
            full = (distributed.split_by_module(model_sd, modules), optim_sd) if acc.is_main_process else None
        if acc.is_main_process:
            save_checkpoint(ckpt_root, done, modules, optimizer, scheduler,
                            {"tokens_seen": tokens_seen, **saved_as}, full_state=full)
        acc.wait_for_everyone()

    def evaluate() -> dict[str, float]:
        if not fsdp:
            return eval_fn()
        stepper.unshard()  # the root unit's weights (embeddings, head); blocks gather their own
        try:
            return eval_fn()
        finally:
            stepper.reshard()

    stepper.train()
    writer = _tensorboard(ctx) if acc.is_main_process else None
    rows_per_step = batch_size * spec.grad_accum * world
    final: dict[str, float] = {}
    bar = tqdm(range(start, spec.steps), initial=start, total=spec.steps, desc=ctx.stage_name,
               unit="step", dynamic_ncols=True, disable=not acc.is_main_process)
    window_t, window_tok = time.perf_counter(), 0
    for step in bar:
        metrics_sum: dict[str, float] = {}
        for micro in range(spec.grad_accum):
            position = step * rows_per_step + (micro * world + rank) * batch_size
            rows = blocks.rows(position, batch_size)
            batch = blocks.tokens[rows].to(acc.device)
            sync = micro == spec.grad_accum - 1
            if fsdp:
                distributed.set_gradient_sync(stepper, sync)
            with (acc.no_sync(stepper) if not sync and world > 1 and not fsdp else _nullcontext()), acc.autocast():
                loss, metrics = stepper(batch, rows) if with_rows else stepper(batch)
                _check_finite(loss, step, ctx, ckpt_root, acc)
                acc.backward(loss / spec.grad_accum)
            for k, v in metrics.items():
                metrics_sum[k] = metrics_sum.get(k, 0.0) + v / spec.grad_accum
            window_tok += batch.numel() * world
        if fsdp and experts:
            distributed.drop_unused_grads(params)
        if spec.max_grad_norm:
            norm = acc.clip_grad_norm_(params, spec.max_grad_norm)
            metrics_sum["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += rows_per_step * batch.shape[1]
        done = step + 1

        if done % spec.log_every == 0 or done == spec.steps:
            if world > 1:  # log the global mean, not rank 0's share
                keys = sorted(metrics_sum)
                vals = acc.reduce(torch.tensor([metrics_sum[k] for k in keys], device=acc.device), "mean")
                metrics_sum = dict(zip(keys, vals.tolist()))
            elapsed = time.perf_counter() - window_t
            metrics_sum.update({"lr": scheduler.get_last_lr()[0], SEEN[unit]: tokens_seen,
                                f"{unit}_per_s": window_tok / max(elapsed, 1e-9)})
            window_t, window_tok = time.perf_counter(), 0
            if eval_fn is not None and spec.eval_every and done % spec.eval_every == 0:
                stepper.eval()
                metrics_sum.update(evaluate())
                stepper.train()
            if acc.is_main_process:
                ctx.log_metrics(done, **metrics_sum)
                if writer is not None:
                    for k, v in metrics_sum.items():
                        writer.add_scalar(f"{ctx.stage_name}/{k}", v, done)
            bar.set_postfix({"loss": f"{metrics_sum.get('loss', float('nan')):.4f}",
                             f"{unit}/s": f"{metrics_sum[f'{unit}_per_s']:.3g}"})
            final = metrics_sum
        if done % spec.checkpoint_every == 0 and done < spec.steps:
            checkpoint(done)
    bar.close()
    stepper.eval()
    if fsdp:  # the stage saves and evaluates plain modules holding the full trained weights
        distributed.unwrap(stepper)
    if eval_fn is not None:
        final.update(eval_fn())
        if acc.is_main_process:
            ctx.log_metrics(spec.steps, **{k: v for k, v in final.items() if k.startswith("eval_")})
    if writer is not None:
        writer.close()
    return final


def _check_finite(loss: torch.Tensor, step: int, ctx: RunContext, ckpt_root: Path, acc) -> None:
    """Stop on nan/inf (on every rank together), naming the step and the last good checkpoint."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()) else 1.0], device=loss.device)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, "sum")
    if bad.item():
        good = latest_checkpoint(ckpt_root)
        raise DistillError(
            f"loss became {loss.item()} at step {step + 1} (stage {ctx.stage_name}); stopped without "
            f"saving this step",
            f"lower the lr or check the data; the last good checkpoint is "
            f"{good if good else 'none (no checkpoint was written yet)'}",
        )


def _tensorboard(ctx: RunContext):
    """A TensorBoard writer under <run>/tensorboard, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(ctx.run_dir / "tensorboard" / ctx.stage_name))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
