"""Model references -> loaded HF models and tokenizers.

A recipe names a model by `asset:<id>` (offline asset), `stage:<name>` (an earlier stage's
artifact in this run), a local directory (HF or artifact), a HF hub id, or an inline `config` for
tiny random models. Inline-config models get the built-in byte-level tokenizer unless the recipe
names one, so tests need no downloads and every saved artifact is a normal HF directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.dtypes import torch_dtype
from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.context import RunContext
    from distill.recipe import ModelRef

logger = logging.getLogger(__name__)

BYTE_SPECIALS = ("<|endoftext|>", "<|pad|>")


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + 2 specials) as a normal PreTrainedTokenizerFast.

    Lossless on any text, needs no training or download; ids 0..255 are bytes, 256 eos, 257 pad.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    for i, special in enumerate(BYTE_SPECIALS):
        vocab[special] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(BYTE_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=BYTE_SPECIALS[0], pad_token=BYTE_SPECIALS[1],
        bos_token=None, model_max_length=1 << 20,
    )


def resolve_source(source: str, ctx: RunContext | None = None) -> str:
    """The local path (or hub id) a `source` string stands for."""
    if source.startswith("asset:"):
        from distill.assets import asset_path

        return str(asset_path(source.removeprefix("asset:")))
    if source.startswith("stage:"):
        if ctx is None:
            raise DistillError(f"'{source}' only works inside a run", "use a path instead")
        return str(ctx.stage_output(source.removeprefix("stage:")).path)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise DistillError(f"model directory '{path}' has no config.json",
                               "point at a HF model directory or an artifact directory")
        return str(path)
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local:
        raise DistillError(f"model path '{source}' does not exist",
                           "check the path, or use asset:<id> (see `distill assets list`)")
    return source  # a hub id; from_pretrained will say if it cannot be reached


def build_from_config(config: dict[str, Any], seed: int):
    """A randomly initialised causal LM from an inline config dict (deterministic by seed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    try:
        hf_config = AutoConfig.for_model(model_type, **cfg)
    except ValueError as exc:
        raise DistillError(f"inline config: {exc}", "use a model_type transformers knows, e.g. qwen3") from None
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)


def load_tokenizer(ref: ModelRef, model_dir: str | None, ctx: RunContext | None = None):
    from transformers import AutoTokenizer

    name = ref.tokenizer
    if name == "bytes" or (name is None and model_dir is None):
        return byte_tokenizer()
    source = resolve_source(name, ctx) if name else model_dir
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DistillError(f"cannot load a tokenizer from '{source}': {str(exc).splitlines()[0]}",
                           "set `tokenizer:` to a directory with tokenizer files, or `bytes`") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(ref: ModelRef, ctx: RunContext | None = None, seed: int = 0):
    """(model, tokenizer) for a ModelRef, in eval mode on CPU, in the ref's dtype."""
    from transformers import AutoModelForCausalLM

    if ref.config is not None:
        model = build_from_config(ref.config, seed)
        model_dir = None
    else:
        model_dir = resolve_source(ref.source, ctx)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch_dtype(ref.dtype), trust_remote_code=ref.trust_remote_code
            )
        except OSError as exc:
            raise DistillError(f"cannot load model '{ref.source}': {str(exc).splitlines()[0]}",
                               "check the path or id; offline, use asset:<id>") from None
    model.to(torch_dtype(ref.dtype))
    model.eval()
    return model, load_tokenizer(ref, model_dir, ctx)


def count_params(model) -> int:
    """Parameters as the model defines them. A bitsandbytes 4-bit weight packs two values per byte,
    so its tensor holds half as many elements; its quant_state keeps the real shape."""
    import math

    return sum(math.prod(p.quant_state.shape) if getattr(p, "quant_state", None) is not None else p.numel()
               for p in model.parameters())


def save_pretrained(model, tokenizer, out_dir: Path) -> None:
    """HF-loadable safetensors weights + config + tokenizer (+ generation config when present)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
