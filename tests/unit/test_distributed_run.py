"""`distill run` under torchrun, 2 CPU processes (gloo): rank 0 alone writes one run directory, and
the weights equal a 1-process run with the same global batch (batch_size is per process).

The recipe is the tiny MoE -> dense twin: a training stage, then a distill stage that reads it as
`stage:teacher` through an offline teacher cache both processes fill, then (2-process run only) the smoke
evaluation. Its MoE load-balancing loss is turned off: DDP computes it over each process's tokens,
and a product of per-token means is not the mean over both halves, so with it the weights differ
by ~1e-2 although everything else is identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill import runner
from distill.errors import DistillError

ROOT = Path(__file__).resolve().parents[2]

RECIPE = str(ROOT / "recipes/_tiny/moe-to-dense.yaml")
SAME = ["stages.0.router_aux_weight=0"]
STAGES = ("teacher", "dense")


pytestmark = pytest.mark.slow  # the module fixture is a 1-process and a 2-process (torchrun) run, like test_fsdp

def torchrun(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", "-m", "distill", "run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


def only_run(out_dir: Path) -> Path:
    runs = [p for p in out_dir.iterdir()]
    assert len(runs) == 1, runs
    return runs[0]


def weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "artifacts" / stage / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    for stage in STAGES:
        wa, wb = weights(a, stage), weights(b, stage)
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-5, msg=f"{stage}: {key}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(1-process run dir, 2-process run dir, 2-process stdout, TMPDIR the ranks used)."""
    base = tmp_path_factory.mktemp("ddp")
    one = runner.run(RECIPE, [f"output_dir={base / 'one'}", "stages.0.train.batch_size=4",
                              "stages.1.train.batch_size=4", *SAME]).run_dir
    tmp = base / "tmp"
    tmp.mkdir()
    two = torchrun(RECIPE, f"output_dir={base / 'two'}", "stages.0.train.batch_size=2",
                   "stages.1.train.batch_size=2", "eval={suite: smoke}", *SAME, tmp=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    return one, only_run(base / "two"), two.stdout, tmp


def test_rank0_writes_one_run_with_the_one_process_weights(runs):
    one, two, stdout, tmp = runs
    assert sorted(p.parent.name for p in two.rglob("manifest.json")) == sorted(STAGES)
    for stage in STAGES:  # checkpoint_every 3 of 6 steps: one checkpoint, written once
        assert [p.name for p in (two / "checkpoints" / stage).iterdir()] == ["step-0000003"]
    prov = json.loads((two / "provenance.json").read_text())
    assert prov["world_size"] == 2 and prov["end_time"]
    assert stdout.count("run finished:") == 1  # rank 1 prints nothing
    assert not list(tmp.glob("distill-rank*")), "rank 1's scratch copies must be removed"

    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    rows2 = [json.loads(line) for line in lines]
    rows1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows2] == [(r["stage"], r["step"]) for r in rows1]
    for r1, r2 in zip(rows1, rows2):
        for key in ("loss", "eval_ce"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-6), (key, r1, r2)

    assert_same_weights(one, two)

    records = sorted(p.name for p in (two / "results").glob("*.json"))
    assert [name.split("__")[1] for name in records] == ["dense.json", "teacher.json"], records


def test_resume_on_two_processes_continues_from_rank0_checkpoint(runs, tmp_path):
    one, two, _, _ = runs
    run = tmp_path / two.name
    shutil.copytree(two, run)
    # As if killed after the step-3 checkpoint of the last stage: its artifact is not complete.
    (run / "artifacts" / "dense" / "manifest.json").unlink()
    shutil.rmtree(run / "results")
    (tmp_path / "tmp").mkdir()
    out = torchrun("--resume", str(run), tmp=tmp_path / "tmp")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.parent.name for p in run.rglob("manifest.json")) == sorted(STAGES)
    assert json.loads((run / "provenance.json").read_text())["resumed"]
    assert_same_weights(one, run)


def test_resume_with_another_process_count_is_refused(runs, tmp_path, monkeypatch):
    _, two, _, _ = runs
    run = tmp_path / two.name
    shutil.copytree(two, run)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(DistillError, match="2 process"):
        runner.run(resume=run)
