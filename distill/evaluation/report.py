"""`distill report`: README.md, index.html and Pareto plots, regenerated from the records only.

Nothing here is edited by hand: both files say so and are rewritten whole. Rows are grouped by
modality, then family (lineage root), so a student sits under its teacher. Each plotted point is
one artifact; the frontier joins artifacts no other artifact beats on both axes. `report_data`
gathers what both renderings show; this module writes the Markdown and the run summary,
`report_html` the page.
"""

from __future__ import annotations

from pathlib import Path

from distill.evaluation.report_data import (PERCENT, SPEED_KIND, SPEED_LABEL, Column, Section, conditions, fmt,
                                            headline, pareto, primary, sections, speed)
from distill.evaluation.results import Record

__all__ = ["headline", "pareto", "readme", "sections", "summary", "write_report"]


def _cell(sec: Section, r: Record, col: Column) -> str:
    m = primary(r, col.task)
    if m is None:
        return ""
    text = fmt(m.metric, m.value)
    items = sec.items.get(r.artifact_id, {}).get(col.task)
    if m.limit:  # a --limit run is a partial number: say so in the cell itself
        text += f" ({items} items, --limit {m.limit})" if items else f" (--limit {m.limit})"
    loops = m.extra.get("n_repetition_loops")
    if loops:
        text += f" [{loops} loop{'s' if loops > 1 else ''}]"
    return text


def markdown(sec: Section) -> list[str]:
    header = ["artifact", "kind", "params", "size MB"]
    header += [f"{c.task} {c.metric}" for c in sec.columns] + [SPEED_LABEL[sec.speed_kind], "recovery"]
    lines = [f"## {sec.modality.upper()}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family, recs in sec.families.items():
        lines.append(f"| **family `{family}`** |" + " |" * (len(header) - 1))
        for r in recs:
            cells = [f"`{r.artifact_id}`", r.kind, "" if r.params is None else f"{r.params / 1e6:.1f}M",
                     "" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f}"]
            cells += [_cell(sec, r, c) for c in sec.columns]
            sp = speed(r, sec.speed_kind)
            cells.append(f"{sp.value:.2f}" if sp else "")
            # Recovery of each task's shown metric vs the baseline named at eval time (1.00 = kept).
            shown = [rv for rv in r.recovery if primary(r, rv.task) and primary(r, rv.task).metric == rv.metric]
            cells.append(", ".join(f"{rv.task} {rv.value:.3f}" for rv in shown)
                         + "".join(f" (vs `{b}`)" for b in dict.fromkeys(rv.baseline for rv in shown)))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Percentages for acc/WER/CER; perplexity is per token of the model's own tokenizer. "
              "`[k loops]`: utterances caught in a repetition loop (flagged per sample).", ""]
    lines += ["Conditions and reproduction (per suite: a record merges suites run at different times):", ""]
    for recs in sec.families.values():
        for r in recs:
            lines.append(f"- `{r.artifact_id}` ([samples]({r.samples})):")
            for name, run in r.suites.items():
                commit = f"{run.git_sha[:8]}{' (dirty tree)' if run.git_dirty else ''}" if run.git_sha else "unknown"
                load = (f", load {run.load_avg_before[0]}->{(run.load_avg_after or ['?'])[0]}"
                        if run.load_avg_before else "")
                timed = [t for t in r.throughput if t.suite == name and t.kind != "peak_gpu_allocated_bytes"]
                main = next((t for t in timed if t.kind == sec.speed_kind), None)
                speeds = ", ".join(f"{t.kind}={t.value:.4g}" for t in timed)
                speeds += f" ({conditions(main)})" if main else ""
                lines.append(f"  - {name}: `{run.command or '?'}`; commit {commit}; threads {run.threads}{load}"
                             f"{'; re-scored ' + run.rescored['created'][:10] if run.rescored else ''}. {speeds}")
    lines.append("")
    for name in sec.plots:
        lines += [f"![{name}]({name})", ""]
    return lines


def summary(record_paths: list[Path]) -> str:
    """A short plain-text table of the given records (what `distill run` prints at its end): each
    task's shown metric, size, speed, the gate and the worst recovery against the baseline."""
    from distill.evaluation.results import load_record

    recs = [load_record(p) for p in record_paths]
    if not recs:
        return ""
    tasks = list(dict.fromkeys(m.task for r in recs for m in r.metrics))
    header = ["model", "size MB"] + [f"{t} {primary(next(r for r in recs if primary(r, t)), t).metric}"
                                     for t in tasks] + ["speed", "gate", "recovery (worst)"]
    rows = []
    for r in recs:
        name = r.artifact_id.rsplit("/", 1)[-1] if r.run_id else r.artifact_id
        cells = [name, "" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f}"]
        cells += [fmt(m.metric, m.value) if (m := primary(r, t)) else "" for t in tasks]
        sp = speed(r, SPEED_KIND.get(r.modality, ""))
        cells.append(f"{sp.value:.1f} {'RTFx' if sp.kind == 'asr_rtfx' else 'tok/s'}" if sp else "")
        cells.append(str((r.gate or {}).get("status", "")))
        shown = [rv for rv in r.recovery if (m := primary(r, rv.task)) and m.metric == rv.metric]
        worst = min(shown, key=lambda rv: rv.value, default=None)
        cells.append(f"{worst.value:.3f} ({worst.task})" if worst else "baseline")
        rows.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    unit = " (WER/CER/acc in %)" if any(m.metric in PERCENT for r in recs for m in r.metrics) else ""
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)]) + f"\n{unit.strip()}"


def readme(secs: list[Section]) -> str:
    lines = ["# Results", "",
             "Generated by `distill report` from the records in this directory: do not edit by hand "
             "(open [`index.html`](index.html) for the same tables as a page).",
             "Each record (`<artifact id>.json`) names its conditions and points at its raw per-sample "
             "outputs under `samples/`, from which every metric can be recomputed without the model.", ""]
    if not secs:
        lines.append("No records yet: run `distill eval MODEL --suite SUITE`.")
    for sec in secs:
        lines += markdown(sec)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results_dir: Path = Path("results")) -> Path:
    """Regenerate results_dir/README.md, index.html and pareto_*.png from results_dir/*.json."""
    from distill.evaluation import report_html

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    secs = sections(results_dir)
    out = results_dir / "README.md"
    _write(out, readme(secs))
    _write(results_dir / "index.html", report_html.render(secs, results_dir))
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
