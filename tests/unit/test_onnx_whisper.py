"""ONNX export of a cut-window Whisper student (`max_source_positions` < 1500): optimum traces
Whisper with 3000-frame features by default, which such an encoder refuses; the export stage traces
it with its own window, and the exported graphs then compute what the PyTorch model computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill import runner
from distill.evaluation.adapters import ADAPTERS, load_hf_whisper
from distill.evaluation.loading import resolve_model
from distill.stages.export import trace_shapes
from test_ct2 import audio_clips, tiny_whisper_dir

pytest.importorskip("onnxruntime")


def test_trace_shapes_follow_the_whisper_window(tmp_path):
    short, full = tmp_path / "short", tmp_path / "full"
    for path, positions in ((short, 50), (full, 1500)):
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "whisper", "max_source_positions": positions}))
    assert trace_shapes(short) == {"nb_max_frames": 100}
    assert trace_shapes(full) == {"nb_max_frames": 3000}  # optimum's own default
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert trace_shapes(tmp_path) == {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-whisper")
    src = tiny_whisper_dir(root / "whisper-1s", 50)  # a 1-s window
    recipe = {"name": "onnx-whisper-tiny", "seed": 0,
              "stages": [{"name": "onnx", "kind": "export", "model": str(src)},
                         {"name": "onnx-int8", "kind": "export", "model": str(src), "quantize": "int8-dynamic"}]}
    path = root / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    result = runner.run(path, [f"output_dir={root / 'runs'}"])
    return {"src": src, **result.artifacts}


@pytest.mark.slow
def test_cut_window_onnx_encoder_computes_the_torch_encoder(exported):
    import onnxruntime as ort
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    fe = WhisperFeatureExtractor.from_pretrained(exported["onnx"].path)
    assert fe.chunk_length == 1  # the processor travels with the export
    feats = fe(audio_clips(), sampling_rate=16000, return_tensors="np").input_features
    assert feats.shape[-1] == 100
    session = ort.InferenceSession(str(exported["onnx"].path / "encoder_model.onnx"))
    got = session.run(None, {"input_features": feats.astype(np.float32)})[0]
    model = WhisperForConditionalGeneration.from_pretrained(exported["src"]).eval()
    with torch.no_grad():
        ref = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert got.shape == ref.shape == (2, 50, 32)
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.slow
def test_cut_window_onnx_transcribes_like_torch_including_long_audio(exported):
    torch_asr = load_hf_whisper(str(exported["src"]))
    clips = audio_clips()
    long_clip = np.concatenate([clips[0], np.zeros(4000, np.float32), clips[1]])  # 1.6 s > the 1-s window
    for name in ("onnx", "onnx-int8"):
        ref = resolve_model(str(exported[name].path))
        asr = ADAPTERS[ref.adapter](ref.source, "cpu", ref.manifest)
        assert asr.backend == "onnxruntime" and asr.max_audio_seconds == 1
        got = asr.transcribe(clips) + asr.transcribe([long_clip])
        if name == "onnx":  # fp32: the same tokens, window by window, pieces cut at the same pause
            assert got == torch_asr.transcribe(clips) + torch_asr.transcribe([long_clip])
        else:  # INT8 of random weights: other numbers, so only that it loads as INT8 and runs
            assert asr.dtype == "int8-dynamic" and len(got) == 3
