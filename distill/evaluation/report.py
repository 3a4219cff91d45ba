"""`distill report`: README.md, index.html and Pareto plots, regenerated from the records only.

Nothing here is edited by hand: both files say so and are rewritten whole. Rows are grouped by
modality, then family (lineage root), so a student sits under its teacher. Each plotted point is
one artifact; the frontier joins artifacts no other artifact beats on both axes. This module
gathers what both renderings show (`Section`); `report_html` draws the page.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distill.evaluation.results import Metric, Record, Recovery, Throughput, load_records, read_samples

logger = logging.getLogger(__name__)

MODALITIES = {"asr": "Speech recognition (ASR)", "lm": "Language models (LM)"}
SPEED_KIND = {"asr": "asr_rtfx", "lm": "lm_decode_tok_s"}
SPEED_LABEL = {"asr_rtfx": "RTFx (audio s / compute s)", "lm_decode_tok_s": "decode tokens/s"}
PERCENT = ("acc", "acc_macro", "wer", "wer_ortho", "cer")


@dataclass
class Column:
    task: str
    metric: str
    higher_is_better: bool


@dataclass
class Section:
    """One modality's records, grouped by family, with what each cell needs."""

    modality: str
    families: dict[str, list[Record]]
    columns: list[Column]
    items: dict[str, dict[str, int]] = field(default_factory=dict)  # artifact -> task -> items scored
    plots: list[str] = field(default_factory=list)

    @property
    def speed_kind(self) -> str:
        return SPEED_KIND[self.modality]


def primary(record: Record, task: str) -> Metric | None:
    """The task's first metric: the one each table shows (wer before wer_ortho, acc before macro)."""
    return next((m for m in record.metrics if m.task == task), None)


def fmt(metric: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if metric in PERCENT:
        return f"{100 * value:.2f}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


def speed(record: Record, kind: str) -> Throughput | None:
    return next((t for t in record.throughput if t.kind == kind), None)


def recovery(record: Record, task: str, metric: str) -> Recovery | None:
    return next((r for r in record.recovery if r.task == task and r.metric == metric), None)


def conditions(t: Throughput) -> str:
    c = t.conditions
    keys = ("batch_size", "dtype", "threads", "device_name", "backend", "warmup_steps", "n", "scope")
    out = [f"{k}={c[k]}" for k in keys if k in c]
    if c.get("load_avg_before") is not None:
        out.append(f"load {c['load_avg_before'][0]}->{(c.get('load_avg_after') or ['?'])[0]}")
    return ", ".join(out)


def headline(records: list[Record]) -> tuple[str, str, bool] | None:
    """The y axis of the Pareto plots: the headline its suite declares, of the suite most records
    ran; else the (task, metric) most records share."""
    from distill.evaluation.tasks import load_suite

    measured = {(m.task, m.metric): m.higher_is_better for r in records for m in r.metrics}
    for suite, _ in Counter(s for r in records for s in r.suites).most_common():
        try:
            head = load_suite(suite).headline
        except Exception:  # noqa: BLE001 - a record may name a suite this checkout no longer has
            continue
        if (head.task, head.metric) in measured:
            return head.task, head.metric, measured[(head.task, head.metric)]
    counts = Counter((m.task, m.metric, m.higher_is_better) for r in records for m in r.metrics)
    if not counts:
        return None
    (task, metric, hib), _ = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return task, metric, hib


def pareto(points: list[tuple[float, float]], x_higher: bool, y_higher: bool) -> list[int]:
    """Indices of points no other point beats on both axes (ties do not dominate)."""
    def better(a, b, higher):
        return a >= b if higher else a <= b

    keep = []
    for i, (xi, yi) in enumerate(points):
        dominated = any(better(xj, xi, x_higher) and better(yj, yi, y_higher) and (xj, yj) != (xi, yi)
                        for j, (xj, yj) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def _plot(records: list[Record], modality: str, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = headline(records)
    if head is None:
        return []
    task, metric, hib = head
    speed_kind = SPEED_KIND[modality]
    families = sorted({r.family for r in records})
    colours = {f: plt.cm.tab10(i % 10) for i, f in enumerate(families)}
    scale = 100.0 if metric in PERCENT else 1.0
    files = []
    for axis in ("size", "speed"):
        pts, recs = [], []
        for r in records:
            m = next((m for m in r.metrics if m.task == task and m.metric == metric), None)
            sp = speed(r, speed_kind)
            x = (r.size_bytes / 1e6 if r.size_bytes else None) if axis == "size" else (sp.value if sp else None)
            if m is not None and x is not None and not math.isnan(m.value):
                pts.append((x, m.value * scale))
                recs.append(r)
        if not pts:
            continue
        x_higher = axis == "speed"
        front = sorted(pareto(pts, x_higher, hib), key=lambda i: pts[i][0])
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for fam in families:
            idx = [i for i, r in enumerate(recs) if r.family == fam]
            if idx:
                ax.scatter([pts[i][0] for i in idx], [pts[i][1] for i in idx], s=36, color=colours[fam],
                           label=fam, zorder=3)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="0.4", alpha=0.7,
                label="Pareto frontier", zorder=2)
        for (x, y), r in zip(pts, recs):
            ax.annotate(r.artifact_id.split("/")[-1], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("size on disk (MB)" if axis == "size" else SPEED_LABEL[speed_kind])
        unit = " (%)" if metric in PERCENT else ""
        ax.set_ylabel(f"{task} {metric}{unit}, {'higher' if hib else 'lower'} is better")
        ax.set_title(f"{metric} on {task} vs {'size' if axis == 'size' else 'speed'}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        name = f"pareto_{modality}_{axis}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _items(results_dir: Path, record: Record) -> dict[str, int]:
    """Items each task scored, counted in the samples file (a perplexity metric's n is tokens)."""
    try:
        rows = read_samples(results_dir, record)
    except OSError:
        return {}
    return dict(Counter(r.get("task") for r in rows if "skipped" not in r))


def sections(results_dir: Path, plots: bool = True) -> list[Section]:
    """The report's content; plots=False draws nothing and names the plot files already there."""
    results_dir = Path(results_dir)
    records = load_records(results_dir)
    out = []
    for modality in MODALITIES:
        group = [r for r in records if r.modality == modality]
        if not group:
            continue
        group.sort(key=lambda r: (r.family, r.artifact_id != r.family, r.artifact_id))
        families: dict[str, list[Record]] = {}
        for r in group:
            families.setdefault(r.family, []).append(r)
        columns: list[Column] = []
        for r in group:
            for m in r.metrics:
                if not any(c.task == m.task for c in columns):
                    columns.append(Column(m.task, m.metric, m.higher_is_better))
        sec = Section(modality, families, columns, {r.artifact_id: _items(results_dir, r) for r in group})
        if plots:
            sec.plots = _plot(group, modality, results_dir)
        else:
            sec.plots = [f"pareto_{modality}_{axis}.png" for axis in ("size", "speed")
                         if (results_dir / f"pareto_{modality}_{axis}.png").is_file()]
        out.append(sec)
    return out


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
