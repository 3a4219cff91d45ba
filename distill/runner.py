"""`distill run`: create the run directory, record provenance, run the stages, evaluate.

runs/<run_id>/
  recipe.resolved.yaml   the recipe after overrides and interpolation (re-loadable)
  provenance.json        git sha + dirty flag, versions, machine, seeds, start/end time
  metrics.jsonl          one JSON line per logged training step
  checkpoints/<stage>/   resumable training state
  artifacts/<stage>/     one artifact per stage (manifest.json written last)
  results/               evaluation records, when the recipe has an `eval` block

A stage whose artifact has a manifest is finished and is skipped on `--resume`; anything else
is redone, continuing from its latest checkpoint.

Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) rank 0 owns the run directory: it creates
it, writes every record, artifact, checkpoint and metric, runs the stages that do not train
(quantize, export) and the evaluation. Every rank runs the training stages (DDP); the others
read the resolved recipe, the checkpoints and earlier stages' artifacts that rank 0 wrote.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from distill import artifacts, provenance
from distill import recipe as recipe_mod
from distill.artifacts import Artifact
from distill.context import Processes, RunContext, join_processes
from distill.errors import DistillError
from distill.recipe import Recipe, TrainSpec

logger = logging.getLogger(__name__)

RESOLVED = "recipe.resolved.yaml"
PROVENANCE = "provenance.json"


@dataclass
class RunResult:
    run_dir: Path
    artifacts: dict[str, Artifact]
    records: list[Path]
    rank: int = 0  # ranks > 0 return no artifacts or records: rank 0's result is the run's


def new_run_dir(recipe: Recipe, sha: str) -> tuple[str, Path]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{recipe.name}-{stamp}-{sha[:6]}"
    run_id, n = base, 1
    while (Path(recipe.output_dir) / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    run_dir = Path(recipe.output_dir) / run_id
    run_dir.mkdir(parents=True)
    return run_id, run_dir


def open_run(run_dir: str | Path) -> tuple[Recipe, Path]:
    """The recipe of an existing run directory (for --resume)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESOLVED).is_file() or not (run_dir / PROVENANCE).is_file():
        raise DistillError(f"'{run_dir}' is not a run directory (no {RESOLVED} / {PROVENANCE})",
                           "pass a directory created by `distill run`, e.g. runs/<run_id>")
    return recipe_mod.load(run_dir / RESOLVED), run_dir


def pick_device(procs: Processes) -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{procs.local_rank}" if procs.world_size > 1 else "cuda"


def start_run(recipe_path: str | Path, overrides: list[str] | None) -> tuple[Recipe, Path, dict]:
    """Load + check the recipe, create its run directory, write the resolved recipe (rank 0)."""
    recipe = recipe_mod.load(recipe_path, overrides)
    for note in recipe_mod.check_references(recipe, strict=True):
        logger.warning(note)
    sha = recipe_mod.sha256(recipe)
    run_id, run_dir = new_run_dir(recipe, sha)
    (run_dir / RESOLVED).write_text(recipe_mod.dump(recipe))
    prov = {"run_id": run_id, "recipe_source": str(recipe_path), "overrides": overrides or [],
            "recipe_sha256": sha, "git": provenance.git_state(), "seeds": provenance.seeds(recipe.seed),
            "start_time": provenance.now(), "end_time": None}
    return recipe, run_dir, prov


def run(recipe_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: str | Path | None = None) -> RunResult:
    """Run a recipe end to end (or finish an interrupted run when `resume` is given)."""
    procs = join_processes()
    if resume is not None:
        if overrides:
            raise DistillError("overrides cannot be combined with --resume",
                               "a resumed run keeps its recorded recipe; start a new run instead")
        recipe, run_dir = open_run(resume)
        prov = json.loads((run_dir / PROVENANCE).read_text())
        recorded = prov.get("world_size", 1)
        if recorded != procs.world_size:  # batch_size is per process: the global batch would change
            raise DistillError(f"run '{run_dir}' was started with {recorded} process(es), this resume has "
                               f"{procs.world_size}", f"resume with the same number of processes "
                               f"(e.g. torchrun --nproc_per_node {recorded} -m distill run --resume ...)")
        prov.setdefault("resumed", []).append(provenance.now())
    else:
        if recipe_path is None:
            raise DistillError("no recipe given", "distill run RECIPE.yaml [key=value ...]")
        if procs.is_main:
            recipe, run_dir, prov = start_run(recipe_path, overrides)
        # One run, one directory: rank 0 names it and sends the name. Deriving it on every rank
        # instead (timestamp + a suffix when taken) breaks when ranks start in different seconds or
        # race for the suffix. The broadcast comes after the resolved recipe is written, and the
        # other ranks read that file, so every rank trains exactly the recipe rank 0 recorded.
        run_dir = Path(procs.broadcast(str(run_dir) if procs.is_main else None))
        if not procs.is_main:
            recipe = recipe_mod.load(run_dir / RESOLVED)
    run_id = run_dir.name

    import torch

    device = pick_device(procs)
    provenance.seed_everything(recipe.seed)
    if procs.is_main:
        prov.update(versions=provenance.versions(), machine=provenance.machine(device),
                    world_size=procs.world_size)
        artifacts.write_json_atomic(run_dir / PROVENANCE, prov)
    scratch = None if procs.is_main else Path(tempfile.mkdtemp(prefix=f"distill-rank{procs.rank}-"))
    ctx = RunContext(run_dir=run_dir, run_id=run_id, recipe=recipe, recipe_sha256=recipe_mod.sha256(recipe),
                     device=device, procs=procs, scratch_dir=scratch)
    logger.info("run %s -> %s (device %s, %d threads, rank %d of %d)", run_id, run_dir, device,
                torch.get_num_threads(), procs.rank, procs.world_size)
    try:
        run_stages(ctx)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if not procs.is_main:
        return RunResult(run_dir=run_dir, artifacts={}, records=[], rank=procs.rank)

    records = evaluate_run(ctx) if recipe.eval else []
    prov["end_time"] = provenance.now()
    artifacts.write_json_atomic(run_dir / PROVENANCE, prov)
    return RunResult(run_dir=run_dir, artifacts=dict(ctx.outputs), records=records)


def trains(stage) -> bool:
    """Stages with a `train:` block run on every rank (DDP); the others on rank 0 alone."""
    return isinstance(getattr(stage, "train", None), TrainSpec)


def run_stages(ctx: RunContext) -> None:
    """Run the recipe's stages in order, skipping finished ones; fills ctx.outputs."""
    from distill import stages

    recipe, procs = ctx.recipe, ctx.procs
    names = [recipe_mod.stage_name(i, s) for i, s in enumerate(recipe.stages)]
    for index, stage in enumerate(recipe.stages):
        name = names[index]
        ctx.stage_name = name
        if not procs.is_main:
            if not trains(stage):
                continue  # rank 0 quantizes/exports alone; a copy would be thrown away
            # Rank 0 has finished every earlier stage once it reaches this barrier, so `stage:`
            # inputs and ctx.previous() resolve to complete artifacts here too.
            procs.barrier()
            ctx.outputs = {n: artifacts.load(ctx.run_artifact_dir(n)) for n in names[:index]}
        elif procs.world_size > 1 and trains(stage):
            procs.barrier()
        out = ctx.run_artifact_dir(name)
        if artifacts.is_complete(out):
            logger.info("stage %s already finished: %s", name, out)
            ctx.outputs[name] = artifacts.load(out)
            from distill import gate  # a failed parity gate stops a resumed run again

            gate.enforce(ctx.outputs[name].extra.get("gate"), out)
            continue
        logger.info("stage %d/%d: %s (%s)", index + 1, len(recipe.stages), name, stage.kind)
        # Stages see a fresh, stage-specific seed so a resumed run matches an uninterrupted one.
        provenance.seed_everything(recipe.seed + index)
        art = stages.get(stage.kind)(stage, ctx)
        if procs.is_main:
            ctx.outputs[name] = art
        else:  # this rank's copy of the artifact; rank 0's is the one later stages read
            shutil.rmtree(ctx.scratch_dir / "artifacts", ignore_errors=True)


def evaluate_run(ctx: RunContext) -> list[Path]:
    """Evaluate the teacher (optionally) and every stage artifact with the recipe's suite."""
    from distill.evaluation.harness import evaluate

    spec = ctx.recipe.eval
    results_dir = Path(spec.results_dir) if spec.results_dir else ctx.run_dir / "results"
    targets: list[tuple[str, str]] = []
    # The reference model: the first stage's teacher, or the model a compression stage started from.
    first = next(iter(ctx.outputs.values()))
    teacher = first.extra.get("teacher_path")
    if spec.include_teacher and teacher:
        targets.append(("teacher", teacher))
    elif spec.include_teacher and first.extra.get("input_path"):
        targets.append(("input", first.extra["input_path"]))
    targets += [(name, str(art.path)) for name, art in ctx.outputs.items()]
    paths = dict(targets)
    if spec.baseline and spec.baseline not in paths:
        raise DistillError(f"eval baseline '{spec.baseline}' is not a stage of this run",
                           f"use one of: {', '.join(paths)}")
    baseline_record = None
    records = []
    ordered = sorted(targets, key=lambda t: t[0] != spec.baseline)  # baseline first
    for name, path in ordered:
        logger.info("evaluating %s on suite %s", name, spec.suite)
        record = evaluate(path, spec.suite, limit=spec.limit, results_dir=results_dir,
                          baseline=str(baseline_record) if baseline_record and name != spec.baseline else None)
        if name == spec.baseline:
            baseline_record = record
        records.append(record)
    from distill.evaluation.report import write_report

    write_report(results_dir)
    return records
