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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from distill import artifacts, provenance
from distill import recipe as recipe_mod
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.errors import DistillError
from distill.recipe import Recipe

logger = logging.getLogger(__name__)

RESOLVED = "recipe.resolved.yaml"
PROVENANCE = "provenance.json"


@dataclass
class RunResult:
    run_dir: Path
    artifacts: dict[str, Artifact]
    records: list[Path]


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


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(recipe_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: str | Path | None = None) -> RunResult:
    """Run a recipe end to end (or finish an interrupted run when `resume` is given)."""
    if resume is not None:
        if overrides:
            raise DistillError("overrides cannot be combined with --resume",
                               "a resumed run keeps its recorded recipe; start a new run instead")
        recipe, run_dir = open_run(resume)
        run_id = run_dir.name
        prov = json.loads((run_dir / PROVENANCE).read_text())
        prov.setdefault("resumed", []).append(provenance.now())
    else:
        if recipe_path is None:
            raise DistillError("no recipe given", "distill run RECIPE.yaml [key=value ...]")
        recipe = recipe_mod.load(recipe_path, overrides)
        for note in recipe_mod.check_references(recipe, strict=True):
            logger.warning(note)
        sha = recipe_mod.sha256(recipe)
        run_id, run_dir = new_run_dir(recipe, sha)
        (run_dir / RESOLVED).write_text(recipe_mod.dump(recipe))
        prov = {"run_id": run_id, "recipe_source": str(recipe_path), "overrides": overrides or [],
                "recipe_sha256": sha, "git": provenance.git_state(), "seeds": provenance.seeds(recipe.seed),
                "start_time": provenance.now(), "end_time": None}

    import torch

    device = pick_device()
    provenance.seed_everything(recipe.seed)
    prov.update(versions=provenance.versions(), machine=provenance.machine(device))
    artifacts.write_json_atomic(run_dir / PROVENANCE, prov)
    ctx = RunContext(run_dir=run_dir, run_id=run_id, recipe=recipe,
                     recipe_sha256=recipe_mod.sha256(recipe), device=device)
    logger.info("run %s -> %s (device %s, %d threads)", run_id, run_dir, device, torch.get_num_threads())

    from distill import stages

    for index, stage in enumerate(recipe.stages):
        name = recipe_mod.stage_name(index, stage)
        ctx.stage_name = name
        out = ctx.artifact_dir(name)
        if artifacts.is_complete(out):
            logger.info("stage %s already finished: %s", name, out)
            ctx.outputs[name] = artifacts.load(out)
            continue
        logger.info("stage %d/%d: %s (%s)", index + 1, len(recipe.stages), name, stage.kind)
        # Stages see a fresh, stage-specific seed so a resumed run matches an uninterrupted one.
        provenance.seed_everything(recipe.seed + index)
        ctx.outputs[name] = stages.get(stage.kind)(stage, ctx)

    records = evaluate_run(ctx) if recipe.eval else []
    prov["end_time"] = provenance.now()
    artifacts.write_json_atomic(run_dir / PROVENANCE, prov)
    return RunResult(run_dir=run_dir, artifacts=dict(ctx.outputs), records=records)


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
