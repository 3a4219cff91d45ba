"""The result record: one JSON file per artifact under results/, schema documented in code.

`results/<artifact id, '/' -> '__'>.json` holds every metric measured for the artifact (a later
suite adds tasks; re-running a task replaces its entries) and points at `samples/<same>.jsonl`,
the raw per-item outputs from which each metric can be recomputed without the model. Both files
are written through temp files and renamed only after the whole evaluation succeeded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distill.errors import DistillError

SCHEMA_VERSION = 1


class Metric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    task_version: int
    metric: str
    value: float
    stderr: float | None = None
    n: int
    higher_is_better: bool
    suite: str | None = None
    limit: int | None = None  # null: the full task
    evaluated: str = ""  # ISO time; records merge runs, so each metric says when it was measured
    extra: dict[str, Any] = Field(default_factory=dict)


class Throughput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str  # lm_prefill_tok_s | lm_decode_tok_s | asr_rtfx | asr_latency_p50_s | peak_rss_bytes ...
    value: float
    unit: str
    suite: str | None = None
    conditions: dict[str, Any] = Field(default_factory=dict)


class SuiteRun(BaseModel):
    """What one suite's numbers depend on. A record merges suites run at different times, from
    different commits and with different settings, so each suite keeps its own conditions."""

    model_config = ConfigDict(extra="forbid")

    suite: str
    suite_version: int | None = None
    command: str | None = None
    created: str | None = None  # ISO time the suite started
    git_sha: str | None = None
    git_dirty: bool | None = None  # True: numbers from uncommitted code
    threads: int | None = None
    batch_size: int | None = None  # scoring batch (throughput has its own, in its conditions)
    limit: int | None = None
    device: str | None = None
    eval_wall_s: float | None = None
    load_avg_before: list[float] | None = None  # /proc/loadavg 1/5/15 min at start and end
    load_avg_after: list[float] | None = None
    rescored: dict[str, Any] | None = None  # metrics recomputed from the stored samples: when/how
    note: str | None = None  # e.g. which fields were not recorded by older versions


def suite_run(provenance: dict) -> SuiteRun:
    """The SuiteRun of one `distill eval` from the provenance dict the harness builds."""
    git = provenance.get("git") or {}
    suite = provenance["suite"]
    return SuiteRun(suite=suite, suite_version=provenance.get("suite_version"),
                    command=(provenance.get("commands") or {}).get(suite), created=provenance.get("created"),
                    git_sha=git.get("sha"), git_dirty=git.get("dirty"), threads=provenance.get("threads"),
                    batch_size=provenance.get("batch_size"), limit=provenance.get("limit"),
                    device=(provenance.get("machine") or {}).get("device"),
                    eval_wall_s=provenance.get("eval_wall_s"),
                    load_avg_before=provenance.get("load_avg_before"),
                    load_avg_after=provenance.get("load_avg_after"))


def gate_of(ref) -> dict | None:
    """The `gate` an export/quantize stage wrote into the artifact's manifest (its own check that
    the artifact still matches its source), carried into the record so the report can show it."""
    gate = getattr(ref.manifest, "gate", None) or (getattr(ref, "extra", None) or {}).get("gate")
    return dict(gate) if isinstance(gate, dict) else None


class Recovery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    metric: str
    value: float  # metric / baseline, or baseline / metric when lower is better: 1.0 = no loss
    baseline: str
    baseline_value: float


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    artifact_id: str
    kind: str
    adapter: str
    family: str  # lineage root (teacher/base asset), or the artifact itself
    modality: str  # lm | asr
    params: int | None = None
    size_bytes: int | None = None  # real bytes on disk of the loaded files
    lineage: list[str] = Field(default_factory=list)
    recipe_sha256: str | None = None
    run_id: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)  # the latest `distill eval` only
    suites: dict[str, SuiteRun] = Field(default_factory=dict)  # suite -> its own conditions
    gate: dict[str, Any] | None = None  # the artifact's manifest `gate` (export checks), when present
    metrics: list[Metric] = Field(default_factory=list)
    throughput: list[Throughput] = Field(default_factory=list)
    recovery: list[Recovery] = Field(default_factory=list)
    samples: str  # JSONL path relative to the results directory


def safe_id(artifact_id: str) -> str:
    return artifact_id.replace("/", "__")


def record_path(results_dir: Path, artifact_id: str) -> Path:
    return Path(results_dir) / f"{safe_id(artifact_id)}.json"


def samples_relpath(artifact_id: str) -> str:
    return f"samples/{safe_id(artifact_id)}.jsonl"


def load_record(path: Path) -> Record:
    try:
        return Record.model_validate_json(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DistillError(f"cannot read result record '{path}': {str(exc).splitlines()[0]}",
                           "re-run `distill eval` for that model") from None


def load_records(results_dir: Path) -> list[Record]:
    return [load_record(p) for p in sorted(Path(results_dir).glob("*.json"))]


def find_baseline(baseline: str, results_dir: Path) -> Record:
    """A baseline by record path or by artifact id (looked up in results_dir)."""
    path = Path(baseline)
    if path.suffix == ".json" and path.is_file():
        return load_record(path)
    if baseline.startswith("asset:"):  # the id a user types for a model, as its record names it
        baseline = "asset/" + baseline.removeprefix("asset:")
    path = record_path(results_dir, baseline)
    if path.is_file():
        return load_record(path)
    known = sorted(r.stem.replace("__", "/") for r in Path(results_dir).glob("*.json"))
    raise DistillError(f"no result record for baseline '{baseline}' in {results_dir}",
                       f"evaluate the baseline first; known: {', '.join(known) or 'none'}")


def recovery(metrics: list[Metric], base: Record) -> list[Recovery]:
    """Per shared (task, metric): 1.0 means the baseline's quality was kept."""
    by_key = {(m.task, m.metric): m for m in base.metrics}
    out = []
    for m in metrics:
        b = by_key.get((m.task, m.metric))
        if b is None or b.task_version != m.task_version:
            continue
        num, den = (m.value, b.value) if m.higher_is_better else (b.value, m.value)
        if den == 0:
            continue
        out.append(Recovery(task=m.task, metric=m.metric, value=num / den, baseline=base.artifact_id,
                            baseline_value=b.value))
    return out


def read_samples(results_dir: Path, record: Record) -> list[dict]:
    path = Path(results_dir) / record.samples
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge(old: Record | None, new: Record, new_samples: list[dict], old_samples: list[dict]):
    """Keep the old record's metrics/samples for tasks not re-run; the new run wins elsewhere."""
    if old is None:
        return new, new_samples
    tasks = {m.task for m in new.metrics}
    suites = {t.suite for t in new.throughput}
    ran = set(new.suites) | {m.suite for m in new.metrics}  # before new.metrics takes the old ones
    new.metrics = [m for m in old.metrics if m.task not in tasks] + new.metrics
    new.throughput = [t for t in old.throughput if t.suite not in suites] + new.throughput
    new.provenance["commands"] = {**old.provenance.get("commands", {}), **new.provenance.get("commands", {})}
    # Each suite keeps the conditions it ran under; the new run's own suites replace theirs.
    new.suites = {**{k: v for k, v in old.suites.items() if k not in ran}, **new.suites}
    new.gate = new.gate if new.gate is not None else old.gate
    kept = [r for r in old.recovery if r.task not in tasks]
    new.recovery = kept + new.recovery
    return new, [s for s in old_samples if s.get("task") not in tasks] + new_samples


def write(results_dir: Path, record: Record, samples: list[dict]) -> Path:
    """Samples then record, each via temp file + fsync + rename: the record appears last."""
    results_dir = Path(results_dir)
    (results_dir / "samples").mkdir(parents=True, exist_ok=True)
    spath = results_dir / record.samples
    rpath = record_path(results_dir, record.artifact_id)
    stmp, rtmp = spath.with_name(spath.name + ".tmp"), rpath.with_name(rpath.name + ".tmp")
    try:
        with open(stmp, "w") as f:
            for row in samples:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(rtmp, "w") as f:
            f.write(record.model_dump_json(indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(stmp, spath)
        os.replace(rtmp, rpath)
    finally:
        for tmp in (stmp, rtmp):
            tmp.unlink(missing_ok=True)
    return rpath
