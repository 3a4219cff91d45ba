"""Every LM artifact kind loads through its adapter and scores like the fp32 model it came from."""

from __future__ import annotations

import json

import pytest
import torch

from distill import artifacts
from distill.evaluation.adapters import ADAPTERS, load_hf_causal_lm
from distill.evaluation.loading import infer_adapter, resolve_model
from test_eval_tiny import tiny_llama

SEQS = [[5, 9, 33, 70, 101, 7], [44, 3, 200], [1, 2, 3, 4]]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tiny_llama(tmp_path_factory.mktemp("base") / "base")
    return path, load_hf_causal_lm(str(path))


def _reference(lm, seqs):
    """Unpadded, one sequence at a time: what padding and batching must not change."""
    out = []
    with torch.no_grad():
        for s in seqs:
            out.append(torch.log_softmax(lm.model(torch.tensor([s])).logits[0, -1].float(), -1))
    return torch.stack(out)


def test_batched_left_padded_last_logprobs_equal_unpadded(base):
    _, lm = base
    assert torch.allclose(lm.last_logprobs(SEQS), _reference(lm, SEQS), atol=1e-4)
    # token_logprobs (right padded) agrees with the left-padded path on the last position
    last = [t[-1].item() for t in lm.token_logprobs(SEQS)]
    ref = _reference(lm, [s[:-1] for s in SEQS])
    assert last == pytest.approx([ref[i, s[-1]].item() for i, s in enumerate(SEQS)], abs=1e-4)


def _manifest(path, kind, extra=None):
    artifacts.finalize(artifacts.Artifact(path=path, artifact_id=f"run/{path.name}", kind=kind, adapter=kind,
                                          lineage=["asset/base"], extra=extra or {}))


def test_peft_adapter_on_its_base_equals_merged(base, tmp_path):
    from peft import LoraConfig, get_peft_model

    path, lm = base
    torch.manual_seed(0)
    model = get_peft_model(load_hf_causal_lm(str(path)).model,
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "lora")
    cfg = json.loads((tmp_path / "lora/adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(path)
    (tmp_path / "lora/adapter_config.json").write_text(json.dumps(cfg))
    _manifest(tmp_path / "lora", "peft-adapter")
    ref = resolve_model(str(tmp_path / "lora"))
    assert ref.adapter == "peft-adapter" and ref.lineage == ["asset/base"]
    adapted = ADAPTERS["peft-adapter"](ref.source, "cpu", ref.manifest)
    merged = model.merge_and_unload()
    with torch.no_grad():
        want = torch.stack([torch.log_softmax(merged(torch.tensor([s])).logits[0, -1], -1) for s in SEQS])
    got = adapted.last_logprobs(SEQS)
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, lm.last_logprobs(SEQS), atol=1e-3)  # the adapter does something


def test_dynamic_quant_and_bnb_int8_stay_close_to_fp32(base, tmp_path):
    path, lm = base
    want = lm.last_logprobs(SEQS)
    dq = ADAPTERS["torch-dynamic-quant"](str(path), "cpu")
    assert dq.backend == "torch-dynamic-quant"
    assert any("quantized" in type(m).__module__ for m in dq.model.modules())
    assert (dq.last_logprobs(SEQS) - want).abs().max() < 0.5
    pytest.importorskip("bitsandbytes")
    _manifest(path, "bnb", {"quantization": {"bits": 8}})
    try:
        q = ADAPTERS["bnb"](str(path), "cpu", artifacts.load(path))
    finally:
        (path / artifacts.MANIFEST).unlink()
    assert q.backend == "bitsandbytes" and q.dtype == "int8"
    assert (q.last_logprobs(SEQS) - want).abs().max() < 0.5


def test_onnx_export_scores_like_torch(base, tmp_path):
    pytest.importorskip("optimum.onnxruntime")
    from optimum.onnxruntime import ORTModelForCausalLM

    path, lm = base
    ORTModelForCausalLM.from_pretrained(path, export=True).save_pretrained(tmp_path / "onnx")
    lm.tokenizer.save_pretrained(tmp_path / "onnx")
    assert infer_adapter(tmp_path / "onnx") == "onnx"
    ort = ADAPTERS["onnx"](str(tmp_path / "onnx"), "cpu")
    assert ort.backend == "onnxruntime"
    assert torch.allclose(ort.last_logprobs(SEQS), lm.last_logprobs(SEQS), atol=1e-3)
