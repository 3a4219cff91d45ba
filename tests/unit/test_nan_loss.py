"""A non-finite loss stops training with one line naming the step and the last good checkpoint."""

from __future__ import annotations

import pytest
import torch

from distill import recipe
from distill.context import RunContext
from distill.data import Blocks
from distill.errors import DistillError
from distill.training import latest_checkpoint, train
from tests.conftest import ROOT


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    r = recipe.load(ROOT / "recipes/_tiny/pipeline.yaml")
    ctx = RunContext(run_dir=tmp_path, run_id="t", recipe=r, recipe_sha256="x", stage_name="s")
    model = torch.nn.Linear(4, 4)
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        loss = model(batch.float()).pow(2).mean()
        if calls["n"] == 6:  # the 6th optimizer step (0-based step 5) goes bad
            loss = loss * float("nan")
        return loss, {"loss": loss.item()}

    spec = r.stages[0].train.model_copy(update={"steps": 10, "checkpoint_every": 2, "grad_accum": 1})
    blocks = Blocks(torch.randint(0, 10, (16, 4)), seed=0)
    with pytest.raises(DistillError) as info:
        train({"m": model}, step, blocks, spec, ctx)
    message = info.value.one_line()
    assert "loss became nan at step" in message and "(fix:" in message
    assert "step-0000004" in message  # names the last good checkpoint
    assert latest_checkpoint(ctx.checkpoint_dir()).name == "step-0000004"
