"""Prune stage on the tiny twin (recipes/_tiny/prune.yaml): prune -> KD recovery chains in one recipe,
pruned artifacts load in plain transformers, and sparse artifacts account for their size honestly."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from distill import runner
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # one 7-stage tiny run backs the module

RECIPE = ROOT / "recipes/_tiny/prune.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runner.run(RECIPE, [f"output_dir={tmp_path_factory.mktemp('runs')}"])


def test_structured_pruning_then_recovery_chain(run):
    parent = run.artifacts["parent"]
    for name, kd in (("width", "width-kd"), ("depth", "depth-kd")):
        pruned, recovered = run.artifacts[name], run.artifacts[kd]
        assert pruned.params < parent.params
        assert pruned.lineage[0] == parent.artifact_id
        assert recovered.params == pruned.params  # recovery trains the pruned model as it is
        assert recovered.extra["student_init"]["init"] == "model"
        AutoModelForCausalLM.from_pretrained(recovered.path)  # plain transformers loads it
    cfg = AutoConfig.from_pretrained(run.artifacts["width"].path)
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 2)
    assert AutoConfig.from_pretrained(run.artifacts["depth"].path).num_hidden_layers == 3
    assert run.artifacts["width"].extra["calibration_tokens"] == 8 * 64


def test_sparse_artifacts_report_dense_and_sparse_bytes(run):
    for name, sparsity in (("sparse50", 0.5), ("sparse24", 0.5)):
        art = run.artifacts[name]
        size = art.extra["size"]
        assert art.extra["sparsity"] == pytest.approx(sparsity, abs=1e-3)
        assert art.params == run.artifacts["parent"].params  # same shapes: zeros, not fewer weights
        assert size["dense_bytes"] == 4 * art.params
        assert size["bitmask_bytes"] < size["dense_bytes"]
    assert "semi_structured_2_4_bytes" in run.artifacts["sparse24"].extra["size"]
    model = AutoModelForCausalLM.from_pretrained(run.artifacts["sparse24"].path)
    w = model.model.layers[0].mlp.up_proj.weight
    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
