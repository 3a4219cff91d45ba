"""CTranslate2 export (`kind: export, format: ct2`) and its evaluation adapter, on tiny random models:
the exported model computes what the PyTorch model computes, in its own runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import artifacts, runner
from distill.errors import DistillError
from distill.evaluation.adapters import ADAPTERS, load_hf_causal_lm, load_hf_whisper
from distill.evaluation.loading import resolve_model
from test_eval_tiny import tiny_llama

pytest.importorskip("ctranslate2")

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def tiny_whisper_dir(out: Path, max_source_positions: int = 50, seed: int = 0) -> Path:
    """A 2+2-layer random Whisper with a byte-level tokenizer (+ Whisper's specials and timestamps),
    feature extractor and generation config, saved as a plain HF directory. English-only (CT2 calls
    a vocabulary multilingual from 51865 tokens). Window = max_source_positions / 50 seconds."""
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperTokenizerFast)
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    from distill.assets.ct2 import whisper_generation_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    added = SPECIALS + [f"<|{i * 0.02:.2f}|>" for i in range(max_source_positions + 1)]
    vocab = {c: i for i, c in enumerate(chars)} | {s: len(chars) + k for k, s in enumerate(added)}
    tok_json = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
        "added_tokens": [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s in added],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: i for i, c in enumerate(chars)}, "merges": []}}
    (out / "tokenizer.json").write_text(json.dumps(tok_json))
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    torch.manual_seed(seed)
    cfg = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=max_source_positions, max_target_positions=448,
                        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
                        tie_word_embeddings=False)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # wider logit margins (no near-ties between runtimes) and a decoder the audio steers
        model.proj_out.weight.mul_(5)
        for layer in model.model.decoder.layers:
            layer.encoder_attn.out_proj.weight.mul_(2)
    model.save_pretrained(out)
    # Specials other than EOT and the timestamps suppressed, so the output is text tokens (random
    # weights would emit timestamps after <|notimestamps|>, which transformers then re-segments).
    ct2_style = {"alignment_heads": [[1, 0]], "lang_ids": [vocab["<|en|>"], vocab["<|de|>"]],
                 "suppress_ids": [vocab[t] for t in added[1:]], "suppress_ids_begin": [eot, vocab["Ġ"]]}
    gen = whisper_generation_config(ct2_style, vocab, multilingual=False)
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    WhisperFeatureExtractor(feature_size=80, chunk_length=max_source_positions // 50).save_pretrained(out)
    WhisperTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), model_max_length=448,
                         **{k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
                         ).save_pretrained(out)
    return out


def audio_clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    return [(0.1 * rng.standard_normal(12000)).astype(np.float32),
            (0.5 * np.sin(2 * np.pi * 440 * t[:9000])).astype(np.float32)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One recipe: a 1-s-window Whisper to CT2 float32 and int8, a 30-s one to int8, a Llama to float32/int8."""
    root = tmp_path_factory.mktemp("ct2")
    short, full = tiny_whisper_dir(root / "whisper-1s", 50), tiny_whisper_dir(root / "whisper-30s", 1500)
    llama = tiny_llama(root / "llama")
    stages = [("w-f32", short, "float32"), ("w-int8", short, "int8"), ("w30-int8", full, "int8"),
              ("lm-f32", llama, "float32"), ("lm-int8", llama, "int8_float32"), ("w30-f32", full, "float32")]
    recipe = {"name": "ct2-tiny", "seed": 0,
              "stages": [{"name": n, "kind": "export", "format": "ct2", "quantization": q, "model": str(src)}
                         for n, src, q in stages]}
    recipe["stages"][5].update(window_buckets=[5, 10], bucket_padding_s=1.0)
    # float32 must compute the source: a parity gate on per-token log-probs, scored by the harness
    recipe["stages"][3]["gate"] = {"task": "smoke-ppl", "metric": "max_abs_logprob_diff", "tolerance": 1e-3,
                                   "limit": 4}
    path = root / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    result = runner.run(path, [f"output_dir={root / 'runs'}"])
    return {"short": short, "full": full, "llama": llama, **result.artifacts}


def _load(art):
    ref = resolve_model(str(art.path))
    assert ref.adapter == "ct2"
    return ADAPTERS[ref.adapter](ref.source, "cpu", ref.manifest)


def test_whisper_float32_export_computes_the_torch_model(exported):
    art = exported["w-f32"]
    assert art.kind == "ct2" and art.extra["architecture"] == "whisper"
    assert art.extra["window_s"] == 1 and art.extra["faster_whisper"] is False
    ct2_model, torch_model = _load(art), load_hf_whisper(str(exported["short"]))
    assert (ct2_model.backend, ct2_model.dtype) == ("ctranslate2", "float32")
    clips = audio_clips()
    feats = torch_model.processor.feature_extractor(clips, sampling_rate=16000, return_tensors="np").input_features
    import ctranslate2

    got = np.asarray(ct2_model.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    with torch.no_grad():
        want = torch_model.model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)  # float32 encoder states agree
    assert not np.allclose(want[0], want[1], atol=1e-2)  # and they depend on the audio
    texts = ct2_model.transcribe(clips)
    assert texts == torch_model.transcribe(clips)  # greedy, 128 tokens each
    assert all(len(set(t)) > 3 for t in texts)  # varied text, not one repeated token


def test_whisper_int8_export_is_smaller_and_runs(exported):
    f32, int8 = exported["w-f32"], exported["w-int8"]
    assert (int8.path / "model.bin").stat().st_size < 0.5 * (f32.path / "model.bin").stat().st_size
    model = _load(int8)
    assert model.dtype.startswith("int8")  # what CT2 runs, not the float32 of its source
    assert int8.extra["precision"]["bits"] == 8 and int8.extra["quantization"]["method"] == "ct2-int8"
    assert all(isinstance(t, str) for t in model.transcribe(audio_clips()))
    card = (int8.path / "README.md").read_text()
    assert "ctranslate2.models.Whisper" in card and "pad_or_trim" in card  # says how to run a cut window


def test_full_window_whisper_export_loads_in_faster_whisper(exported):
    from faster_whisper import WhisperModel

    art = exported["w30-int8"]
    assert art.extra["faster_whisper"] is True and "faster_whisper import WhisperModel" in (
        art.path / "README.md").read_text()
    model = WhisperModel(str(art.path), device="cpu", compute_type="int8", cpu_threads=1)
    segments, info = model.transcribe(audio_clips()[0], language="en", beam_size=1, temperature=0.0,
                                      condition_on_previous_text=False, without_timestamps=True)
    text = " ".join(s.text for s in segments)
    assert info.duration == pytest.approx(0.75) and isinstance(text, str)
    assert model.feature_extractor.n_samples == 30 * 16000  # the exported preprocessor_config was read


def test_causal_lm_float32_export_matches_torch(exported):
    seqs = [[5, 9, 33, 70, 101, 7], [44, 3, 200], [1, 2, 3, 4]]
    ct2_lm, torch_lm = _load(exported["lm-f32"]), load_hf_causal_lm(str(exported["llama"]))
    assert ct2_lm.modality == "lm" and ct2_lm.dtype == "float32" and ct2_lm.max_length == 1024
    torch.testing.assert_close(ct2_lm.last_logprobs(seqs), torch_lm.last_logprobs(seqs), atol=1e-4, rtol=0)
    for got, want in zip(ct2_lm.token_logprobs(seqs), torch_lm.token_logprobs(seqs)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    ids = torch.tensor([[5, 9, 33, 7]])
    want = torch_lm.generate(ids, torch.ones_like(ids), 8)[0, 4:].tolist()
    assert ct2_lm.generate(ids, torch.ones_like(ids), 8) == [want]


def test_float32_lm_export_passes_its_logprob_parity_gate(exported):
    gate = exported["lm-f32"].extra["gate"]
    assert gate["status"] == "passed", gate


def test_causal_lm_int8_export_tracks_float32(exported):
    seqs = [[5, 9, 33, 70, 101, 7], [44, 3, 200]]
    f32, int8 = _load(exported["lm-f32"]), _load(exported["lm-int8"])
    assert int8.dtype == "int8_float32"
    a, b = f32.last_logprobs(seqs), int8.last_logprobs(seqs)
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95
    assert not torch.equal(a, b)  # it is quantized


def test_ct2_lm_export_scores_through_the_harness_like_its_source(exported, tmp_path):
    from distill.evaluation import results
    from distill.evaluation.harness import evaluate

    got = results.load_record(evaluate(str(exported["lm-f32"].path), "smoke", results_dir=tmp_path, threads=1))
    want = results.load_record(evaluate(str(exported["llama"]), "smoke", results_dir=tmp_path, threads=1))
    assert got.adapter == "ct2" and got.throughput[0].conditions["backend"] == "ctranslate2"
    ppl = {r.artifact_id: [m.value for m in r.metrics if m.metric == "bits_per_byte"][0] for r in (got, want)}
    assert ppl[got.artifact_id] == pytest.approx(ppl[want.artifact_id], rel=1e-4)


class _Scripted:
    """A stand-in CT2 Whisper that answers each window with the next scripted token list."""

    def __init__(self, outputs):
        self.outputs, self.calls, self.batches = list(outputs), 0, []

    def generate(self, features, prompts, **kwargs):
        from types import SimpleNamespace

        self.calls += 1
        self.batches.append(len(prompts))
        return [SimpleNamespace(sequences_ids=[self.outputs.pop(0)]) for _ in prompts]


def test_cut_window_long_audio_is_cut_at_pauses_and_decoded_as_one_batch(exported):
    model = _load(exported["w-f32"])  # 1-s window
    tok = model.processor.tokenizer
    words = [tok(w, add_special_tokens=False).input_ids for w in (" one", " two", " three")]
    model.model = _Scripted([[*w, model._ids["<|endoftext|>"]] for w in words])
    noise = lambda s: np.random.default_rng(0).normal(0, 0.3, int(s * 16000)).astype(np.float32)  # noqa: E731
    gap = np.zeros(int(0.2 * 16000), dtype=np.float32)
    audio = np.concatenate([noise(0.7), gap, noise(0.7), gap, noise(0.5)])  # 2.3 s, pauses at 0.8 s, 1.7 s
    assert model.transcribe([audio]) == ["one two three"]
    assert model.model.batches == [3]  # every piece in one batch


def test_full_window_long_form_slides_the_window_to_the_last_complete_segment(exported):
    """Whisper's own rule, run here on the 1-s twin (the rule is the same for a 30-s model)."""
    model = _load(exported["w-f32"])  # 1-s window
    tok = model.processor.tokenizer
    ts = lambda s: model._ids["ts_begin"] + round(s / 0.02)  # noqa: E731
    a, b, c = (tok(w, add_special_tokens=False).input_ids for w in (" one", " two", " three"))
    # window 1 (0-1 s): "one" 0.0-0.4, then "two" starts at 0.4 and is cut: resume at 0.4 s;
    # window 2 (0.4-1.4 s): "two", ending on a lone timestamp (clean): resume at 1.4 s;
    # window 3 (1.4-1.9 s): "three". A cut segment is redone, never doubled or dropped.
    model.model = _Scripted([[ts(0), *a, ts(0.4), ts(0.4), *b],
                             [ts(0), *b, ts(0.5)],
                             [ts(0), *c, ts(0.3)]])
    audio = np.zeros(int(1.9 * 16000), dtype=np.float32)
    assert model._long_form(audio, "en", None) == "one two three"
    assert model.model.calls == 3


def test_bad_ct2_exports_are_refused_before_anything_is_written(exported, tmp_path):
    from distill import ct2, recipe

    with pytest.raises(DistillError, match="cannot export an artifact of kind 'ct2'"):
        ct2.check_source(exported["w-f32"].path, "ct2")
    moe = tmp_path / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    with pytest.raises(DistillError, match="no converter for model_type 'qwen3_moe'"):
        ct2.check_source(moe, "hf-causal-lm")
    assert not any(tmp_path.glob("*/model.bin"))
    base = {"name": "x", "stages": [{"kind": "export", "model": str(exported["llama"])}]}
    for stage, message in (({"format": "onnx", "quantization": "int8"}, "ct2 weight type"),
                           ({"format": "ct2", "quantize": "int8-dynamic"}, "format ct2 quantizes")):
        path = tmp_path / "r.yaml"
        path.write_text(json.dumps({**base, "stages": [{**base["stages"][0], **stage}]}))
        with pytest.raises(DistillError, match=message):
            recipe.load(path, [])


def test_a_window_bucket_runs_the_model_cut_to_that_window(exported):
    """CT2 encodes a 5-s bucket of the 30-s model as the PyTorch model cut to a 5-s window."""
    import ctranslate2
    from transformers import WhisperForConditionalGeneration

    from distill.speech import whisper_student

    art = exported["w30-f32"]
    assert art.extra["window_buckets"] == [5, 10] and art.extra["bucket_padding_s"] == 1.0
    model = _load(art)
    assert model.window_buckets == (5, 10)
    feats = model.processor.feature_extractor(audio_clips(), sampling_rate=16000, return_tensors="np",
                                              max_length=5 * 16000).input_features
    assert feats.shape[-1] == 500
    got = np.asarray(model.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    cut, _ = whisper_student(WhisperForConditionalGeneration.from_pretrained(exported["full"]), window_seconds=5)
    with torch.no_grad():
        want = cut.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


class _Shapes(_Scripted):
    """Records the encoder frames of every generate call and answers with the frame count."""

    def __init__(self, outputs: dict):
        super().__init__([])
        self.outputs = outputs

    def generate(self, features, prompts, **kwargs):
        from types import SimpleNamespace

        frames = np.asarray(features).shape[-1]
        self.batches.append((frames, len(prompts)))
        return [SimpleNamespace(sequences_ids=[self.outputs[frames]]) for _ in prompts]


def test_window_buckets_pad_each_clip_to_the_shortest_bucket_that_leaves_the_padding(exported):
    model = _load(exported["w30-f32"])  # buckets 5 and 10 s, 1 s of padding, window 30 s
    tok = model.processor.tokenizer
    said = {f: tok(f" w{f}", add_special_tokens=False).input_ids for f in (500, 1000, 3000)}
    model.model = _Shapes(said)
    secs = [3.9, 4.5, 12.0, 2.0]  # -> 5 s, 10 s (4.5 + 1 > 5), 30 s, 5 s
    assert [model.window_for(int(s * 16000)) for s in secs] == [80000, 160000, 480000, 80000]
    clips = [np.zeros(int(s * 16000), dtype=np.float32) for s in secs]
    assert [t.strip() for t in model.transcribe(clips)] == ["w500", "w1000", "w3000", "w500"]  # back in input order
    assert sorted(model.model.batches) == [(500, 2), (1000, 1), (3000, 1)]  # one batch per bucket


def test_window_buckets_are_refused_where_they_cannot_run(exported, tmp_path):
    from distill import ct2, recipe

    with pytest.raises(DistillError, match="window bucket 30 s is not shorter than the model's 30 s window"):
        ct2.check_buckets(exported["full"], "hf-whisper", [5, 30])
    with pytest.raises(DistillError, match="window_buckets apply to Whisper exports"):
        ct2.check_buckets(exported["llama"], "hf-causal-lm", [5])
    base = {"kind": "export", "model": str(exported["full"])}
    for stage, message in (({"format": "onnx", "window_buckets": [5]}, "set format: ct2"),
                           ({"format": "ct2", "window_buckets": [1], "bucket_padding_s": 1.0},
                            "must exceed bucket_padding_s")):
        path = tmp_path / "r.yaml"
        path.write_text(json.dumps({"name": "x", "stages": [{**base, **stage}]}))
        with pytest.raises(DistillError, match=message):
            recipe.load(path, [])
