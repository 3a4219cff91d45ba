"""Recipe schema: valid recipes load and round-trip; bad input fails with one clear line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from distill import recipe
from distill.errors import DistillError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes/_tiny/pipeline.yaml"


def tiny_data() -> dict:
    return recipe.read_yaml(TINY)


def fails(data: dict, *needles: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(DistillError) as info:
        recipe.build(data, overrides)
    message = info.value.one_line()
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_every_recipe_validates():
    paths = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert paths, "no recipes found"
    for path in paths:
        recipe.check_references(recipe.load(path))  # what `distill validate` checks


def test_resolved_yaml_round_trips():
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        r = recipe.load(path)
        again = recipe.build(yaml.safe_load(recipe.dump(r)))
        assert again == r, path
        assert recipe.sha256(again) == recipe.sha256(r)


def test_overrides_are_typed_yaml_scalars():
    r = recipe.build(tiny_data(), ["seed=7", "stages.0.train.steps=3", "stages.0.loss.kind=jsd",
                                   "stages.0.loss.temperature=2.5", "eval=null"])
    assert r.seed == 7 and r.stages[0].train.steps == 3
    assert r.stages[0].loss.kind == "jsd" and r.stages[0].loss.temperature == 2.5
    assert r.eval is None


def test_interpolation_of_vars_and_env(monkeypatch):
    data = tiny_data()
    data["vars"]["corpus"] = "recipes/_tiny/data/train.txt"
    data["stages"][0]["data"]["source"] = "${vars.corpus}"
    data["description"] = "seed is ${seed}, home ${env:DISTILL_TEST_HOME}"
    monkeypatch.setenv("DISTILL_TEST_HOME", "/somewhere")
    r = recipe.build(data)
    assert r.stages[0].data.source == "recipes/_tiny/data/train.txt"
    assert r.description == "seed is 0, home /somewhere"


def test_model_ref_shorthand_string():
    data = tiny_data()
    data["stages"][0]["teacher"] = "asset:smollm2-135m-instruct"
    r = recipe.build(data)
    assert r.stages[0].teacher.source == "asset:smollm2-135m-instruct"


# ---- bad input: each one line naming the problem and the fix --------------------------------
def test_unknown_top_level_key_suggests_closest():
    data = tiny_data()
    data["sead"] = 3
    msg = fails(data, "unknown key 'sead'", "did you mean 'seed'")
    assert "fix:" in msg


def test_unknown_nested_key_suggests_closest():
    data = tiny_data()
    data["stages"][0]["train"]["learning_rate"] = 0.1
    fails(data, "stages.0.train.learning_rate", "valid keys here")
    data = tiny_data()
    data["stages"][0]["loss"]["temprature"] = 2
    fails(data, "temprature", "did you mean 'temperature'")


def test_wrong_type():
    data = tiny_data()
    data["stages"][0]["train"]["steps"] = "many"
    fails(data, "stages.0.train.steps", "'many'")


def test_negative_or_zero_values():
    data = tiny_data()
    data["stages"][0]["train"]["batch_size"] = 0
    fails(data, "batch_size", "greater than 0")


def test_temperature_must_be_positive():
    data = tiny_data()
    data["stages"][0]["loss"]["temperature"] = 0
    fails(data, "temperature must be > 0")


def test_all_loss_weights_zero():
    data = tiny_data()
    data["stages"][0]["loss"].update(kd_weight=0, ce_weight=0)
    fails(data, "all loss weights are 0")


def test_empty_stages():
    data = tiny_data()
    data["stages"] = []
    fails(data, "`stages` is empty", "distill")


def test_missing_stages():
    data = tiny_data()
    del data["stages"]
    fails(data, "missing required key 'stages'")


def test_unknown_stage_kind():
    data = tiny_data()
    data["stages"][0]["kind"] = "distil"
    fails(data, "unknown stage kind 'distil'", "distill", "lora", "export")


def test_stage_without_kind():
    data = tiny_data()
    del data["stages"][0]["kind"]
    fails(data, "no `kind`")


def test_distill_without_teacher():
    data = tiny_data()
    del data["stages"][0]["teacher"]
    fails(data, "missing required key 'stages.0.teacher'")


def test_model_ref_needs_exactly_one_source():
    data = tiny_data()
    data["stages"][0]["teacher"]["source"] = "asset:whisper-base"
    fails(data, "exactly one of `source` or `config`")


def test_inline_config_needs_model_type():
    data = tiny_data()
    del data["stages"][0]["teacher"]["config"]["model_type"]
    fails(data, "model_type")


def test_student_init_config_needs_model():
    data = tiny_data()
    del data["stages"][0]["student"]["model"]
    fails(data, "needs `student.model`")


def test_quantize_after_unmerged_lora():
    data = tiny_data()
    data["stages"].append({"kind": "lora", "data": {"source": "x.txt"}, "merge": False})
    data["stages"].append({"kind": "quantize"})
    fails(data, "merge: false", "set merge: true")


def test_first_stage_needs_a_model():
    data = tiny_data()
    data["stages"] = [{"kind": "quantize"}]
    fails(data, "first stage is 'quantize' with no input", "model:")


def test_duplicate_stage_names():
    data = tiny_data()
    data["stages"].append(copy.deepcopy(data["stages"][0]))
    fails(data, "duplicate stage names")


@pytest.mark.parametrize("item", ["seed", "=3", "stages..steps=1", "a b=1"])
def test_bad_override_syntax(item):
    fails(tiny_data(), "bad override", "dotted.key=value", overrides=[item])


def test_override_index_out_of_range():
    fails(tiny_data(), "no list item", overrides=["stages.5.train.steps=1"])


def test_interpolation_to_nothing():
    data = tiny_data()
    data["description"] = "${vars.nope}"
    fails(data, "${vars.nope} names nothing")


def test_missing_env_variable(monkeypatch):
    monkeypatch.delenv("DISTILL_SURELY_UNSET", raising=False)
    data = tiny_data()
    data["description"] = "${env:DISTILL_SURELY_UNSET}"
    fails(data, "DISTILL_SURELY_UNSET", "export")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(DistillError, match="not found"):
        recipe.load(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [\n")
    with pytest.raises(DistillError, match="not valid YAML at line"):
        recipe.load(bad)


def test_yaml_that_is_not_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(DistillError, match="mapping"):
        recipe.load(bad)


def test_yaml_loading_is_safe(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo hi']\nstages: []\n")
    with pytest.raises(DistillError, match="Python-object YAML tag !!python/object/apply:os.system"):
        recipe.load(bad)
