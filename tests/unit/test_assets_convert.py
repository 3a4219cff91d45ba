"""CTranslate2 reader and Whisper converter, checked against a tiny random HF Whisper.

The test writes a CT2 `model.bin` from an HF state dict with its own writer (the format as
documented: fused q/k/v, fused cross-attention k/v, zero k bias), converts it back with the
library, and requires the round trip to reproduce every original tensor exactly.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from distill.assets import ct2
from distill.errors import DistillError

_DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
              np.dtype(np.int32): 3, np.dtype(np.float16): 4}


def _str(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None):
    out = struct.pack("<I", 6) + _str("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, arr in variables.items():
        arr = np.asarray(arr, order="C")  # ascontiguousarray would make scalars 1-d
        out += _str(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        out += struct.pack("<B", _DTYPE_IDS[arr.dtype]) + struct.pack("<I", arr.nbytes) + arr.tobytes()
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _str(alias) + _str(target)
    path.write_bytes(out)


def test_read_model_bin_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    variables = {"a/weight": rng.standard_normal((3, 4)).astype(np.float16),
                 "b/scalar": np.array(7, dtype=np.int16), "c": rng.standard_normal(5).astype(np.float32)}
    write_model_bin(tmp_path / "model.bin", variables, aliases={"d/weight": "a/weight"})
    spec, got = ct2.read_model_bin(tmp_path / "model.bin")
    assert spec == "WhisperSpec"
    for name, arr in variables.items():
        assert got[name].dtype == arr.dtype and np.array_equal(got[name], arr)
    assert np.array_equal(got["d/weight"], variables["a/weight"])


def test_truncated_model_bin_is_a_user_error(tmp_path):
    write_model_bin(tmp_path / "model.bin", {"a": np.zeros((64,), np.float32)})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-200])
    with pytest.raises(DistillError):
        ct2.read_model_bin(tmp_path / "model.bin")


def hf_to_ct2(state: dict[str, np.ndarray], enc_layers: int, dec_layers: int, heads: int) -> dict:
    """Independent inverse of the converter: HF Whisper keys -> CT2 variables."""
    v = {}

    def lin(src, dst, bias=True):
        v[f"{dst}/weight"] = state[f"{src}.weight"]
        v[f"{dst}/bias"] = state[f"{src}.bias"] if bias else np.zeros(state[f"{src}.weight"].shape[0], np.float32)

    def norm(src, dst):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = state[f"{src}.weight"], state[f"{src}.bias"]

    def fuse(srcs, dst):
        v[f"{dst}/weight"] = np.concatenate([state[f"{s}.weight"] for s in srcs])
        v[f"{dst}/bias"] = np.concatenate([state.get(f"{s}.bias", np.zeros(state[f"{s}.weight"].shape[0], np.float32))
                                           for s in srcs])

    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            h, c = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            fuse([f"{h}.self_attn.q_proj", f"{h}.self_attn.k_proj", f"{h}.self_attn.v_proj"],
                 f"{c}/self_attention/linear_0")
            lin(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
            norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
            if side == "decoder":
                lin(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
                fuse([f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj"], f"{c}/attention/linear_1")
                lin(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
                norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
            lin(f"{h}.fc1", f"{c}/ffn/linear_0")
            lin(f"{h}.fc2", f"{c}/ffn/linear_1")
            norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        v[f"{side}/num_heads"] = np.array(heads, dtype=np.int16)
    for i in (1, 2):
        lin(f"model.encoder.conv{i}", f"encoder/conv{i}")
    v["encoder/position_encodings/encodings"] = state["model.encoder.embed_positions.weight"]
    v["decoder/position_encodings/encodings"] = state["model.decoder.embed_positions.weight"]
    v["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    return v


def _tokenizer_json(vocab_size: int) -> dict:
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    base = vocab_size - len(specials)
    vocab = {chr(ord("a") + i % 26) * (1 + i // 26): i for i in range(base)}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": base + k, "content": s, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}
                             for k, s in enumerate(specials)],
            "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                                   "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                                                "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []}}


def test_whisper_ct2_conversion_reproduces_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=60, d_model=16, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=30, max_target_positions=20,
                        pad_token_id=51, bos_token_id=51, eos_token_id=51, decoder_start_token_id=52)
    ref = WhisperForConditionalGeneration(cfg).eval()
    state = {k: t.detach().numpy().astype(np.float32) for k, t in ref.state_dict().items()
             if k != "proj_out.weight"}
    write_model_bin(tmp_path / "model.bin", hf_to_ct2(state, 2, 1, 2))
    tokenizer = _tokenizer_json(60)
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    en = tokenizer["added_tokens"][2]["id"]
    (tmp_path / "config.json").write_text(json.dumps({"alignment_heads": [[0, 1]], "lang_ids": [en],
                                                      "suppress_ids": [3, 4], "suppress_ids_begin": [5]}))
    (tmp_path / "english.json").write_text(json.dumps({"colour": "color"}))
    out = tmp_path / "hf"
    out.mkdir()
    params = ct2.convert_whisper(tmp_path / "model.bin", tmp_path / "config.json", tmp_path / "tokenizer.json",
                                 tmp_path / "english.json", out)

    got = WhisperForConditionalGeneration.from_pretrained(out).eval()
    assert params == sum(p.numel() for p in ref.parameters())
    assert got.config.encoder_attention_heads == 2 and got.config.decoder_layers == 1
    for key, tensor in ref.state_dict().items():
        assert torch.equal(got.state_dict()[key], tensor), key
    features = torch.randn(1, 80, 60)
    dec = torch.tensor([[tokenizer["added_tokens"][1]["id"], 7, 8]])
    with torch.no_grad():
        assert torch.allclose(got(features, decoder_input_ids=dec).logits, ref(features, decoder_input_ids=dec).logits)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["suppress_tokens"] == [3, 4] and gen["begin_suppress_tokens"] == [5]
    assert gen["decoder_start_token_id"] == tokenizer["added_tokens"][1]["id"]
    assert gen["no_timestamps_token_id"] == tokenizer["added_tokens"][8]["id"]
    processor = WhisperProcessor.from_pretrained(out)
    assert processor.feature_extractor.feature_size == 80
    assert json.loads((out / "normalizer.json").read_text()) == {"colour": "color"}
