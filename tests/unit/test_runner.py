"""`distill run` on the tiny twin: run directory contents, manifest written last, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from distill import artifacts, runner
from tests.conftest import ROOT, run_cli

TINY = str(ROOT / "recipes/_tiny/pipeline.yaml")
NO_EVAL = "eval=null"


def only_run(out_dir: Path) -> Path:
    runs = [p for p in out_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_run_writes_records_and_artifacts(tmp_path):
    result = runner.run(TINY, [f"output_dir={tmp_path}", NO_EVAL])
    run_dir = result.run_dir
    for name in ("recipe.resolved.yaml", "provenance.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert set(prov["seeds"]) == {"python", "numpy", "torch", "data"}
    assert prov["versions"]["torch"] and prov["git"].keys() == {"sha", "dirty"}
    assert prov["start_time"] and prov["end_time"]
    assert prov["machine"]["torch_threads"] >= 1

    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps and max(steps) == 8

    art = result.artifacts["distill"]
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["kind"] == "hf-causal-lm" and manifest["recipe_sha256"]
    assert manifest["size_bytes"] == artifacts.dir_size(art.path)
    assert manifest["lineage"] == [f"{run_dir.name}/distill-teacher"]
    newest_other = max(f.stat().st_mtime_ns for f in art.path.iterdir() if f.name != "manifest.json")
    assert (art.path / "manifest.json").stat().st_mtime_ns >= newest_other

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(art.path)  # HF-loadable
    tok = AutoTokenizer.from_pretrained(art.path)
    assert model.num_parameters() == manifest["params"]
    assert tok.decode(tok("héllo")["input_ids"]) == "héllo"


def test_resolved_recipe_reruns_identically(tmp_path):
    first = runner.run(TINY, [f"output_dir={tmp_path / 'a'}", NO_EVAL])
    again = runner.run(first.run_dir / "recipe.resolved.yaml", [f"output_dir={tmp_path / 'b'}"])
    a = load_file(first.artifacts["distill"].path / "model.safetensors")
    b = load_file(again.artifacts["distill"].path / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_mid_stage_then_resume_matches_uninterrupted(tmp_path):
    args = [f"output_dir={tmp_path / 'killed'}", NO_EVAL, "stages.0.train.steps=60",
            "stages.0.train.checkpoint_every=5", "stages.0.train.log_every=5"]
    proc = subprocess.Popen([sys.executable, "-m", "distill", "run", TINY, *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    run_dir = None
    try:
        while time.time() < deadline:
            found = list((tmp_path / "killed").glob("*/checkpoints/distill/step-*"))
            if any(not p.name.endswith(".tmp") for p in found):
                run_dir = found[0].parents[2]
                break
            assert proc.poll() is None, "run ended before a checkpoint appeared"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_dir is not None, "no checkpoint within the deadline"
    student = run_dir / "artifacts" / "distill"
    assert not artifacts.is_complete(student), "a killed stage must not look complete"

    out = run_cli("run", "--resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-2000:]
    assert artifacts.is_complete(student)
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["resumed"] and prov["end_time"]

    straight = runner.run(TINY, [f"output_dir={tmp_path / 'straight'}", *args[1:]])
    a = load_file(student / "model.safetensors")
    b = load_file(straight.artifacts["distill"].path / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_resume_of_finished_run_skips_stages(tmp_path):
    first = runner.run(TINY, [f"output_dir={tmp_path}", NO_EVAL])
    manifest = first.artifacts["distill"].path / "manifest.json"
    before = manifest.stat().st_mtime_ns
    runner.run(resume=first.run_dir)
    assert manifest.stat().st_mtime_ns == before


def test_pipeline_evaluates_teacher_and_student(tmp_path):
    result = runner.run(TINY, [f"output_dir={tmp_path}"])
    assert len(result.records) == 2
    records = [json.loads(Path(p).read_text()) for p in result.records]
    teacher, student = records  # the baseline (teacher) is evaluated first
    assert teacher["artifact_id"].endswith("/distill-teacher")
    assert student["artifact_id"].endswith("/distill")
    assert student["lineage"] == [teacher["artifact_id"]]
    for record in records:
        ppl = [m for m in record["metrics"] if m["metric"] == "perplexity"][0]
        assert ppl["n"] > 0 and ppl["higher_is_better"] is False
        samples = result.run_dir / "results" / record["samples"]  # relative to the results dir
        assert samples.is_file() and samples.read_text().strip()
    assert student["recovery"], "the student record compares itself with the teacher"
    assert (result.run_dir / "results" / "README.md").is_file()


def test_git_state_is_dirty_for_source_changes_not_for_new_records(tmp_path):
    import subprocess

    from distill.provenance import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "mod.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text("old\n")
    git("add", "mod.py", "results/README.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "README.md").write_text("regenerated\n")  # " M results/README.md": first line
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "samples").mkdir(parents=True)
    (tmp_path / "results" / "a.json").write_text("{}")
    (tmp_path / "results" / "samples" / "a.jsonl").write_text("")
    assert git_state(tmp_path)["dirty"] is False  # a new record is an output
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "speed.json").write_text("{}")
    assert git_state(tmp_path)["dirty"] is False  # so is a bench's output
    (tmp_path / "bench" / "speed.py").write_text("")
    assert git_state(tmp_path)["dirty"] is True  # the bench script is not
    (tmp_path / "bench" / "speed.py").unlink()
    (tmp_path / "new.py").write_text("")
    assert git_state(tmp_path)["dirty"] is True  # a new source file is not
    (tmp_path / "new.py").unlink()
    (tmp_path / "mod.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
