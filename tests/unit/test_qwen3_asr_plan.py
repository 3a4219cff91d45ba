"""`distill plan` sizes Qwen3-ASR distillation from the shape-only configs (no weights, offline)."""

from __future__ import annotations

import re

import pytest

from distill.plan import plan
from tests.conftest import ROOT

pytest.importorskip("qwen_asr")
RECIPE = str(ROOT / "recipes/asr/qwen3-asr-1.7b-to-0.6b.yaml")
SHAPES = ["vars.teacher=recipes/asr/configs/qwen3-asr-1.7b", "vars.student=recipes/asr/configs/qwen3-asr-0.6b"]
# Published: 1.7B = Qwen3-1.7B (1.72B) + ~300M AuT encoder; 0.6B = Qwen3-0.6B (0.596B) + ~180M encoder.
PUBLISHED = {"teacher": 1.72e9 + 0.30e9, "student": 0.596e9 + 0.18e9}


def _total(report: str, column: int = 0) -> float:
    line = next(x for x in report.splitlines() if x.strip().startswith("total"))
    return float(line.split()[1 + column])


@pytest.mark.slow  # five meta-device plans of 2B/0.8B models: ~40 s on a busy 2-core machine
def test_real_shapes_match_published_totals_and_memory_follows_batch_and_audio(monkeypatch):
    monkeypatch.chdir(ROOT)
    report = plan(RECIPE, SHAPES)
    for who, published in PUBLISHED.items():
        params = float(re.search(rf"{who}\s+qwen3_asr\s+([\d.]+)B params", report).group(1)) * 1e9
        assert abs(params - published) / published < 0.05, (who, params)
    assert "encoder 317M (24 layers, d 1024)" in report and "(28 layers, hidden 2048)" in report
    assert "encoder 186M (18 layers, d 896)" in report and "(28 layers, hidden 1024)" in report
    base = _total(report)
    assert "1 device(s): fits" in report
    longer = _total(plan(RECIPE, [*SHAPES, "stages.0.data.max_seconds=30", "stages.0.train.batch_size=32"]))
    frozen = _total(plan(RECIPE, [*SHAPES, "stages.0.freeze_encoder=true"]))
    assert longer > base > frozen
    # Weights/gradients/AdamW of a bf16 student take half of fp32's.
    half = plan(RECIPE, [*SHAPES, "stages.0.student.model.dtype=bfloat16"])
    assert "AdamW moments (2 x student dtype)           2.91" in half
    huge = plan(RECIPE, [*SHAPES, "stages.0.train.batch_size=128"])
    assert "1 device(s): does NOT fit" in huge


@pytest.mark.integration
def test_whisper_distillation_is_planned_from_the_asset_config(monkeypatch):
    from distill.assets import is_installed

    if not is_installed("whisper-base"):
        pytest.skip("needs the whisper-base asset")
    monkeypatch.chdir(ROOT)
    report = plan(str(ROOT / "recipes/asr/whisper-base-distil.yaml"), [])
    teacher = float(re.search(r"teacher\s+whisper\s+([\d.]+)M params", report).group(1))
    assert abs(teacher - 74) / 74 < 0.05  # whisper-base: 74M published
    assert "not planned" not in report.split("stage kd")[1].split("\nstage ")[0]
    assert "(2 layers)" in report and "cache fill peak" in report
