"""What the report shows, gathered from the records: sections per modality, families, the columns
and cell helpers both renderings use (`report` writes Markdown, `report_html` the page), and the
Pareto plots. Pure reading: nothing here writes a README or a page.
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
