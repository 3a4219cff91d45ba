"""`index.html`: the report as one static page, readable offline (no script, no CDN, inline CSS,
images and sample links relative to the results directory, so the folder can be copied anywhere).

One table per family (the teacher/base first, its students and compressed variants under it): each
metric cell shows the value, how many items it covers, the recovery against the baseline the
record names and any repetition loops; then size, speed, peak memory and the export gate. Under
each table, the conditions of every suite (command, commit + dirty flag, threads, batch, load
average) and, for speech, the worst utterances beside their references.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from distill.evaluation.report_data import (MODALITIES, PERCENT, SPEED_LABEL, Column, Section, fmt, primary,
                                       recovery, speed)
from distill.evaluation.results import Record, read_samples

SHORT_SPEED = {"asr_rtfx": "RTFx", "lm_decode_tok_s": "decode tok/s"}
WORST_SAMPLES = 3  # per ASR task and artifact: enough to see what goes wrong, short enough to scan

CSS = """
:root { --fg:#1d2430; --muted:#677186; --line:#e3e7ee; --bg:#f6f7fa; --card:#fff; --accent:#3056d3;
        --good:#1a7f4b; --goodbg:#e3f5ea; --warn:#8a5a00; --warnbg:#fff1d6; --bad:#b42318; --badbg:#fde7e5; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#1d2430; color:#fff; padding:20px 32px; }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:2px 0; color:#c9d1e0; }
header a { color:#9fb6ff; }
header code { background:#2f3a4d; color:#e6ebf5; }
main { max-width:1500px; margin:0 auto; padding:16px 32px 48px; }
nav { margin:12px 0 4px; display:flex; flex-wrap:wrap; gap:6px; }
nav a { background:var(--card); border:1px solid var(--line); border-radius:14px; padding:2px 10px;
        color:var(--accent); text-decoration:none; font-size:13px; }
h2 { margin:28px 0 4px; font-size:19px; }
.note { color:var(--muted); margin:2px 0 12px; }
.family { background:var(--card); border:1px solid var(--line); border-radius:8px; margin:14px 0 18px;
          padding:14px 16px; overflow-x:auto; }
.family h3 { margin:0 0 10px; font-size:16px; }
.family h3 small { color:var(--muted); font-weight:normal; }
table { border-collapse:collapse; width:100%; }
th, td { padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:top; text-align:right; }
th { font-size:12px; color:var(--muted); font-weight:600; white-space:nowrap; background:#fafbfc; }
th.l, td.l { text-align:left; }
td { font-variant-numeric:tabular-nums; }
tbody tr:hover { background:#f8faff; }
tr.base td:first-child { border-left:3px solid var(--accent); }
.v { font-size:15px; }
.best { font-weight:700; }
.sub { display:block; color:var(--muted); font-size:11px; white-space:nowrap; }
code { font:12px ui-monospace,SFMono-Regular,Menlo,monospace; background:#f1f3f7; padding:1px 4px;
       border-radius:3px; }
.art { font-weight:600; white-space:nowrap; }
.chip { display:inline-block; border-radius:9px; padding:0 6px; font-size:11px; font-weight:600; margin-top:2px; }
.good { color:var(--good); background:var(--goodbg); }
.warn { color:var(--warn); background:var(--warnbg); }
.bad { color:var(--bad); background:var(--badbg); }
.tag { color:var(--accent); background:#e8edff; }
details { margin-top:10px; }
summary { cursor:pointer; color:var(--accent); font-weight:600; }
details table { margin-top:6px; font-size:12px; }
details td, details th { text-align:left; }
details code { white-space:normal; word-break:break-word; }
table.cond td:nth-child(2) { min-width:280px; }
table.cond td:last-child { min-width:210px; white-space:nowrap; }
.pred { color:var(--bad); }
.plots { display:flex; flex-wrap:wrap; gap:16px; margin:8px 0 12px; }
figure { flex:1 1 560px; max-width:720px; margin:0; background:var(--card); border:1px solid var(--line);
         border-radius:8px; padding:8px; }
figure img { display:block; max-width:100%; height:auto; }
figcaption { color:var(--muted); font-size:12px; margin-top:4px; }
footer { color:var(--muted); font-size:12px; margin-top:28px; }
"""


def e(text) -> str:
    return html.escape(str(text), quote=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def _anchor(family: str) -> str:
    return "fam-" + "".join(ch if ch.isalnum() else "-" for ch in family)


def _chip(value: float, text: str) -> str:
    # Recovery 1.0 = the baseline's quality kept; small samples move it by a few points either way.
    cls = "good" if value >= 0.98 else ("warn" if value >= 0.90 else "bad")
    return f'<span class="chip {cls}" title="recovery vs baseline (1.00 = kept)">{e(text)}</span>'


def _task_info(task: str) -> str:
    from distill.evaluation.tasks import load_task

    try:
        return load_task(task).description_text
    except Exception:  # noqa: BLE001 - a record may name a task this checkout no longer has
        return ""


def _best(recs: list[Record], col: Column) -> float | None:
    values = [m.value for r in recs if (m := primary(r, col.task)) and not math.isnan(m.value)]
    if len(values) < 2:
        return None
    return max(values) if col.higher_is_better else min(values)


def _metric_cell(sec: Section, r: Record, col: Column, best: float | None) -> str:
    m = primary(r, col.task)
    if m is None:
        return '<td></td>'
    cls = "v best" if best is not None and m.value == best else "v"
    items = sec.items.get(r.artifact_id, {}).get(col.task)
    sub = [f"{items:,} items" if items else f"n={m.n:,}"]
    if m.limit:
        sub.append(f"--limit {m.limit}")
    if m.stderr is not None and not math.isnan(m.stderr):
        sub.append(f"± {fmt(m.metric, m.stderr)}")
    out = f'<span class="{cls}">{fmt(m.metric, m.value)}</span><span class="sub">{e(" · ".join(sub))}</span>'
    rv = recovery(r, m.task, m.metric)
    if rv is not None:
        out += _chip(rv.value, f"×{rv.value:.3f}")
    loops = m.extra.get("n_repetition_loops")
    if loops:
        out += (f' <span class="chip warn" title="utterances caught in a repetition loop">{loops} '
                f'loop{"s" if loops > 1 else ""}</span>')
    return f"<td>{out}</td>"


def _gate(r: Record) -> str:
    g = r.gate
    if not g:
        return '<td class="l"><span class="sub">none</span></td>'
    status = str(g.get("status", "?"))
    cls = "good" if status == "passed" else "bad"
    scale = 100.0 if g.get("metric") in PERCENT else 1.0
    detail = [f"{g.get('task', '')} {g.get('metric', '')}"]
    src, res = (g.get("source") or {}).get("value"), (g.get("result") or {}).get("value")
    if src is not None and res is not None:
        detail.append(f"{src * scale:.4g} → {res * scale:.4g}")
    if g.get("drift") is not None:
        detail.append(f"drift {g['drift']:+.3g}, tol {g.get('tolerance')} ({g.get('unit', '')})")
    return (f'<td class="l"><span class="chip {cls}">{e(status)}</span>'
            f'<span class="sub">{e(" · ".join(detail))}</span></td>')


def _family_table(sec: Section, family: str, recs: list[Record]) -> str:
    cols = [c for c in sec.columns if any(primary(r, c.task) for r in recs)]
    head = ['<th class="l">artifact</th>', '<th class="l">kind · backend · dtype</th>', "<th>params</th>",
            "<th>size MB</th>"]
    for c in cols:
        arrow = "↑" if c.higher_is_better else "↓"
        unit = " %" if c.metric in PERCENT else ""
        head.append(f'<th title="{e(_task_info(c.task))}">{e(c.task)}<span class="sub">{e(c.metric)}{unit} {arrow}'
                    "</span></th>")
    head += [f'<th title="{e(SPEED_LABEL[sec.speed_kind])}">{e(SHORT_SPEED[sec.speed_kind])} ↑</th>', "<th>peak RSS GB</th>", '<th class="l">gate</th>']
    rows = []
    bests = {c.task: _best(recs, c) for c in cols}
    for r in recs:
        sp = speed(r, sec.speed_kind)
        rss = speed(r, "peak_rss_bytes")
        backend = sp.conditions.get("backend", "") if sp else ""
        dtype = sp.conditions.get("dtype", "") if sp else ""
        base = r.artifact_id == r.family
        tag = ' <span class="chip tag">base</span>' if base else ""
        # "<run id>/<stage>": the stage name is what tells rows apart; the run id goes underneath.
        run, _, name = r.artifact_id.rpartition("/") if r.run_id else ("", "", r.artifact_id)
        cells = [f'<td class="l"><span class="art" title="{e(r.artifact_id)}">{e(name)}</span>{tag}'
                 + (f'<span class="sub">{e(run)}</span>' if run else "") +
                 f'<span class="sub"><a href="{e(r.samples)}">raw samples</a> · '
                 f'<a href="{e(Path(r.samples).stem)}.json">record</a></span></td>',
                 f'<td class="l">{e(r.kind)}<span class="sub">{e(" · ".join(x for x in (backend, dtype) if x))}'
                 "</span></td>",
                 f"<td>{'' if r.params is None else f'{r.params / 1e6:.1f}M'}</td>",
                 f"<td>{'' if r.size_bytes is None else f'{r.size_bytes / 1e6:.1f}'}</td>"]
        cells += [_metric_cell(sec, r, c, bests[c.task]) for c in cols]
        if sp:
            c = sp.conditions
            sub = f"{c.get('threads', '?')} thr · batch {c.get('batch_size', '?')}"
            if c.get("load_avg_before"):
                sub += f" · load {c['load_avg_before'][0]}→{(c.get('load_avg_after') or ['?'])[0]}"
            cells.append(f'<td><span class="v">{sp.value:.2f}</span><span class="sub">{e(sub)}</span></td>')
        else:
            cells.append("<td></td>")
        cells.append(f"<td>{rss.value / 1e9:.2f}</td>" if rss else "<td></td>")
        cells.append(_gate(r))
        rows.append(f'<tr class="{"base" if base else ""}">' + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _amount(t) -> str:
    return f"{t.value / 1e9:.2f} GB" if t.unit == "bytes" else f"{t.value:.4g} {t.unit}"


def _load(before, after) -> str:
    if not before:
        return "not recorded"
    return f"{before[0]} → {(after or ['?'])[0]}"


def _conditions(recs: list[Record]) -> str:
    head = ["artifact · suite", "command", "commit", "threads · batch · limit", "load (1 min) before → after",
            "evaluated · wall", "speed and memory"]
    rows = []
    for r in recs:
        for name, run in r.suites.items():
            commit = (f"<code>{e(run.git_sha[:10])}</code>" + (' <span class="chip warn">dirty tree</span>'
                                                                if run.git_dirty else "")) if run.git_sha else "unknown"
            speeds = "<br>".join(f"{e(t.kind)} {e(_amount(t))}" for t in r.throughput
                                if t.suite == name and t.kind != "peak_gpu_allocated_bytes")
            notes = ""
            if run.rescored:
                notes += (f'<span class="sub">re-scored {e(run.rescored.get("created", "")[:10])}: '
                          f'<code>{e(run.rescored.get("command", ""))}</code></span>')
            if run.note:
                notes += f'<span class="sub">{e(run.note)}</span>'
            setting = " · ".join(e(x if x is not None else "?") for x in (run.threads, run.batch_size))
            when = e((run.created or "")[:16].replace("T", " "))
            if run.eval_wall_s is not None:
                when += f" · {run.eval_wall_s:.0f} s"
            cells = [f"{e(r.artifact_id)}<span class=\"sub\">{e(name)}</span>", f"<code>{e(run.command or '?')}</code>{notes}",
                     commit, f"{setting} · {e(run.limit or 'all')}",
                     f'<span title="1/5/15 min: {e(run.load_avg_before)} → {e(run.load_avg_after)}">'
                     f"{e(_load(run.load_avg_before, run.load_avg_after))}</span>", when, speeds]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<details><summary>Conditions per suite (what each number depends on)</summary><table class="cond">'
            "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></details>")


def _error_rate(sample: dict) -> float:
    if sample.get("ref_chars"):  # a CER task's samples carry character counts
        return (sample.get("char_errors") or 0) / sample["ref_chars"]
    return (sample.get("errors") or 0) / (sample.get("ref_words") or 1)


def _worst(results_dir: Path, recs: list[Record]) -> str:
    """The worst-scored utterances per artifact and task, reference beside raw prediction."""
    rows = []
    for r in recs:
        try:
            samples = read_samples(results_dir, r)
        except OSError:
            continue
        by_task: dict[str, list[dict]] = {}
        for s in samples:
            if "prediction" in s and s.get("ref_words"):
                by_task.setdefault(s.get("task", ""), []).append(s)
        for task, items in by_task.items():
            items.sort(key=_error_rate, reverse=True)
            for s in items[:WORST_SAMPLES]:
                unit = ("char_errors", "ref_chars") if s.get("ref_chars") else ("errors", "ref_words")
                loop = ' <span class="chip warn">loop</span>' if s.get("repetition_loop") else ""
                rows.append(f"<tr><td>{e(r.artifact_id)}</td><td>{e(task)}</td><td>{e(s.get('id', ''))}</td>"
                            f"<td>{e(s.get(unit[0]))}/{e(s.get(unit[1]))}{loop}</td>"
                            f"<td>{e(s.get('reference', ''))}</td>"
                            f"<td class=\"pred\">{e(str(s.get('prediction', ''))[:300])}</td></tr>")
    if not rows:
        return ""
    return (f"<details><summary>Worst {WORST_SAMPLES} utterances per task (raw prediction, scored after "
            "normalisation)</summary><table><thead><tr><th>artifact</th><th>task</th><th>id</th><th>errors</th>"
            "<th>reference</th><th>prediction</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>")


def _other_reports(results_dir: Path) -> str:
    subs = sorted(p.parent.name for p in Path(results_dir).glob("*/index.html"))
    if not subs:
        return ""
    links = " · ".join(f'<a href="{e(s)}/index.html">{e(s)}/</a>' for s in subs)
    return f"<p>Other result sets (each from its own recipe): {links}</p>"


def render(sections: list[Section], results_dir: Path) -> str:
    results_dir = Path(results_dir)
    records = [r for sec in sections for recs in sec.families.values() for r in recs]
    newest = max((run.created or "" for r in records for run in r.suites.values()), default="")
    nav = "".join(f'<a href="#{_anchor(f)}">{e(f)}</a>' for sec in sections for f in sec.families)
    body = []
    for sec in sections:
        body.append(f'<h2 id="{e(sec.modality)}">{e(MODALITIES[sec.modality])}</h2>')
        body.append('<p class="note">acc, WER and CER in %; perplexity per token of the model\'s own tokenizer. '
                    "↑/↓: which way is better; bold: best in its family; chips: recovery against the "
                    "baseline the record names (green ≥ 0.98, amber ≥ 0.90) and repetition loops. "
                    "Speed numbers carry threads, batch and the machine's load average: compare them "
                    "only under similar load.</p>")
        for family, recs in sec.families.items():
            body.append(f'<section class="family" id="{_anchor(family)}"><h3>family {e(family)} '
                        f"<small>{_plural(len(recs), 'artifact')}</small></h3>")
            body.append(_family_table(sec, family, recs))
            body.append(_conditions(recs))
            if sec.modality == "asr":
                body.append(_worst(results_dir, recs))
            body.append("</section>")
        figures = []
        for name in sec.plots:
            axis = "size on disk" if name.endswith("_size.png") else "speed"
            figures.append(f'<figure><img src="{e(name)}" alt="{e(sec.modality)} Pareto plot: quality vs {axis}" '
                           f'width="704" height="462"><figcaption>Quality vs {axis}; the dashed line joins '
                           "artifacts no other beats on both axes.</figcaption></figure>")
        if figures:
            body.append('<div class="plots">' + "".join(figures) + "</div>")
    if not sections:
        body.append("<p>No records yet: run <code>distill eval MODEL --suite SUITE</code>.</p>")
    summary = json.dumps({"records": len(records)})
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="distill report" data-summary='{e(summary)}'>
<title>distill results</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>distill results</h1>
<p>{_plural(len(records), "artifact")} in {_plural(sum(len(s.families) for s in sections), "family")} · newest evaluation
{e(newest[:10] or "n/a")} · generated by <code>distill report</code> from the records in this directory
(do not edit by hand; <a href="README.md">README.md</a> has the same tables as Markdown)</p>
</header>
<main>
<nav>{nav}</nav>
{_other_reports(results_dir)}
{"".join(body)}
<footer>Every number comes from a record (<code>&lt;artifact id&gt;.json</code>) holding its command and
conditions; the raw per-item outputs under <code>samples/</code> recompute every metric without the model.
</footer>
</main>
</body>
</html>
"""
