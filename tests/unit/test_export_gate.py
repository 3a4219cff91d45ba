"""Edge export and parity gates on tiny models: formats load with their runtime's plain API, the
records say what really runs, gates pass within tolerance and fail beyond it, and bad compression
input is one error before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from distill import artifacts, gate, recipe, runner
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.errors import DistillError
from tests.conftest import ROOT
from tests.unit.test_eval_tiny import tiny_llama

RECIPE = ROOT / "recipes/_tiny/edge.yaml"


def build(stages: list[dict], tmp_path: Path) -> recipe.Recipe:
    return recipe.build({"name": "t", "output_dir": str(tmp_path / "runs"), "stages": stages})


# ----------------------------------------------------------------------------- pure rules
def test_drift_is_how_much_worse_in_the_gates_unit():
    assert gate.drift("wer", 0.050, 0.056, False, "abs") == pytest.approx(0.6)  # points
    assert gate.drift("acc", 0.50, 0.49, True, "abs") == pytest.approx(1.0)
    assert gate.drift("perplexity", 20.0, 22.0, False, "rel") == pytest.approx(10.0)  # percent
    assert gate.drift("perplexity", 20.0, 21.0, False, "abs") == pytest.approx(1.0)  # raw units
    assert gate.drift("wer", 0.10, 0.08, False, "abs") < 0  # better is negative drift


# ------------------------------------------------------------- bad input: validate, nothing written
def test_gate_task_of_the_wrong_modality_is_a_validation_error(tmp_path):
    model = tiny_llama(tmp_path / "lm")
    r = build([{"kind": "export", "model": str(model),
                "gate": {"task": "librivox-5", "tolerance": 1.0}}], tmp_path)
    with pytest.raises(DistillError, match="scores asr models but this stage's model is an lm"):
        recipe.check_references(r)


def test_gate_metric_must_be_one_of_the_tasks(tmp_path):
    model = tiny_llama(tmp_path / "lm")
    r = build([{"kind": "export", "model": str(model),
                "gate": {"task": "smoke-ppl", "metric": "wer", "tolerance": 1.0}}], tmp_path)
    with pytest.raises(DistillError, match="has no metric 'wer'"):
        recipe.check_references(r)


def test_logprob_drift_needs_a_perplexity_task(tmp_path):
    model = tiny_llama(tmp_path / "lm")
    r = build([{"kind": "export", "model": str(model),
                "gate": {"task": "mmlu-mini-0shot", "metric": gate.LOGPROB_DRIFT, "tolerance": 0.1}}],
              tmp_path)
    with pytest.raises(DistillError, match="compares token log-probs on a perplexity task"):
        recipe.check_references(r)


def test_quantizing_an_already_quantized_stage_output_is_refused_at_validate(tmp_path):
    model = tiny_llama(tmp_path / "lm")
    r = build([{"name": "int8", "kind": "quantize", "model": str(model), "method": "torch-dynamic-int8"},
               {"kind": "export", "quantize": "int4"}], tmp_path)
    with pytest.raises(DistillError, match=r"already quantized/exported \(torch-dynamic-int8\)"):
        recipe.check_references(r)


def test_exporting_qwen3_asr_names_the_supported_path(tmp_path):
    (tmp_path / "asr").mkdir()
    (tmp_path / "asr/config.json").write_text(json.dumps({"model_type": "qwen3_asr"}))
    r = build([{"kind": "export", "model": str(tmp_path / "asr"), "quantize": "int8-dynamic"}], tmp_path)
    with pytest.raises(DistillError, match="no ONNX config for Qwen3-ASR.*kind: quantize"):
        recipe.check_references(r)


def test_calibration_too_small_is_a_schema_error(tmp_path):
    with pytest.raises(DistillError, match="calibration set too small: 4 items"):
        build([{"kind": "export", "model": "x", "quantize": "int8-static",
                "calibration": {"source": "asset:text-en", "n": 4}}], tmp_path)
    with pytest.raises(DistillError, match="needs `calibration:`"):
        build([{"kind": "export", "model": "x", "quantize": "int8-static"}], tmp_path)


def test_calibration_data_too_small_fails_before_the_artifact_dir(tmp_path):
    model = tiny_llama(tmp_path / "lm", tokenizer="bytes")
    (tmp_path / "few.txt").write_text("a few words only\n")
    r = build([{"name": "s8", "kind": "export", "model": str(model), "quantize": "int8-static",
                "calibration": {"source": str(tmp_path / "few.txt"), "n": 8, "seq_len": 8}}], tmp_path)
    with pytest.raises(DistillError, match="calibration set too small: .* gave 2 usable items, 8 asked"):
        recipe.check_references(r, strict=True)  # what `distill run` checks before the run dir
    recipe.check_references(r)  # `validate` reads no tokenizer: the run catches it
    (tmp_path / "r.yaml").write_text(recipe.dump(r))
    with pytest.raises(DistillError, match="calibration set too small"):
        runner.run(tmp_path / "r.yaml")
    assert not (tmp_path / "runs").exists()


def test_cli_bad_input_is_one_error_line_exit_2(cli, tmp_path):
    model = tiny_llama(tmp_path / "lm")
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.dump(build([{"kind": "export", "model": str(model),
                                       "gate": {"task": "asterisk-en", "tolerance": 0.5}}], tmp_path)))
    for command in ("validate", "run"):
        out = cli(command, str(bad))
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("error:") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------- the gate itself (harness)
def _ctx(tmp_path) -> RunContext:
    r = build([{"kind": "export", "model": "x"}], tmp_path)
    (tmp_path / "run").mkdir(exist_ok=True)
    return RunContext(run_dir=tmp_path / "run", run_id="run", recipe=r, recipe_sha256="0")


def _art(path: Path, name: str) -> Artifact:
    return Artifact(path=path, artifact_id=name, kind="hf-causal-lm", adapter="hf-causal-lm")


def test_gate_passes_on_an_identical_model_and_fails_on_a_perturbed_one(tmp_path):
    src = tiny_llama(tmp_path / "src", tokenizer="bytes")
    same = Path(shutil.copytree(src, tmp_path / "same"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    noisy = Path(shutil.copytree(src, tmp_path / "noisy"))
    model.save_pretrained(noisy)
    spec = recipe.GateSpec(task="smoke-ppl", metric="perplexity", tolerance=0.0, unit="rel", limit=2)
    ctx = _ctx(tmp_path)
    ok = gate.evaluate(spec, _art(src, "src"), _art(same, "same"), ctx)
    assert ok["status"] == "passed" and ok["drift"] == 0.0
    spec = recipe.GateSpec(task="smoke-ppl", metric="perplexity", tolerance=5.0, unit="rel", limit=2)
    bad = gate.evaluate(spec, _art(src, "src"), _art(noisy, "noisy"), ctx)
    assert bad["status"] == "failed" and bad["drift"] > 5.0
    assert bad["source"]["value"] == ok["source"]["value"]  # the input is scored once (cached)
    assert bad["result"]["value"] > bad["source"]["value"]
    with pytest.raises(gate.GateFailed, match="gate failed: smoke-ppl perplexity") as err:
        gate.enforce(bad, noisy)
    assert err.value.exit_code == 3
    # per-token log-prob drift: exactly 0 for the same weights, large for the perturbed ones
    spec = recipe.GateSpec(task="smoke-ppl", metric=gate.LOGPROB_DRIFT, tolerance=0.0, limit=2)
    assert gate.evaluate(spec, _art(src, "src"), _art(same, "same"), ctx)["status"] == "passed"
    spec = recipe.GateSpec(task="smoke-ppl", metric=gate.LOGPROB_DRIFT, tolerance=0.5, limit=2)
    drifted = gate.evaluate(spec, _art(src, "src"), _art(noisy, "noisy"), ctx)
    assert drifted["status"] == "failed" and drifted["result"]["value"] > 0.5 and drifted["n"] > 100


# -------------------------------------------------------------- the tiny edge pipeline end to end
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runner.run(RECIPE, [f"output_dir={tmp_path_factory.mktemp('runs')}"])


@pytest.mark.slow
def test_every_onnx_format_loads_in_ort_and_tracks_the_source(run):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(run.artifacts["distill"].path).eval()(input_ids=ids).logits
    # static INT8 clips activations to ranges seen on the calibration text; these random ids lie
    # outside them, so it tracks the source less closely than weight-only or dynamic quantization
    for name, atol, corr in (("onnx", 1e-4, 1.0), ("onnx-int8", None, 0.95), ("onnx-int8-static", None, 0.8),
                             ("onnx-int4", None, 0.95)):
        ort = ORTModelForCausalLM.from_pretrained(run.artifacts[name].path)  # the plain runtime API
        got = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        if atol is not None:
            assert (got - ref).abs().max() < atol, name
        else:  # quantized: the same function, slightly different numbers
            assert torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1] > corr, name


@pytest.mark.slow
def test_records_say_what_really_runs_and_its_real_size(run):
    fp32 = run.artifacts["onnx"].size_bytes
    arts = run.artifacts
    assert arts["onnx"].extra["precision"]["dtype"] == "float32"
    assert arts["onnx-int8"].extra["precision"]["dtype"] == "int8-dynamic"
    assert arts["onnx-int8"].extra["quantization"]["isa"] in ("avx512_vnni", "avx_vnni", "avx512", "avx2",
                                                              "generic")
    assert arts["onnx-int4"].extra["precision"] == {**arts["onnx-int4"].extra["precision"], "bits": 4}
    assert arts["onnx-int8"].size_bytes < 0.6 * fp32
    assert arts["onnx-int4"].size_bytes < arts["onnx-int8"].size_bytes
    # the tied head was untied so the quantizers reached it (else it stays fp32 and INT4 barely shrinks)
    assert arts["onnx-int4"].extra["quantization"]["graphs"]["model.onnx"]["untied"]
    # INT8 keeps the tied table once, as 8-bit blocks read by both the head and the lookup
    int8 = arts["onnx-int8"].extra["quantization"]["graphs"]["model.onnx"]
    assert not int8["untied"] and list(int8["shared_head"].values())[0]["bits"] == 8
    torch_int8 = arts["torch-int8"]
    assert not list(Path(torch_int8.path).glob("*.safetensors"))  # no fp32 parent on disk
    assert torch_int8.size_bytes < 0.8 * arts["distill"].size_bytes
    from distill.evaluation.adapters import ADAPTERS

    for name, dtype in (("onnx-int8", "int8-dynamic"), ("onnx-int4", "int4-rtn-b16"),
                        ("torch-int8", "qint8-dynamic")):
        art = arts[name]
        assert ADAPTERS[art.adapter](str(art.path), "cpu", art).dtype == dtype


@pytest.mark.slow
def test_keep_float_leaves_the_named_layers_in_fp32(run):
    import onnx

    art = run.artifacts["onnx-int8-static"]
    assert art.extra["quantization"]["graphs"]["model.onnx"]["kept_float"]["nodes"] >= 1
    model = onnx.load(str(Path(art.path) / "model.onnx"))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    down = [n for n in model.graph.node if "down_proj" in n.name and n.op_type == "MatMul"]
    assert down and all(inits.get(n.input[1]) == onnx.TensorProto.FLOAT for n in down)
    up = [n for n in model.graph.node if "up_proj" in n.name]
    assert not any(n.op_type == "MatMul" and inits.get(n.input[1]) == onnx.TensorProto.FLOAT for n in up)


@pytest.mark.slow
def test_gates_record_both_numbers_in_the_manifest(run):
    for name in ("onnx", "onnx-int8", "torch-int8"):
        check = artifacts.load(run.artifacts[name].path).extra["gate"]
        assert check["status"] == "passed"
        assert check["source"]["backend"] == "torch-eager" and check["source"]["value"] > 0
        assert check["result"]["value"] > 0 and check["drift"] <= check["tolerance"]
    onnx = artifacts.load(run.artifacts["onnx"].path).extra["gate"]
    assert abs(onnx["drift"]) < 0.01  # fp32 graphs: the same model


@pytest.mark.slow
def test_a_failed_gate_keeps_the_artifact_exits_3_and_stops_a_resume(tmp_path, monkeypatch):
    from distill.evaluation import harness

    real = harness.score_task

    def worse_output(model, task, limit=None, **kw):  # the stage's output scores 10 % worse
        found = real(model, task, limit, **kw)
        if kw.get("manifest") is not None:
            found["metrics"] = {k: v * 1.1 for k, v in found["metrics"].items()}
        return found

    monkeypatch.setattr(harness, "score_task", worse_output)
    model = tiny_llama(tmp_path / "lm", tokenizer="bytes")
    r = build([{"name": "int8", "kind": "export", "model": str(model), "quantize": "int8-dynamic",
                "gate": {"task": "smoke-ppl", "tolerance": 5.0, "unit": "rel", "limit": 2}}], tmp_path)
    (tmp_path / "r.yaml").write_text(recipe.dump(r))
    with pytest.raises(gate.GateFailed, match=r"gate failed: smoke-ppl perplexity .* drift \+\d"):
        runner.run(tmp_path / "r.yaml")
    run_dir = next((tmp_path / "runs").iterdir())
    kept = artifacts.load(run_dir / "artifacts/int8")
    assert kept.extra["gate"]["status"] == "failed" and kept.extra["gate"]["drift"] > 5.0
    check = kept.extra["gate"]
    assert check["drift"] == pytest.approx(100 * (check["result"]["value"] / check["source"]["value"] - 1),
                                           abs=1e-4)  # both numbers recorded, drift derived from them
    with pytest.raises(gate.GateFailed):
        runner.run(resume=run_dir)
