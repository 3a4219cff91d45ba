"""Quantize and export stages on the tiny twin: smaller artifacts that still compute the model."""

from __future__ import annotations

import pytest
import torch

from distill import artifacts, runner
from tests.conftest import ROOT

RECIPE = ROOT / "recipes/_tiny/compress.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runner.run(RECIPE, [f"output_dir={tmp_path_factory.mktemp('runs')}"])


def logits_torch(path, ids):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()(input_ids=ids).logits


def test_every_stage_has_a_complete_artifact_with_lineage(run):
    student = run.artifacts["distill"]
    for name in ("int8", "nf4", "onnx-int8"):
        art = run.artifacts[name]
        assert artifacts.is_complete(art.path)
        assert art.lineage[0] == student.artifact_id  # the student it came from, then its teacher
        assert art.lineage[1:] == student.lineage


def test_quantized_artifacts_keep_the_parameter_count(run):
    # NF4 packs two weights per byte: its tensors hold half the elements, the model has as many
    params = run.artifacts["distill"].params
    assert [run.artifacts[n].params for n in ("int8", "nf4", "onnx-int8")] == [params] * 3


def test_quantized_artifacts_are_smaller(run):
    fp32 = run.artifacts["distill"].size_bytes
    assert run.artifacts["nf4"].size_bytes < 0.6 * fp32
    assert run.artifacts["onnx-int8"].size_bytes < 0.6 * fp32
    assert run.artifacts["int8"].size_bytes < 0.6 * fp32  # the INT8 state dict, not an fp32 parent


def test_onnx_int8_tracks_the_torch_model(run):
    from optimum.onnxruntime import ORTModelForCausalLM

    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    ref = logits_torch(run.artifacts["distill"].path, ids)
    ort = ORTModelForCausalLM.from_pretrained(run.artifacts["onnx-int8"].path, use_cache=False)
    got = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert got.shape == ref.shape
    # INT8 changes the numbers a little, not the function: close logits, mostly the same argmax.
    assert torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1] > 0.95
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8


def test_nf4_reloads_and_tracks_the_torch_model(run):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    ref = logits_torch(run.artifacts["distill"].path, ids)
    model = AutoModelForCausalLM.from_pretrained(run.artifacts["nf4"].path, dtype=torch.float32,
                                                 device_map={"": "cpu"}).eval()
    got = model(input_ids=ids).logits
    assert torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1] > 0.9
