"""`distill report` writes index.html: one table per family, every artifact a row, conditions per
suite, recovery, gates, plots and sample links, all relative and offline; it loads in headless
Chromium without a console error (that part skips when the Debian `chromium` package is absent)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from distill.evaluation import results
from distill.evaluation.report import write_report


def _metric(task, metric, value, suite, hib=False, **extra):
    return results.Metric(task=task, task_version=1, metric=metric, value=value, n=20, higher_is_better=hib,
                          suite=suite, extra=extra)


def _speed(suite, value, threads):
    return results.Throughput(kind="asr_rtfx", value=value, unit="x realtime", suite=suite,
                              conditions={"threads": threads, "batch_size": 8, "backend": "torch-eager",
                                          "dtype": "float32", "load_avg_before": [1.5, 1.0, 0.5],
                                          "load_avg_after": [2.5, 1.2, 0.6]})


def _write(out: Path, artifact_id: str, family: str, modality: str, metrics, throughput=(), recovery=(),
           gate=None, suites=None):
    rec = results.Record(artifact_id=artifact_id, kind="hf-whisper" if modality == "asr" else "hf-causal-lm",
                         adapter="x", family=family, modality=modality, params=37_800_000, size_bytes=156_000_000,
                         metrics=list(metrics), throughput=list(throughput), recovery=list(recovery), gate=gate,
                         suites=suites or {}, run_id=None if artifact_id == family else "run-1",
                         samples=results.samples_relpath(artifact_id))
    samples = [{"task": m.task, "id": f"u{i}", "prediction": "the the the the cat", "reference": "the cat",
                "errors": 3, "ref_words": 2, "repetition_loop": True} for i, m in enumerate(rec.metrics)]
    results.write(out, rec, samples)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    asr_en = {"asr-en": results.SuiteRun(suite="asr-en", command="distill eval asset:w --suite asr-en",
                                         git_sha="0123456789abcdef", git_dirty=True, threads=2, batch_size=8,
                                         load_avg_before=[1.5, 1.0, 0.5], load_avg_after=[2.5, 1.2, 0.6])}
    _write(out, "asset/w", "asset/w", "asr", [_metric("librivox-5", "wer", 0.05, "asr-en", n_repetition_loops=2)],
           [_speed("asr-en", 9.0, 2)], suites=asr_en)
    _write(out, "run-1/int8", "asset/w", "asr", [_metric("librivox-5", "wer", 0.06, "asr-en")],
           [_speed("asr-en", 14.0, 2)],
           [results.Recovery(task="librivox-5", metric="wer", value=0.833, baseline="asset/w", baseline_value=0.05)],
           gate={"status": "failed", "task": "librivox-5", "metric": "wer", "source": {"value": 0.05},
                 "result": {"value": 0.06}, "drift": 1.0, "tolerance": 0.5, "unit": "abs"}, suites=asr_en)
    _write(out, "asset/lm", "asset/lm", "lm", [_metric("smoke-ppl", "perplexity", 19.5, "smoke")])
    write_report(out)
    return out


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.rows, self.families, self.scripts, self.text = [], 0, 0, 0, []
        self._in_tbody = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "script", "link", "iframe") and (a.get("src") or a.get("href")):
            self.refs.append(a.get("src") or a.get("href"))
        if tag == "a" and a.get("href"):
            self.refs.append(a["href"])
        self.scripts += tag == "script"
        self._in_tbody += tag == "tbody"
        self.rows += tag == "tr" and self._in_tbody == 1 and self.families > 0
        self.families += tag == "section" and a.get("class") == "family"

    def handle_endtag(self, tag):
        self._in_tbody -= tag == "tbody"

    def handle_data(self, data):
        self.text.append(data)


def test_index_html_is_offline_and_shows_every_artifact_per_family(report_dir):
    page = _Page()
    page.feed((report_dir / "index.html").read_text())
    text = " ".join(page.text)
    assert page.scripts == 0 and page.families == 2  # asset/w (ASR) and asset/lm (LM): a table each
    for ref in page.refs:
        assert not ref.startswith(("http:", "https:", "//", "/")), ref  # nothing fetched, nothing absolute
        if not ref.startswith("#"):
            assert (report_dir / ref).is_file(), ref  # plots, raw samples, records, README
    assert any(r.startswith("samples/") for r in page.refs) and "pareto_asr_size.png" in page.refs
    for label in ("asset/w", "int8", "asset/lm", "run-1"):
        assert label in text
    # recovery, loops, gate with its numbers, and the suite's conditions (commit, dirty, load)
    assert "×0.833" in text and "2 loops" in text
    assert "failed" in text and "5 → 6" in text
    assert "0123456789" in text and "dirty tree" in text and "1.5 → 2.5" in text
    readme = (report_dir / "README.md").read_text()
    assert "index.html" in readme and "[2 loops]" in readme and "commit 01234567 (dirty tree)" in readme


def test_index_html_loads_in_headless_chromium_without_errors(report_dir):
    from chromium_page import chromium, load_page

    if chromium() is None:
        pytest.skip("Debian package `chromium` not installed (apt-get install chromium); "
                    "the page is still checked structurally by the test above")
    value, errors = load_page((report_dir / "index.html").as_uri(),
                              "({rows: [...document.querySelectorAll('section.family tbody tr .art')]"
                              ".map(e => e.textContent), images: [...document.images].map(i => i.naturalWidth)})")
    assert errors == []
    assert value["rows"] == ["asset/w", "int8", "asset/lm"]  # the base first, its variant under it
    assert value["images"] and all(w > 0 for w in value["images"])  # every plot decoded


def test_run_summary_is_a_short_table_of_the_given_records(report_dir):
    from distill.evaluation.report import summary

    text = summary(sorted(p for p in report_dir.glob("*.json") if "asset__lm" not in p.name))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["model", "size", "MB"] and "librivox-5 wer" in lines[0]
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert set(rows) == {"asset/w", "int8"}
    assert "5.00" in rows["asset/w"] and "baseline" in rows["asset/w"]  # WER in %, the reference row
    assert "6.00" in rows["int8"] and "failed" in rows["int8"] and "0.833 (librivox-5)" in rows["int8"]
