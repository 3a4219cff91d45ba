"""Checks of compression stages against the model they will transform, before any run dir exists.

`distill validate` and the start of `distill run` call `check(recipe)`. What can be read without
torch is checked in both: config.json (head counts, layer counts, experts), the manifest (artifact
kind) and the safetensors headers (module names for LoRA targets). A model given as an inline
config has no files: its module names come from the model built on the meta device, which needs
transformers, so that check runs at the start of `distill run` only (`strict`), still before the
run directory is created. An input that is an earlier stage's output does not exist yet; its
stage checks the same things first thing, before writing anything.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from distill.errors import DistillError

# Artifact kinds LoRA cannot train on: their weights are not fp tensors peft can wrap.
NOT_LORA_BASES = {"torch-dynamic-quant": "torch dynamic INT8", "onnx": "an ONNX graph"}


def model_dir(source: str | None) -> Path | None:
    """The local directory of a model reference, when it exists now (else None)."""
    if not source or source.startswith("stage:"):
        return None
    if source.startswith("asset:"):
        try:
            from distill.assets import asset_path

            return Path(asset_path(source.removeprefix("asset:")))
        except (DistillError, ImportError):
            return None
    path = Path(source).expanduser()
    return path if (path / "config.json").is_file() else None


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """name -> shape of every tensor in the directory's safetensors files (headers only)."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def linear_names(shapes: dict[str, list[int]]) -> list[str]:
    """Module paths holding a 2-D `.weight` (Linear-like), from tensor names."""
    return sorted(k.removesuffix(".weight") for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2)


def meta_linear_names(config: dict) -> list[str]:
    """Linear module paths of a model built from an inline config on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    hf = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    return sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))


def matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the full path or its last dotted components."""
    return name == target or name.endswith("." + target)


def check_targets(targets, names: list[str], where: str) -> None:
    if targets == "all-linear" or not names:
        return
    missing = [t for t in targets if not any(matches(n, t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise DistillError(f"{where}.target_modules {missing} match no module of the model",
                           f"use module names such as: {', '.join(leaves)} (or all-linear)")


def check_lora_base(path: Path, where: str) -> None:
    manifest = path / "manifest.json"
    kind = json.loads(manifest.read_text()).get("kind") if manifest.is_file() else None
    if kind in NOT_LORA_BASES:
        raise DistillError(f"{where}: '{path}' is {NOT_LORA_BASES[kind]} (artifact kind {kind}); LoRA "
                           "needs full-precision or bitsandbytes weights",
                           "put the LoRA stage before quantize/export, or use quantize_base: nf4 on the "
                           "full-precision model (QLoRA)")
    quant = (read_config(path).get("quantization_config") or {}).get("quant_method")
    if quant and quant != "bitsandbytes":
        raise DistillError(f"{where}: '{path}' is quantized with {quant}; LoRA here trains on "
                           "full-precision or bitsandbytes bases", "start from the full-precision model")


def check_heads(n_heads: int, n_kv: int, keep_heads: int | None, keep_kv: int | None) -> tuple[int, int]:
    """(query heads kept, KV heads kept), or a DistillError when the cut breaks GQA grouping."""
    group = n_heads // n_kv
    keep_kv = n_kv if keep_kv is None else keep_kv
    if not 1 <= keep_kv <= n_kv:
        raise DistillError(f"num_kv_heads={keep_kv} is outside 1..{n_kv} (the model has {n_kv} KV heads)",
                           f"keep between 1 and {n_kv} KV heads")
    keep_heads = keep_kv * group if keep_heads is None else keep_heads
    if keep_heads % keep_kv or not 1 <= keep_heads // keep_kv <= group:
        raise DistillError(
            f"num_heads={keep_heads} with {keep_kv} KV heads breaks GQA grouping: every KV head must keep "
            f"the same number of query heads (1..{group}; the model has {n_heads} heads in {n_kv} groups)",
            f"use num_heads = num_kv_heads x k with k in 1..{group} (e.g. {keep_kv * max(1, group - 1)})")
    return keep_heads, keep_kv


def calibration_blocks(stage, path: Path) -> int:
    """Blocks of `seq_len` tokens the stage's calibration text yields (up to what it needs)."""
    from transformers import AutoTokenizer

    from distill.data import read_texts, tokenize

    spec = stage.calibration
    need = stage.calibration_blocks * spec.seq_len
    ids = tokenize(read_texts(spec.source, spec.split), AutoTokenizer.from_pretrained(path),
                   min(need, spec.max_tokens or need))
    return ids.numel() // spec.seq_len


def check_prune(stage, cfg: dict, where: str) -> None:
    """Sizes and GQA grouping of a prune stage against the model's config dict."""
    n_layers = cfg.get("num_hidden_layers")
    if stage.method == "depth" and n_layers:
        wanted = stage.num_layers or len(stage.keep_layers or [])
        if stage.keep_layers and max(stage.keep_layers) >= n_layers:
            raise DistillError(f"{where}.keep_layers {stage.keep_layers} out of range: the model has "
                               f"{n_layers} layers", f"use indices 0..{n_layers - 1}")
        if wanted > n_layers:
            raise DistillError(f"{where}.num_layers={wanted} exceeds the model's {n_layers} layers",
                               f"keep fewer than {n_layers}")
    if stage.method == "width":
        heads = cfg.get("num_attention_heads")
        if heads and (stage.num_heads or stage.num_kv_heads):
            kv = cfg.get("num_key_value_heads") or heads
            try:
                check_heads(heads, kv, stage.num_heads, stage.num_kv_heads)
            except DistillError as exc:
                raise DistillError(f"{where}: {exc.problem}", exc.fix) from None
        width = cfg.get("intermediate_size")
        if width and stage.intermediate_size and stage.intermediate_size > width:
            raise DistillError(f"{where}.intermediate_size={stage.intermediate_size} exceeds the model's "
                               f"{width}", f"keep at most {width} FFN channels")
    if stage.method == "experts":
        n_exp = cfg.get("num_experts") or cfg.get("num_local_experts")
        if not n_exp:
            raise DistillError(f"{where}: method experts needs a MoE model; this is a "
                               f"'{cfg.get('model_type')}' without experts", "use method width or depth")
        if stage.num_experts and stage.num_experts >= n_exp:
            raise DistillError(f"{where}.num_experts={stage.num_experts} keeps all {n_exp} experts or more",
                               f"keep between 1 and {n_exp - 1}")


def check(recipe, strict: bool = False) -> None:
    """Raise a DistillError for the first compression stage that cannot work on its model."""
    from distill.recipe import LoraStage, PruneStage

    for i, stage in enumerate(recipe.stages):
        if not isinstance(stage, (LoraStage, PruneStage)) or stage.model is None:
            continue
        where = f"stages.{i}"
        path = model_dir(stage.model.source)
        cfg = stage.model.config if stage.model.config is not None else (read_config(path) if path else None)
        if cfg is None:
            continue
        if isinstance(stage, PruneStage):
            check_prune(stage, cfg, where)
            if strict and path is not None and stage.calibration is not None:
                got = calibration_blocks(stage, path)
                if got < stage.calibration_blocks:
                    raise DistillError(f"{where}.calibration yields {got} blocks of {stage.calibration.seq_len} "
                                       f"tokens, fewer than calibration_blocks={stage.calibration_blocks}",
                                       "give more calibration text, a smaller seq_len or fewer blocks")
            continue
        if path is not None:
            check_lora_base(path, where)
            check_targets(stage.target_modules, linear_names(tensor_shapes(path)), where)
        elif strict:
            check_targets(stage.target_modules, meta_linear_names(cfg), where)
