"""`distill run`: create the run directory, record provenance, run the stages, evaluate.

runs/<run_id>/
  recipe.resolved.yaml   the recipe after overrides and interpolation (re-loadable)
  provenance.json        git sha + dirty flag, versions, machine, seeds, start/end time
  metrics.jsonl          one JSON line per logged training step
  checkpoints/<stage>/   resumable training state
  artifacts/<stage>/     one artifact per stage (manifest.json written last)
  results/               evaluation records, when the recipe has an `eval` block

A stage whose artifact has a manifest is finished and is skipped on `--resume`; anything else
is redone, continuing from its latest checkpoint. The whole recipe is checked before the run
directory exists (`check_references` + `config_checks.deep`), so bad input never leaves a half run. A
resume refuses a recipe edited since the start (its sha256 differs from provenance.json) unless
forced, checks the checkpoints it will read, and trims metrics.jsonl to them, so redone steps are
not logged twice.

Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) rank 0 owns the run directory: it creates
it, writes every record, artifact, checkpoint and metric, runs the stages that do not train
(quantize, export) and the evaluation. Every rank runs the training stages (DDP); the others
read the resolved recipe, the checkpoints and earlier stages' artifacts that rank 0 wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from distill import artifacts, config_checks, provenance
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
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise DistillError(f"cannot create run directory '{run_dir}': {exc.strerror or exc}",
                           "point output_dir at a writable directory") from None
    return run_id, run_dir


def open_run(run_dir: str | Path, force: bool = False) -> tuple[Recipe, Path, dict]:
    """(recipe, run dir, provenance) of an existing run directory, for --resume.

    An edited recipe.resolved.yaml is refused unless `force`: resuming would silently mix two
    recipes in one run (steps or lr changed mid-run while the manifest records the new values).
    With `force` the change is recorded in provenance.json (`recipe_changes`)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESOLVED).is_file() or not (run_dir / PROVENANCE).is_file():
        raise DistillError(f"'{run_dir}' is not a run directory (no {RESOLVED} / {PROVENANCE})",
                           "pass a directory created by `distill run`, e.g. runs/<run_id>")
    try:
        prov = json.loads((run_dir / PROVENANCE).read_text())
        if not isinstance(prov, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise DistillError(f"'{run_dir / PROVENANCE}' is damaged ({str(exc).splitlines()[0][:100]})",
                           "the run cannot be resumed as recorded: start a new run") from None
    recipe = recipe_mod.load(run_dir / RESOLVED)
    # The file's own hash, not the re-dumped recipe's: a field added to the schema since the start
    # changes the dump (a new default) but is no edit. At the start the two are equal.
    recorded, now = prov.get("recipe_sha256"), hashlib.sha256((run_dir / RESOLVED).read_bytes()).hexdigest()
    if recorded != now:
        if not force:
            raise DistillError(f"'{run_dir / RESOLVED}' was edited after the run started (sha256 "
                               f"{str(recorded)[:12]} recorded, {now[:12]} now)",
                               "restore the recipe, start a new run with the edit, or resume with "
                               "--force to continue under the edited recipe (recorded in provenance.json)")
        logger.warning("resuming %s under an edited recipe (sha256 %s -> %s), as forced", run_dir,
                       str(recorded)[:12], now[:12])
        prov.setdefault("recipe_changes", []).append({"time": provenance.now(), "from": recorded, "to": now})
        prov["recipe_sha256"] = now
    return recipe, run_dir, prov


def checkpoint_steps(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the finished checkpoints of a stage, oldest first (names: step-NNNNNNN)."""
    out = []
    for p in Path(ckpt_root).glob("step-*"):
        if p.is_dir() and p.name.removeprefix("step-").isdigit():
            out.append((int(p.name.removeprefix("step-")), p))
    return sorted(out)


def check_checkpoint(path: Path) -> None:
    """A checkpoint a resume will read is complete and safe to load, or one DistillError.

    Weights: safetensors headers vs file sizes. trainer.pt: loaded with weights_only=True (memory-
    mapped), which refuses pickled code: a file that would run code is an error, never loaded."""
    import torch

    fix = (f"delete '{path}' to resume from the checkpoint before it (or from the stage start), or "
           "start a new run")
    try:
        state = json.loads((path / "state.json").read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DistillError(f"checkpoint '{path}' has no readable state.json", fix) from None
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise DistillError(f"checkpoint '{path}' holds no weights (*.safetensors)", fix)
    for file in weights:
        problem = artifacts.safetensors_problem(file)
        if problem:
            raise DistillError(f"checkpoint weights '{file}' are damaged: {problem}", fix)
    trainer = path / "trainer.pt"
    if trainer.exists():
        if not zipfile.is_zipfile(trainer):  # torch.save writes a zip archive
            raise DistillError(f"checkpoint '{trainer}' is damaged (not a torch checkpoint archive)", fix)
        try:
            torch.load(trainer, weights_only=True, mmap=True, map_location="cpu")
        except pickle.UnpicklingError:
            raise DistillError(f"checkpoint '{trainer}' was refused: it holds pickled objects or code, "
                               "not plain tensors (read with weights_only=True, nothing was run)", fix) from None
        except Exception as exc:  # noqa: BLE001 - unreadable for any other reason: same answer
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise DistillError(f"checkpoint '{trainer}' cannot be read ({type(exc).__name__}: {first})",
                               fix) from None


def prepare_resume(ctx: RunContext) -> None:
    """Check the checkpoints unfinished stages will resume from, and trim metrics.jsonl to them."""
    names = [recipe_mod.stage_name(i, s) for i, s in enumerate(ctx.recipe.stages)]
    keep: dict[str, float] = {}
    for name in names:
        if artifacts.is_complete(ctx.run_artifact_dir(name)):
            keep[name] = float("inf")
            continue
        steps = checkpoint_steps(ctx.checkpoint_dir(name))
        if steps:
            check_checkpoint(steps[-1][1])
        keep[name] = steps[-1][0] if steps else 0
    trim_metrics(ctx.run_dir / "metrics.jsonl", keep)


def trim_metrics(path: Path, keep: dict[str, float]) -> int:
    """Drop metric rows a resume will log again (steps after a stage's checkpoint) and a torn last
    line from a kill; rows of stages not in `keep` (e.g. a teacher sub-stage) stay. -> rows dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            redone = row["step"] > keep.get(row["stage"], float("inf"))
        except (ValueError, KeyError, TypeError):
            redone = True
        if redone:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
        logger.info("metrics.jsonl: dropped %d row(s) the resume will log again", dropped)
    return dropped


def pick_device(procs: Processes) -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{procs.local_rank}" if procs.world_size > 1 else "cuda"


def start_run(recipe_path: str | Path, overrides: list[str] | None) -> tuple[Recipe, Path, dict]:
    """Load + check the recipe, create its run directory, write the resolved recipe (rank 0)."""
    recipe = recipe_mod.load(recipe_path, overrides)
    check(recipe)
    sha = recipe_mod.sha256(recipe)
    run_id, run_dir = new_run_dir(recipe, sha)
    (run_dir / RESOLVED).write_text(recipe_mod.dump(recipe))
    prov = {"run_id": run_id, "recipe_source": str(recipe_path), "overrides": overrides or [],
            "recipe_sha256": sha, "git": provenance.git_state(), "seeds": provenance.seeds(recipe.seed),
            "start_time": provenance.now(), "end_time": None}
    return recipe, run_dir, prov


def check(recipe: Recipe) -> None:
    """The whole recipe, before anything is written: references and torch-free checks, then the
    checks that need transformers (inline configs built on the meta device, hub reachability)."""
    for note in recipe_mod.check_references(recipe, strict=True):
        logger.warning(note)
    config_checks.deep(recipe)
    from distill.training import check_processes

    check_processes(recipe, int(os.environ.get("WORLD_SIZE", "1")))


def run(recipe_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: str | Path | None = None, force: bool = False) -> RunResult:
    """Run a recipe end to end (or finish an interrupted run when `resume` is given; `force`
    resumes under a recipe edited since the start)."""
    procs = join_processes()
    if force and resume is None:
        raise DistillError("--force only applies to --resume", "drop --force")
    if resume is not None:
        if overrides:
            raise DistillError("overrides cannot be combined with --resume",
                               "a resumed run keeps its recorded recipe; start a new run instead")
        recipe, run_dir, prov = open_run(resume, force=force)
        if procs.is_main:
            check(recipe)
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
    scratch = None if procs.is_main else Path(tempfile.mkdtemp(prefix=f"distill-rank{procs.rank}-"))
    ctx = RunContext(run_dir=run_dir, run_id=run_id, recipe=recipe, recipe_sha256=recipe_mod.sha256(recipe),
                     device=device, procs=procs, scratch_dir=scratch)
    if resume is not None:
        if procs.is_main:  # before provenance records the resume: a damaged run stays as it was
            prepare_resume(ctx)
        procs.barrier()  # other ranks read the checkpoints rank 0 has just checked
    if procs.is_main:
        prov.update(versions=provenance.versions(), machine=provenance.machine(device),
                    world_size=procs.world_size)
        artifacts.write_json_atomic(run_dir / PROVENANCE, prov)
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
        try:
            art = stages.get(stage.kind)(stage, ctx)
        except RuntimeError as exc:
            # The one model-vs-checkpoint clash a user can cause: resuming (with --force) under a
            # recipe whose model shapes changed. Anything else keeps its traceback.
            if "loading state_dict" not in str(exc) and "size mismatch" not in str(exc):
                raise
            raise DistillError(f"stage {name}: its checkpoint does not fit the model the recipe builds "
                               f"({str(exc).splitlines()[0][:160]})",
                               "resume with the recipe the run started with, or start a new run") from None
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
        for suite in [spec.suite, *spec.more_suites]:
            logger.info("evaluating %s on suite %s", name, suite)
            record = evaluate(path, suite, limit=spec.limit, results_dir=results_dir, limit_is_cap=True,
                              baseline=str(baseline_record) if baseline_record and name != spec.baseline
                              else None)
        if name == spec.baseline:
            baseline_record = record
        records.append(record)
    from distill.evaluation.report import write_report

    write_report(results_dir)
    return records
