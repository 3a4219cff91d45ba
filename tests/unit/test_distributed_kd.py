"""2 CPU processes (torchrun + gloo through accelerate) follow the 1-process loss trajectory for the
same global batch: rank r reads the rows after ranks < r and DDP averages the gradients."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from distill import losses, recipe, students
    from distill.context import RunContext
    from distill.data import Blocks
    from distill.training import train

    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    def model(layers, seed):
        torch.manual_seed(seed)
        cfg = AutoConfig.for_model("qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=8, tie_word_embeddings=True)
        return AutoModelForCausalLM.from_config(cfg)
    teacher, student = model(2, 0).eval(), model(1, 1)
    # counting sequences from random starts: learnable, so the trajectory goes somewhere
    starts = torch.randint(0, 64, (64, 1), generator=torch.Generator().manual_seed(0))
    tokens = (starts + torch.arange(16)) % 64
    r = recipe.load(sys.argv[3], ["eval=null", "stages.0.train.steps=6", f"stages.0.train.batch_size={batch}",
                                  "stages.0.train.log_every=1", "stages.0.train.checkpoint_every=100",
                                  "stages.0.train.warmup_steps=1", "stages.0.train.lr=0.01"])
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run_dir=out, run_id="t", recipe=r, recipe_sha256="x", stage_name="kd")

    def step(batch):
        labels = losses.shift_labels(batch)
        with torch.no_grad():
            t_h = students.final_hidden(teacher, batch)
        total, kd, ce = losses.chunked_kd_ce(students.final_hidden(student, batch), students.output_head(student),
                                             t_h, students.output_head(teacher), labels, kd_weight=1.0,
                                             ce_weight=0.5, chunk_size=40)
        return total, {"loss": float(total.detach())}

    train({"student": student}, step, Blocks(tokens, seed=3), r.stages[0].train, ctx)
''')


@pytest.mark.slow  # 25 CPU-s measured (DISTILL_TEST_CPU, shared machine)
def test_two_processes_match_one_process_loss_trajectory(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    recipe = str(ROOT / "recipes/_tiny/pipeline.yaml")
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "4", recipe], env=env,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", str(script), str(tmp_path / "two"), "2", recipe],
                         env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]

    def trajectory(d):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r], rows

    l1, rows1 = trajectory(tmp_path / "one")
    l2, rows2 = trajectory(tmp_path / "two")
    assert len(l1) == len(l2) == 6  # rank 0 alone writes metrics
    assert l1[-1] < l1[0]  # it trains
    for a, b in zip(l1, l2):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (l1, l2)
    assert rows1[-1]["tokens"] == rows2[-1]["tokens"] == 6 * 4 * 16
