"""FSDP (train.parallel: fsdp, FSDP2 fully_shard) on 2 CPU processes (torchrun + gloo).

The tiny MoE -> dense twin (an MoE trained from scratch, then distilled through the offline cache,
filled by both processes, into a dense student) ends with the weights of a 1-process run with the same global batch
(tolerance 5e-5 absolute: the reduce-scatter sums in another order than one process does, and
AdamW divides a near-zero gradient element by its own scale; measured 1.5e-5 in one element of one
expert with grad_accum 2, 1.6e-7 without), resumes exactly (bit-identical) from its FULL state-dict checkpoint, and a resume with
another process count is refused. Bad input (a batch the world size cannot split, a model the wrap
policy cannot shard) is refused with one error.
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

from distill import distributed, runner
from distill.errors import DistillError
from distill.recipe import TrainSpec
from distill.training import micro_batch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes/_tiny/moe-to-dense.yaml")
# As in test_distributed_run: the MoE balancing loss is a per-process mean, so it is off here.
# grad_accum 2 on the MoE stage: FSDP skips the reduce-scatter on the first micro-batch.
SAME = ["stages.0.router_aux_weight=0", "stages.0.train.grad_accum=2"]
# eval_every: the held-out loss mid-training runs on the sharded student (root unit gathered).
FSDP = ["stages.0.train.parallel=fsdp", "stages.1.train.parallel=fsdp", "stages.1.train.eval_every=2"]
STAGES = ("teacher", "dense")


def torchrun(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", "-m", "distill", "run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "artifacts" / stage / "model.safetensors")


def max_diff(a: Path, b: Path) -> float:
    worst = 0.0
    for stage in STAGES:
        wa, wb = weights(a, stage), weights(b, stage)
        assert wa.keys() == wb.keys()
        worst = max([worst] + [float((wa[k] - wb[k]).abs().max()) for k in wa])
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(1-process run, 2-process FSDP run)."""
    base = tmp_path_factory.mktemp("fsdp")
    one = runner.run(RECIPE, [f"output_dir={base / 'one'}", "stages.0.train.batch_size=4",
                              "stages.1.train.batch_size=4", *SAME]).run_dir
    (base / "tmp").mkdir()
    two = torchrun(RECIPE, f"output_dir={base / 'two'}", "stages.0.train.batch_size=2",
                   "stages.1.train.batch_size=2", *SAME, *FSDP, tmp=base / "tmp")
    assert two.returncode == 0, two.stderr[-3000:]
    (two_dir,) = list((base / "two").iterdir())
    return one, two_dir


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process(runs):
    one, two = runs
    assert max_diff(one, two) <= 5e-5
    cache = json.loads((two / "artifacts" / "dense" / "manifest.json").read_text())["extra"]["teacher_cache"]
    assert cache["fill_processes"] == 2 and [r["rank"] for r in cache["per_process"]] == [0, 1]
    assert all(r["shards"] > 0 for r in cache["per_process"])  # both processes filled shards

    def evals(run: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["eval_ce"] for r in rows if r["stage"] == "dense" and "eval_ce" in r}

    assert sorted(evals(two)) == [2, 4, 6]  # mid-training held-out loss on the sharded student
    assert evals(two)[6] == pytest.approx(evals(one)[6], rel=1e-5)
    for stage in STAGES:  # checkpoint at step 3 of 6, written once by rank 0, full state dict
        (ckpt,) = list((two / "checkpoints" / stage).iterdir())
        assert ckpt.name == "step-0000003"
        assert '"parallel": "fsdp"' in (ckpt / "state.json").read_text()
        full = load_file(ckpt / f"{'student' if stage == 'dense' else 'model'}.safetensors")
        assert all(not k.startswith("parts.") for k in full)  # the module's own names, not the wrapper's


@pytest.mark.slow
def test_fsdp_resume_is_exact_and_refuses_another_world_size(runs, tmp_path, monkeypatch):
    _, two = runs
    run = tmp_path / two.name
    shutil.copytree(two, run)
    # As if killed after the step-3 checkpoint of the last stage.
    (run / "artifacts" / "dense" / "manifest.json").unlink()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(DistillError, match="2 process"):
        runner.run(resume=run)
    (tmp_path / "tmp").mkdir()
    out = torchrun("--resume", str(run), tmp=tmp_path / "tmp")
    assert out.returncode == 0, out.stderr[-3000:]
    assert max_diff(two, run) == 0.0  # bit-identical to the uninterrupted FSDP run


def test_world_size_that_does_not_split_the_global_batch_is_refused():
    spec = TrainSpec(steps=2, global_batch=8, grad_accum=2)
    assert micro_batch(spec, 2) == 2
    with pytest.raises(DistillError, match="does not split over 3 process"):
        micro_batch(spec, 3)
    with pytest.raises(ValueError, match="not both"):
        TrainSpec(steps=2, global_batch=8, batch_size=4)


def test_fsdp_refuses_a_model_the_wrap_policy_cannot_shard():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen3", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    model = AutoModelForCausalLM.from_config(cfg)
    distributed.check_shardable({"student": model, "proj": torch.nn.Linear(4, 4)})  # blocks found: fine
    with pytest.raises(DistillError, match="finds no decoder-block class"):
        distributed.check_shardable({"student": torch.nn.Sequential(torch.nn.Linear(4, 4))})
    model._no_split_modules = ["NoSuchBlock"]
    with pytest.raises(DistillError, match="cannot shard 'student'"):
        distributed.check_shardable({"student": model})


def test_global_batch_is_checked_against_the_process_count_before_the_run_dir(tmp_path, monkeypatch):
    from distill import recipe

    data = recipe.read_yaml(RECIPE)
    del data["stages"][1]["train"]["batch_size"]
    r = recipe.build(data, [f"output_dir={tmp_path}", "stages.1.train.global_batch=8"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    runner.check(r)  # 8 rows = 2 processes x 4
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(DistillError, match="stages.1: train.global_batch 8 does not split over 3 process"):
        runner.check(r)
    assert not any(tmp_path.iterdir())
