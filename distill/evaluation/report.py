"""`distill report`: results/README.md and Pareto plots, regenerated from the records only.

Nothing here is edited by hand: the README says so and is rewritten whole. Rows are grouped by
modality, then family (lineage root), so a student sits under its teacher. Each plotted point is
one artifact; the frontier joins artifacts no other artifact beats on both axes.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

from distill.evaluation.results import Record, load_records

logger = logging.getLogger(__name__)

SPEED_KIND = {"asr": "asr_rtfx", "lm": "lm_decode_tok_s"}
SPEED_LABEL = {"asr_rtfx": "RTFx (audio s / compute s)", "lm_decode_tok_s": "decode tokens/s"}


def _primary(record: Record) -> dict[str, tuple[str, float, bool, int | None]]:
    """task -> (metric, value, higher_is_better, limit) for each task's first metric."""
    out: dict[str, tuple[str, float, bool, int | None]] = {}
    for m in record.metrics:
        out.setdefault(m.task, (m.metric, m.value, m.higher_is_better, m.limit))
    return out


def _cell(prim) -> str:
    metric, value, _, limit = prim
    # A --limit run is a partial number: say so in the cell itself.
    return _fmt(metric, value) + (f" ({limit} spread)" if limit else "")


def _fmt(metric: str, value: float) -> str:
    if metric in ("acc", "acc_macro", "wer", "wer_ortho", "cer"):
        return f"{100 * value:.2f}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _size(record: Record) -> str:
    return "" if record.size_bytes is None else f"{record.size_bytes / 1e6:.1f}"


def _params(record: Record) -> str:
    return "" if record.params is None else f"{record.params / 1e6:.1f}M"


def _speed(record: Record, kind: str):
    return next((t for t in record.throughput if t.kind == kind), None)


def _conditions(t) -> str:
    c = t.conditions
    keys = ("batch_size", "dtype", "threads", "device_name", "backend", "warmup_steps", "n", "scope")
    return ", ".join(f"{k}={c[k]}" for k in keys if k in c)


def headline(records: list[Record]) -> tuple[str, str, bool] | None:
    """The (task, metric) most records share: the y axis of the Pareto plots."""
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
    files = []
    for axis in ("size", "speed"):
        pts, labels = [], []
        for r in records:
            m = next((m for m in r.metrics if m.task == task and m.metric == metric), None)
            x = (r.size_bytes / 1e6 if r.size_bytes else None) if axis == "size" else \
                (_speed(r, speed_kind).value if _speed(r, speed_kind) else None)
            if m is not None and x is not None and not math.isnan(m.value):
                pts.append((x, m.value))
                labels.append(r.artifact_id)
        if not pts:
            continue
        x_higher = axis == "speed"
        front = sorted(pareto(pts, x_higher, hib), key=lambda i: pts[i][0])
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", alpha=0.6, label="Pareto frontier")
        for (x, y), label in zip(pts, labels):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("size on disk (MB)" if axis == "size" else SPEED_LABEL[speed_kind])
        ax.set_ylabel(f"{task} {metric} ({'higher' if hib else 'lower'} is better)")
        ax.set_title(f"{modality}: {metric} vs {axis}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"pareto_{modality}_{axis}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _section(records: list[Record], modality: str, out_dir: Path) -> list[str]:
    records = sorted(records, key=lambda r: (r.family, r.artifact_id != r.family, r.artifact_id))
    tasks: list[str] = []
    for r in records:
        tasks.extend(t for t in _primary(r) if t not in tasks)
    speed_kind = SPEED_KIND[modality]
    header = ["artifact", "family", "kind", "params", "size MB"]
    header += [f"{t} {_metric_name(records, t)}" for t in tasks] + [SPEED_LABEL[speed_kind], "recovery"]
    lines = [f"## {modality.upper()}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for r in records:
        prim = _primary(r)
        cells = [f"`{r.artifact_id}`", f"`{r.family}`", r.kind, _params(r), _size(r)]
        cells += [_cell(prim[t]) if t in prim else "" for t in tasks]
        sp = _speed(r, speed_kind)
        cells.append(f"{sp.value:.2f}" if sp else "")
        # Recovery of each task's primary metric vs the baseline named at eval time (1.00 = kept).
        cells.append(", ".join(f"{rv.task} {rv.value:.3f} vs `{rv.baseline}`" for rv in r.recovery
                               if prim.get(rv.task, ("",))[0] == rv.metric))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Percentages for acc/WER/CER; perplexity is per token of the model's own tokenizer.", ""]
    lines += ["Conditions and reproduction:", ""]
    for r in records:
        sp = [t for t in r.throughput if t.kind in (speed_kind, "peak_rss_bytes") or t.kind.startswith("asr_lat")
              or t.kind == "lm_prefill_tok_s"]
        speeds = "; ".join(f"{t.kind}={t.value:.4g}" for t in sp)
        cond = _conditions(_speed(r, speed_kind)) if _speed(r, speed_kind) else "no speed measured"
        cmds = "; ".join(f"`{c}`" for c in r.provenance.get("commands", {}).values())
        lines.append(f"- `{r.artifact_id}`: {speeds} ({cond}). Samples: [{r.samples}]({r.samples}). {cmds}")
    lines.append("")
    for name in _plot(records, modality, out_dir):
        lines += [f"![{name}]({name})", ""]
    return lines


def _metric_name(records: list[Record], task: str) -> str:
    for r in records:
        if task in _primary(r):
            return _primary(r)[task][0]
    return ""


def write_report(results_dir: Path = Path("results")) -> Path:
    """Regenerate results_dir/README.md and pareto_*.png from results_dir/*.json."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(results_dir)
    lines = ["# Results", "",
             "Generated by `distill report` from the records in this directory: do not edit by hand.",
             "Each record (`<artifact id>.json`) names its conditions and points at its raw per-sample "
             "outputs under `samples/`, from which every metric can be recomputed without the model.", ""]
    if not records:
        lines.append("No records yet: run `distill eval MODEL --suite SUITE`.")
    for modality in ("asr", "lm"):
        group = [r for r in records if r.modality == modality]
        if group:
            lines += _section(group, modality, results_dir)
    out = results_dir / "README.md"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    tmp.replace(out)
    return out
