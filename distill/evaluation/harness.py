"""`distill eval`: evaluate one model on one suite and write its result record.

Order matters for the user's time: the suite, the model reference and every task's rows are
checked before any weights load; the record is written only after everything succeeded, so an
interrupted or failed eval leaves the previous record (or none) untouched.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

from distill.errors import DistillError
from distill.evaluation import asr as asr_task
from distill.evaluation import inputs, mc, perplexity, results, throughput
from distill.evaluation.adapters import loader_for
from distill.evaluation.data import limit_rows, task_rows
from distill.evaluation.loading import ModelRef, count_params, resolve_model
from distill.evaluation.tasks import EVAL_DIR, load_suite, load_task, with_options

logger = logging.getLogger(__name__)

_RUNNERS = {"multiple_choice": "lm", "perplexity": "lm", "asr": "asr"}


def _family(ref: ModelRef) -> str:
    return ref.lineage[-1] if ref.lineage else ref.artifact_id


def portable(model: str) -> str:
    """How a record names the evaluated model: `asset:<id>` for cached assets, a path relative to
    the working directory when possible, else as given (hub ids) — never a machine's cache path."""
    path = Path(model).expanduser()
    if not path.is_absolute():
        return model
    from distill.assets import cache_dir

    try:
        rel = path.resolve().relative_to((cache_dir() / "assets").resolve())
        return f"asset:{rel.parts[0]}"
    except ValueError:
        pass
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return model


def _provenance(model: str, suite, limit, device, batch_size, threads) -> dict:
    from distill import provenance

    return {"git": provenance.git_state(), "versions": provenance.versions(),
            "machine": provenance.machine(device), "created": provenance.now(),
            "suite": suite.name, "suite_version": suite.version, "limit": limit,
            "batch_size": batch_size, "threads": threads,
            # The argument as given (asset:<id>, a path, a hub id), never the resolved cache path.
            "commands": {suite.name: f"distill eval {portable(model)} --suite {suite.name}"
                         + (f" --limit {limit}" if limit else "")}}


def _run_task(spec, adapter, rows, batch_size: int):
    if spec.type == "multiple_choice":
        found, samples = mc.run(spec, adapter, rows, batch_size)
        return found, samples, None
    if spec.type == "perplexity":
        found, samples = perplexity.run(spec, adapter, rows, max(1, batch_size // 2))
        return found, samples, None
    return asr_task.run(spec, adapter, rows, batch_size)


def _throughput(suite, adapter, rows: dict[str, list[dict]]) -> list[dict]:
    spec = suite.throughput
    if spec is None:
        return []
    if spec.kind == "lm":
        text = (EVAL_DIR / spec.text_file).read_text() if spec.text_file else ""
        return throughput.measure_lm(adapter, text, spec.batch_size, spec.warmup, spec.n,
                                     spec.prompt_tokens, spec.new_tokens)
    task = load_task(spec.task or suite.tasks[0])
    items, _ = asr_task.load_items(task, rows.get(task.name) or task_rows(task, None))
    return throughput.measure_asr(adapter, items, spec.batch_size, spec.warmup, spec.n, task.language)


def evaluate(model: str, suite: str, *, limit: int | None = None, baseline: str | None = None,
             results_dir: Path = Path("results"), device: str = "cpu", batch_size: int | None = None,
             threads: int | None = None, asr_options: dict | None = None, limit_is_cap: bool = False) -> Path:
    """Evaluate `model` on `suite`; write results_dir/<artifact id>.json + samples; return its path.
    asr_options: transcription options (language, context, long_audio) over the ASR tasks' own.
    limit_is_cap: a suite whose tasks are all smaller than `limit` runs on all their items (and
    says so, as no limit) instead of failing: a recipe's one limit serves suites of any size."""
    started = time.perf_counter()
    inputs.check_args(model, batch_size, threads, results_dir)
    suite_spec = load_suite(suite)
    tasks = [with_options(load_task(name), asr_options) for name in suite_spec.tasks]
    ref = resolve_model(model)
    loader = loader_for(ref)  # an unknown adapter fails here, before any data or weights load
    inputs.check_weight_files(ref.source, ref.kind)
    base_record = results.find_baseline(baseline, results_dir) if baseline else None
    full = {t.name: task_rows(t) for t in tasks}  # fails on missing/empty data before loading
    if limit_is_cap and limit is not None and all(len(r) <= limit for r in full.values()):
        limit = None  # every item of every task: the record's command says so, and reproduces it
    rows = {name: limit_rows(r, limit, name) for name, r in full.items()}
    if limit is not None and all(len(r) < limit for r in rows.values()):
        raise DistillError(f"--limit {limit} exceeds the size of every task in suite '{suite_spec.name}' "
                           f"(largest: {max(len(r) for r in rows.values())})", "use a smaller --limit")
    batch = suite_spec.batch_size if batch_size is None else batch_size
    if batch < 1:
        raise DistillError(f"batch size {batch} is not positive", "pass --batch-size N with N >= 1")

    import torch

    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistillError(f"device '{device}' requested but CUDA is not available", "use --device cpu")
    window_reset = throughput.reset_peak_memory(device)
    adapter = inputs.load_adapter(loader, ref, device)
    inputs.check_finite_weights(adapter, model)
    if adapter.modality != suite_spec.modality:
        raise DistillError(f"suite '{suite_spec.name}' is for {suite_spec.modality} models but "
                           f"'{model}' is an {adapter.modality} model", "pick a suite of its modality")
    logger.info("evaluating %s (%s, %s) on suite %s", ref.artifact_id, ref.adapter, adapter.backend,
                suite_spec.name)

    when = _provenance(model, suite_spec, limit, device, batch, torch.get_num_threads())
    for key, value in (asr_options or {}).items():  # the command that reproduces the record
        when["commands"][suite_spec.name] += f" --{key.replace('_', '-')} {shlex.quote(str(value))}"
    when["load_avg_before"] = throughput.load_average()
    metrics_out, samples = [], []
    for spec in tasks:
        t0 = time.perf_counter()
        found, task_samples, timings = _run_task(spec, adapter, rows[spec.name], batch)
        inputs.check_finite_metrics(spec.name, found)
        # A limit at or above the task's size scored every item: the number is not partial.
        task_limit = limit if limit is not None and limit < len(full[spec.name]) else None
        for m in found:
            m["extra"]["wall_s"] = round(time.perf_counter() - t0, 3)
            if timings:
                audio = sum(a for a, _, _ in timings)
                m["extra"]["eval_rtfx"] = round(audio / sum(c for _, c, _ in timings), 3)
            metrics_out.append(results.Metric(task=spec.name, task_version=spec.version, suite=suite_spec.name,
                                              limit=task_limit, evaluated=when["created"], **m))
        samples.extend({"task": spec.name, **s} for s in task_samples)
        logger.info("%s: %s (%.1f s)", spec.name,
                    ", ".join(f"{m['metric']}={m['value']:.4f}" for m in found), time.perf_counter() - t0)
    speed = _throughput(suite_spec, adapter, rows) + throughput.peak_memory(device, window_reset,
                                                                            when["load_avg_before"])
    when["eval_wall_s"] = round(time.perf_counter() - started, 3)
    when["load_avg_after"] = throughput.load_average()

    record = results.Record(
        artifact_id=ref.artifact_id, kind=ref.kind, adapter=ref.adapter, family=_family(ref),
        modality=adapter.modality, params=ref.params or count_params(adapter.model),
        size_bytes=ref.size_bytes, lineage=ref.lineage, recipe_sha256=ref.recipe_sha256,
        run_id=ref.run_id, provenance=when, metrics=metrics_out,
        suites={suite_spec.name: results.suite_run(when)}, gate=results.gate_of(ref),
        throughput=[results.Throughput(suite=suite_spec.name, **t) for t in speed],
        samples=results.samples_relpath(ref.artifact_id))
    if base_record is not None:
        record.recovery = results.recovery(record.metrics, base_record)
    path = results.record_path(results_dir, ref.artifact_id)
    old, old_samples = None, []
    if path.is_file():
        old = results.load_record(path)
        if (Path(results_dir) / old.samples).is_file():
            old_samples = results.read_samples(results_dir, old)
    record, samples = results.merge(old, record, samples, old_samples)
    out = results.write(results_dir, record, samples)
    logger.info("wrote %s", out)
    return out


def score_task(model: str, task: str, limit: int | None = None, *, device: str = "cpu",
               batch_size: int = 8, manifest=None) -> dict:
    """Score one model on one task's (spread) items with the same code as `evaluate`, without
    writing a record: what a parity gate compares. `manifest`: the Artifact of a directory whose
    manifest is not written yet (a stage gating its own output). Returns metrics, their
    direction, n, backend and dtype (JSON-serialisable, so a gate can cache it)."""
    spec = load_task(task)
    ref = resolve_model(model)
    if manifest is not None:
        ref.adapter, ref.manifest = manifest.adapter, manifest
    rows = limit_rows(task_rows(spec), limit, spec.name)
    adapter = loader_for(ref)(ref.source, device, ref.manifest)
    if adapter.modality != _RUNNERS[spec.type]:
        raise DistillError(f"task '{task}' scores {_RUNNERS[spec.type]} models but '{model}' is an "
                           f"{adapter.modality} model", "pick a task of its modality")
    found, _, _ = _run_task(spec, adapter, rows, batch_size)
    return {"task": spec.name, "task_version": spec.version, "n": found[0]["n"] if found else 0,
            "metrics": {m["metric"]: m["value"] for m in found},
            "higher_is_better": {m["metric"]: m["higher_is_better"] for m in found},
            "metric_order": [m["metric"] for m in found], "backend": adapter.backend,
            "dtype": adapter.dtype}


def task_token_logprobs(model: str, task: str, limit: int | None = None, *, device: str = "cpu",
                        manifest=None, max_tokens: int = 128, batch_size: int = 4) -> list[list[float]]:
    """Per-token log-probs of a language model on a perplexity task's (spread) documents, each cut
    to its first `max_tokens` tokens: what a logit-drift gate compares position by position."""
    spec = load_task(task)
    if spec.type != "perplexity":
        raise DistillError(f"task '{task}' is {spec.type}; token log-probs need a perplexity task",
                           "use e.g. text-en-ppl or smoke-ppl")
    ref = resolve_model(model)
    if manifest is not None:
        ref.adapter, ref.manifest = manifest.adapter, manifest
    rows = limit_rows(task_rows(spec), limit, spec.name)
    adapter = loader_for(ref)(ref.source, device, ref.manifest)
    if adapter.modality != "lm":
        raise DistillError(f"'{model}' is an {adapter.modality} model; token log-probs need a language model",
                           "gate speech models on an ASR task")
    seqs = [adapter.tokenizer(str(r[spec.text_field]), add_special_tokens=False)["input_ids"][:max_tokens]
            for r in rows]
    seqs = [s for s in seqs if len(s) > 1]
    out: list[list[float]] = []
    for i in range(0, len(seqs), batch_size):
        out.extend(t.tolist() for t in adapter.token_logprobs(seqs[i:i + batch_size]))
    return out
