"""Artifact kinds are one typed list (artifacts.ArtifactKind): checked when an artifact is made or
read, written as plain strings, and each one has an evaluation adapter."""

from __future__ import annotations

import json

import pytest

from distill import artifacts
from distill.artifacts import Artifact, ArtifactKind
from distill.errors import DistillError
from distill.evaluation.adapters import ADAPTERS


def test_an_unknown_kind_fails_when_the_artifact_is_made(tmp_path):
    with pytest.raises(DistillError, match="unknown artifact kind 'hf-causallm'"):
        Artifact(path=tmp_path, artifact_id="run/x", kind="hf-causallm", adapter="hf-causal-lm")


def test_manifest_keeps_plain_strings_and_reads_back_typed(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    artifacts.finalize(Artifact(path=tmp_path, artifact_id="run/q", kind="onnx", adapter="onnx"))
    assert json.loads((tmp_path / artifacts.MANIFEST).read_text())["kind"] == "onnx"
    art = artifacts.load(tmp_path)
    assert art.kind is ArtifactKind.ONNX and art.kind == "onnx" and art.size_bytes == 10
    data = json.loads((tmp_path / artifacts.MANIFEST).read_text())
    (tmp_path / artifacts.MANIFEST).write_text(json.dumps({**data, "kind": "gguf"}))
    with pytest.raises(DistillError, match="unknown artifact kind 'gguf'"):
        artifacts.load(tmp_path)


def test_every_kind_has_an_evaluation_adapter_and_plain_dirs_map_by_model_type():
    assert {k.value for k in ArtifactKind} <= set(ADAPTERS)
    assert artifacts.kind_for_model_type("whisper") is ArtifactKind.HF_WHISPER
    assert artifacts.kind_for_model_type("qwen3_asr") is ArtifactKind.QWEN3_ASR
    assert artifacts.kind_for_model_type("llama") is ArtifactKind.HF_CAUSAL_LM


def test_an_unknown_adapter_is_refused_where_it_is_dispatched(tmp_path):
    from distill.evaluation.adapters import loader_for
    from distill.evaluation.loading import resolve_model

    (tmp_path / "model.safetensors").write_bytes(b"x")
    artifacts.finalize(Artifact(path=tmp_path, artifact_id="run/x", kind="onnx", adapter="onnx-v9"))
    ref = resolve_model(str(tmp_path))  # resolution reads the manifest only
    with pytest.raises(DistillError, match="onnx-v9"):
        loader_for(ref)
