"""LoRA stage on the tiny twin (recipes/_tiny/lora.yaml): adapter-on-base equals the merged weights,
QLoRA evaluates on its NF4 base, only adapter weights are checkpointed, resume is exact, and bad
input fails before a run directory exists."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from distill import artifacts, runner
from distill.evaluation import adapters
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow  # one 4-stage tiny run (~30 s on 2 busy cores) backs the module

RECIPE = ROOT / "recipes/_tiny/lora.yaml"
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runner.run(RECIPE, [f"output_dir={tmp_path_factory.mktemp('runs')}"])


@torch.no_grad()
def hf_logits(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()(input_ids=IDS).logits


def test_adapter_on_base_equals_merged_weights(run):
    from peft import PeftModel

    merged = run.artifacts["lora"]
    adapter_dir = merged.path.parent / "lora-adapter"
    assert artifacts.is_complete(adapter_dir)
    assert artifacts.load(adapter_dir).kind == "peft-adapter"
    base = AutoModelForCausalLM.from_pretrained(run.artifacts["base"].path, dtype=torch.float32)
    with torch.no_grad():
        on_base = PeftModel.from_pretrained(base, adapter_dir).eval()(input_ids=IDS).logits
    torch.testing.assert_close(on_base, hf_logits(merged.path), rtol=1e-4, atol=1e-4)
    # ... and the adapter changed the model (B starts at zero: equality above is not trivial)
    assert (hf_logits(merged.path) - hf_logits(run.artifacts["base"].path)).abs().max() > 1e-4


def test_harness_loads_adapter_and_merged_alike(run):
    ref = adapters.load_peft_adapter(str(run.artifacts["lora"].path.parent / "lora-adapter"), "cpu",
                                     artifacts.load(run.artifacts["lora"].path.parent / "lora-adapter"))
    seqs = [IDS[0].tolist()]
    merged = adapters.load_hf_causal_lm(str(run.artifacts["lora"].path))
    torch.testing.assert_close(ref.token_logprobs(seqs)[0], merged.token_logprobs(seqs)[0], rtol=1e-4, atol=1e-4)


def test_qlora_adapter_on_nf4_base_equals_merged_dequantized(run):
    art = run.artifacts["qlora"]
    adapter_dir = art.path.parent / "qlora-adapter"
    manifest = artifacts.load(adapter_dir)
    assert manifest.extra["base_quantization"]["quant_type"] == "nf4"
    on_nf4 = adapters.load_peft_adapter(str(adapter_dir), "cpu", manifest)
    assert on_nf4.backend == "bitsandbytes" and on_nf4.dtype == "nf4"
    seqs = [IDS[0].tolist()]
    merged = adapters.load_hf_causal_lm(str(art.path))
    # bnb's CPU 4-bit matmul sums in another order than the dense fp32 one: ~1e-4 relative
    torch.testing.assert_close(on_nf4.token_logprobs(seqs)[0], merged.token_logprobs(seqs)[0],
                               rtol=1e-3, atol=2e-3)
    # the QLoRA merge sits on the dequantized NF4 weights, not on the fp32 parent (NF4 error >> 2e-3)
    fp32 = adapters.load_hf_causal_lm(str(run.artifacts["base"].path))
    assert (fp32.token_logprobs(seqs)[0] - merged.token_logprobs(seqs)[0]).abs().max() > 1e-2


def test_only_adapter_weights_are_trained_and_checkpointed(run):
    ckpt = next((run.run_dir / "checkpoints" / "lora").glob("step-*"))
    saved = load_file(ckpt / "lora.safetensors")
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)
    extra = run.artifacts["lora"].extra["lora"]
    assert extra["trainable_params"] == sum(v.numel() for v in saved.values())
    assert extra["trainable_params"] < 0.1 * extra["base_params"]
    # q_proj and v_proj of each of the 2 layers, A and B each
    assert len(saved) == 2 * 2 * 2


def test_kd_objective_trains_all_linear_adapter(run):
    art = run.artifacts["lora-kd"]
    assert art.kind == "peft-adapter"
    config = json.loads((art.path / "adapter_config.json").read_text())
    leaves = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert leaves >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"}
    assert "kd" in art.extra["final_metrics"]


def test_resume_from_checkpoint_is_exact(run, tmp_path):
    copy = tmp_path / run.run_dir.name
    shutil.copytree(run.run_dir, copy)
    for name in ("lora", "lora-adapter"):  # as if killed after the step-3 checkpoint
        shutil.rmtree(copy / "artifacts" / name)
    ckpts = sorted((copy / "checkpoints" / "lora").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-0000003"]
    runner.run(resume=copy)
    a = load_file(run.run_dir / "artifacts" / "lora" / "model.safetensors")
    b = load_file(copy / "artifacts" / "lora" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import AutoConfig

    from distill.models import byte_tokenizer

    out = tmp_path_factory.mktemp("tiny")
    cfg = AutoConfig.for_model("qwen3", vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def write_recipe(tmp_path, stage: dict) -> str:
    import yaml

    data = {"name": "bad", "output_dir": str(tmp_path / "runs"), "stages": [stage]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def assert_refused(tmp_path, stage: dict, *needles: str, commands=("validate", "run")):
    recipe = write_recipe(tmp_path, stage)
    for command in commands:
        out = run_cli(command, recipe)
        assert out.returncode == 2, out.stderr[-1500:]
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-1500:]
        for needle in needles:
            assert needle in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written


DATA = {"source": "recipes/_tiny/data/train.txt", "seq_len": 64}


def test_lora_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_dir):
    model = str(tiny_dir)
    assert_refused(tmp_path / "a", {"kind": "lora", "model": model, "data": DATA, "target_modules": ["qkv"]},
                   "['qkv'] match no module", "q_proj", "down_proj")
    assert_refused(tmp_path / "b", {"kind": "lora", "model": model, "data": DATA, "rank": 0}, "rank")
    quantized = tmp_path / "dyn"
    shutil.copytree(tiny_dir, quantized)
    (quantized / "manifest.json").write_text(json.dumps({"kind": "torch-dynamic-quant"}))
    assert_refused(tmp_path / "c", {"kind": "lora", "model": str(quantized), "data": DATA},
                   "torch dynamic INT8")
    # inline config: module names from the meta-device model, at the start of `distill run`
    inline = {"kind": "lora", "model": {"config": {"model_type": "qwen3", "num_hidden_layers": 1}},
              "data": DATA, "target_modules": ["nope"]}
    assert_refused(tmp_path / "d", inline, "match no module", commands=("run",))


def test_prune_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_dir):
    model = str(tiny_dir)
    assert_refused(tmp_path / "a", {"kind": "prune", "model": model, "method": "magnitude", "sparsity": 1.0},
                   "sparsity")
    assert_refused(tmp_path / "b", {"kind": "prune", "model": model, "method": "width", "num_heads": 3,
                                    "calibration": DATA}, "breaks GQA grouping")
    assert_refused(tmp_path / "c", {"kind": "prune", "model": model, "method": "width", "ffn_ratio": 0.5,
                                    "calibration": DATA, "calibration_blocks": 4}, "calibration_blocks")
    short = tmp_path / "short.txt"
    short.write_text("too little text to calibrate on. " * 20)
    assert_refused(tmp_path / "d", {"kind": "prune", "model": model, "method": "width", "ffn_ratio": 0.5,
                                    "calibration": {"source": str(short), "seq_len": 64}},
                   "fewer than calibration_blocks=64", commands=("run",))  # counting tokens needs a tokenizer
