"""CTranslate2 `model.bin` reader and a Whisper CT2 -> Hugging Face converter.

Format (little-endian), as written by CTranslate2 >= 2 (binary version >= 5):
  u32 version, u16-length spec name ("WhisperSpec"), u32 revision, u32 variable count, then per
  variable: u16-length name, u8 rank, rank x u32 dims, u8 dtype, u32 byte count, raw bytes;
  then (version >= 3) u32 alias count and per alias two u16-length strings (alias, target).
Strings carry a trailing NUL inside their length. We read this ourselves rather than depending on
the `ctranslate2` package: the format is small and the runtime is not needed to get the weights.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from distill.errors import DistillError

logger = logging.getLogger(__name__)

# CT2 DataType enum -> numpy dtype. bf16 (5) has no numpy type; CT2 Whisper packages here are fp16.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise DistillError("CTranslate2 model.bin is truncated", "re-install the asset")
    return struct.unpack(fmt, data)


def _read_str(f: BinaryIO) -> str:
    (length,) = _read(f, "<H")
    return f.read(length).rstrip(b"\0").decode("utf-8")


def read_spec_name(path: Path) -> str:
    """The spec name in a model.bin header (e.g. 'WhisperSpec'), without reading the weights."""
    with open(path, "rb") as f:
        (version,) = _read(f, "<I")
        if version < 5:
            raise DistillError(f"CTranslate2 binary version {version} in {path} is too old",
                               "use a model converted by CTranslate2 >= 3")
        return _read_str(f)


def read_model_bin(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CT2 model.bin -> (spec name, {variable name: array}); aliases resolve to copies."""
    with open(path, "rb") as f:
        (version,) = _read(f, "<I")
        if version < 5:
            raise DistillError(f"CTranslate2 binary version {version} in {path} is too old",
                               "use a model converted by CTranslate2 >= 3")
        spec = _read_str(f)
        _read(f, "<I")  # revision: not needed for weights
        (count,) = _read(f, "<I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _read_str(f)
            (rank,) = _read(f, "<B")
            dims = _read(f, f"<{rank}I") if rank else ()
            (dtype_id,) = _read(f, "<B")
            (nbytes,) = _read(f, "<I")
            if dtype_id not in _DTYPES:
                raise DistillError(f"unsupported CTranslate2 dtype {dtype_id} for '{name}'",
                                   "use an fp32/fp16/int8 CTranslate2 model")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise DistillError(f"CTranslate2 model.bin ends inside '{name}'", "re-install the asset")
            variables[name] = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(dims)
        tail = f.read(4)  # alias table; absent in some writers' files
        aliases = struct.unpack("<I", tail)[0] if len(tail) == 4 else 0
        for _ in range(aliases):
            alias, target = _read_str(f), _read_str(f)
            variables[alias] = variables[target]
    return spec, variables


def _scale(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A weight as float32, dequantizing int8 ones with their per-row `weight_scale`."""
    w = variables[name]
    if w.dtype == np.int8:
        scale = variables[name.replace("weight", "weight_scale")].astype(np.float32)
        return w.astype(np.float32) / scale.reshape(-1, 1)
    return w.astype(np.float32)


def whisper_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CT2 Whisper variable names to `WhisperForConditionalGeneration` state-dict keys.

    CT2 fuses projections: encoder/decoder self-attention `linear_0` is q,k,v stacked by rows, and
    cross-attention `linear_1` is k,v. HF Whisper has no bias on k_proj, so CT2 stores zeros there
    which we drop. Every output is float32.
    """
    v = variables
    out: dict[str, np.ndarray] = {}

    def lin(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = _scale(v, f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = v[f"{src}/bias"].astype(np.float32)

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = v[f"{src}/gamma"].astype(np.float32)
        out[f"{dst}.bias"] = v[f"{src}/beta"].astype(np.float32)

    def split(src: str, dsts: list[str]) -> None:
        w = np.split(_scale(v, f"{src}/weight"), len(dsts), axis=0)
        b = np.split(v[f"{src}/bias"].astype(np.float32), len(dsts))
        for name, wi, bi in zip(dsts, w, b):
            out[f"{name}.weight"] = wi
            if not name.endswith("k_proj"):
                out[f"{name}.bias"] = bi

    for side in ("encoder", "decoder"):
        n_layers = sum(1 for k in v if k.startswith(f"{side}/layer_") and k.endswith("ffn/layer_norm/gamma"))
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            split(f"{src}/self_attention/linear_0",
                  [f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")])
            lin(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                lin(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                split(f"{src}/attention/linear_1",
                      [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"])
                lin(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            lin(f"{src}/ffn/linear_0", f"{dst}.fc1")
            lin(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")

    for i in (0, 1):
        out[f"model.encoder.conv{i + 1}.weight"] = _scale(v, f"encoder/conv{i + 1}/weight")
        out[f"model.encoder.conv{i + 1}.bias"] = v[f"encoder/conv{i + 1}/bias"].astype(np.float32)
    out["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"].astype(np.float32)
    out["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"].astype(np.float32)
    out["model.decoder.embed_tokens.weight"] = _scale(v, "decoder/embeddings/weight")
    # proj_out is tied to embed_tokens in HF Whisper; the loader re-ties it, so it is not saved.
    return out


def whisper_config(state: dict[str, np.ndarray], vocab: dict[str, int], heads: int) -> dict:
    """A WhisperConfig dict inferred from tensor shapes plus the head count CT2 stores."""
    d_model = state["model.encoder.conv1.weight"].shape[0]
    n_mels = state["model.encoder.conv1.weight"].shape[1]
    enc_layers = sum(1 for k in state if k.startswith("model.encoder.layers.") and k.endswith("fc1.weight"))
    dec_layers = sum(1 for k in state if k.startswith("model.decoder.layers.") and k.endswith("fc1.weight"))
    ffn = state["model.encoder.layers.0.fc1.weight"].shape[0]
    vocab_size = state["model.decoder.embed_tokens.weight"].shape[0]
    eot = vocab["<|endoftext|>"]
    sot = vocab["<|startoftranscript|>"]
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": vocab_size,
        "num_mel_bins": n_mels,
        "d_model": d_model,
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn,
        "decoder_ffn_dim": ffn,
        "max_source_positions": state["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": state["model.decoder.embed_positions.weight"].shape[0],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "torch_dtype": "float32",
    }


def whisper_generation_config(ct2_config: dict, vocab: dict[str, int], multilingual: bool) -> dict:
    """generation_config.json in the shape transformers' Whisper `generate` reads.

    Suppress lists and alignment heads come from the CT2 config (which copied them from the
    original checkpoint); special-token ids are looked up by string in the tokenizer so a vocab
    shift (tiny.en has one token fewer) cannot misplace them.
    """
    eot = vocab["<|endoftext|>"]
    gen = {
        "alignment_heads": ct2_config["alignment_heads"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "suppress_tokens": ct2_config["suppress_ids"],
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": vocab["<|startoftranscript|>"],
        "no_timestamps_token_id": vocab["<|notimestamps|>"],
        "prev_sot_token_id": vocab["<|startofprev|>"],
        "max_initial_timestamp_index": 50,
        "max_length": 448,
        "return_timestamps": False,
        "is_multilingual": multilingual,
    }
    if multilingual:
        id_to_tok = {i: t for t, i in vocab.items()}
        gen["lang_to_id"] = {id_to_tok[i]: i for i in ct2_config["lang_ids"]}
        gen["task_to_id"] = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
        gen["forced_decoder_ids"] = [[1, None], [2, vocab["<|transcribe|>"]]]
    else:
        gen["forced_decoder_ids"] = [[1, vocab["<|notimestamps|>"]]]
    return gen


def convert_whisper(model_bin: Path, ct2_config_path: Path, tokenizer_json: Path,
                    english_json: Path, out_dir: Path) -> int:
    """Write an HF Whisper directory (weights, configs, processor) from CT2 files; returns params."""
    import torch
    from safetensors.torch import save_file

    spec, variables = read_model_bin(model_bin)
    if spec != "WhisperSpec":
        raise DistillError(f"{model_bin} holds a '{spec}', not a Whisper model", "check the asset sources")
    ct2_config = json.loads(Path(ct2_config_path).read_text())
    tok = json.loads(Path(tokenizer_json).read_text())
    vocab = dict(tok["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    state = whisper_state_dict(variables)
    multilingual = state["model.decoder.embed_tokens.weight"].shape[0] >= 51865
    config = whisper_config(state, vocab, heads=int(variables["encoder/num_heads"]))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in state.items()}
    out_dir = Path(out_dir)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = whisper_generation_config(ct2_config, vocab, multilingual)
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    _write_processor(tokenizer_json, english_json, out_dir, n_mels=config["num_mel_bins"])
    return sum(a.size for a in state.values())


def _write_processor(tokenizer_json: Path, english_json: Path, out_dir: Path, n_mels: int) -> None:
    """Feature extractor + tokenizer files that `WhisperProcessor.from_pretrained` accepts.

    `normalizer.json` is Whisper's English spelling map; transformers' EnglishTextNormalizer needs
    it for the normalised WER, and the tokenizer picks it up from the directory.
    """
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(out_dir)
    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json), bos_token="<|endoftext|>",
                               eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                               pad_token="<|endoftext|>", model_max_length=448)
    tok.save_pretrained(out_dir)
    (Path(out_dir) / "normalizer.json").write_text(Path(english_json).read_text())
