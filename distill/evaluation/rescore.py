"""Re-score stored ASR predictions with the current task spec and metric code, without the model.

Predictions are stored raw and normalised only at scoring time, so a scoring change (a new
normaliser, a new per-utterance flag) is applied to a committed record by recomputing its metrics
from its samples file: no model, no audio. Decoding is untouched; the task version becomes the
current one and the suite's conditions say when and how the record was re-scored.

    python -m distill.evaluation.rescore results asset/whisper-base tts-cmn
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.errors import DistillError
from distill.evaluation import metrics, results
from distill.evaluation.tasks import load_task

# Fields of a metric's extra that describe the run, not the scoring: kept when re-scoring.
RUN_FIELDS = ("wall_s", "eval_rtfx", "n_decode_failed", "language")
# Per-sample fields the scorer writes (replaced when re-scoring).
SCORE_FIELDS = ("errors", "ref_words", "char_errors", "ref_chars", "repetition_loop")


def rescore(results_dir: Path, artifact_id: str, task_names: list[str]) -> Path:
    """Recompute `task_names` of the record `artifact_id` from its samples; rewrite record + samples."""
    from distill import provenance

    results_dir = Path(results_dir)
    path = results.record_path(results_dir, artifact_id)
    if not path.is_file():
        raise DistillError(f"no record for '{artifact_id}' in {results_dir}", "check the artifact id")
    record = results.load_record(path)
    samples = results.read_samples(results_dir, record)
    git = provenance.git_state()
    when = {"created": provenance.now(), "git_sha": git["sha"], "git_dirty": git["dirty"],
            "command": f"python -m distill.evaluation.rescore {results_dir} {artifact_id} {' '.join(task_names)}"}
    for name in task_names:
        spec = load_task(name)
        if spec.type != "asr":
            raise DistillError(f"task '{name}' is {spec.type}: only ASR tasks are re-scored from text",
                               "re-run `distill eval` for other tasks")
        old = [m for m in record.metrics if m.task == name]
        scored = [s for s in samples if s.get("task") == name and "prediction" in s]
        if not old or not scored:
            raise DistillError(f"record '{artifact_id}' has no stored predictions for task '{name}'",
                               "evaluate the task first")
        found, per_item = metrics.asr_task_scores([s["prediction"] for s in scored],
                                                  [s["reference"] for s in scored],
                                                  spec.normalizer, spec.metrics)
        for sample, row in zip(scored, per_item):
            for key in SCORE_FIELDS:
                sample.pop(key, None)
            sample.update(row)
        template = old[0]
        run_extra = {k: template.extra[k] for k in RUN_FIELDS if k in template.extra}
        new = [results.Metric(task=name, task_version=spec.version, suite=template.suite, limit=template.limit,
                              evaluated=template.evaluated,
                              **{**m, "extra": {**m["extra"], **run_extra, "rescored": when["created"]}})
               for m in found]
        position = record.metrics.index(template)
        rest = [m for m in record.metrics if m.task != name]
        record.metrics = rest[:position] + new + rest[position:]
        # A recovery ratio whose value moved used the old scoring on one side: it no longer holds.
        before = {m.metric: m.value for m in old}
        moved = {m.metric for m in new if before.get(m.metric) != m.value}
        record.recovery = [r for r in record.recovery if not (r.task == name and r.metric in moved)]
        suite = template.suite
        if suite is not None:
            run = record.suites.get(suite) or results.SuiteRun(suite=suite)
            run.rescored = {**when, "tasks": sorted({*((run.rescored or {}).get("tasks", [])), name})}
            record.suites[suite] = run
    return results.write(results_dir, record, samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("artifact_id")
    parser.add_argument("tasks", nargs="+")
    args = parser.parse_args(argv)
    print(f"re-scored: {rescore(args.results_dir, args.artifact_id, args.tasks)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
