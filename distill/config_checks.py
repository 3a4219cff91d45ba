"""Recipe checks that need transformers, run before a run directory exists (`distill run` start,
`distill validate --deep`), after the torch-free `distill.checks.check`.

An inline `config:` is checked against its config class: an unknown key (`hiden_size`) is an error
like an unknown recipe key, not silently ignored; head, KV-head and expert counts must fit; the
model is built on the meta device (no memory) and a tiny one runs one forward, so a config that
cannot build or run fails in one line. Hub ids fail fast when the hub is unreachable.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import socket
from pathlib import Path
from typing import Any

from distill.checks import check_models, config_of
from distill.errors import DistillError, closest, short_list

TINY_FORWARD_PARAMS = 5_000_000  # inline models up to this size also run one real forward
HUB_HOST = "huggingface.co"


def hub_ids(recipe) -> list[tuple[str, str]]:
    """(where, id) of every model/tokenizer reference that is a hub id."""
    from distill.recipe import looks_local

    found = []
    for i, stage in enumerate(recipe.stages):
        refs = {name: getattr(stage, name, None) for name in ("teacher", "model")}
        student = getattr(stage, "student", None)
        refs["student.model"] = getattr(student, "model", None)
        for name, ref in refs.items():
            if ref is None or not hasattr(ref, "source"):
                continue
            for value in (ref.source, ref.tokenizer):
                if value and is_hub_id(value, looks_local):
                    found.append((f"stages.{i}.{name}", value))
    return found


def is_hub_id(source: str, looks_local) -> bool:
    return (not source.startswith(("asset:", "stage:")) and source != "bytes" and not looks_local(source)
            and not Path(source).expanduser().exists())


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint (HF_ENDPOINT or huggingface.co), instead of the client's
    retries (22 lines over ~25 s when offline)."""
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or HUB_HOST, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def require_hub(ids: list[tuple[str, str]]) -> None:
    """Offline, a hub id either is in the local HF cache (then loading runs offline, no retries) or
    fails now in one line, instead of after a minute of retries."""
    if not ids or os.environ.get("HF_HUB_OFFLINE") == "1" or hub_reachable():
        return
    from huggingface_hub import try_to_load_from_cache

    for where, repo in ids:
        try:
            cached = isinstance(try_to_load_from_cache(repo, "config.json"), str) or \
                isinstance(try_to_load_from_cache(repo, "tokenizer_config.json"), str)
        except ValueError:  # not a valid repo id at all
            cached = False
        if not cached:
            raise DistillError(f"{where}: '{repo}' is a hub id, the hub ({HUB_HOST}) is unreachable and it "
                               "is not in the local HF cache", "use asset:<id> (distill assets list) or a "
                               "local model directory, or connect to the hub")
    os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub at import: set before transformers loads


def known_config_keys(cls) -> set[str]:
    """Keys a config class understands: its __init__ parameters, the base-class fields and aliases."""
    from transformers import PretrainedConfig

    keys = {"model_type"}
    for klass in cls.__mro__:
        if klass is object:
            continue
        init = klass.__dict__.get("__init__")
        if init is not None:
            keys |= {p for p, v in inspect.signature(init).parameters.items()
                     if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p != "self"}
        keys |= set(getattr(klass, "attribute_map", {}) or {})
    keys |= set(PretrainedConfig().to_dict())
    return keys


def read_by_model_code(cls, key: str) -> bool:
    """Whether the model code of a config class reads `key` although its __init__ does not name it
    (e.g. Qwen3-MoE attention: getattr(config, "head_dim", hidden // heads))."""
    import re

    module = cls.__module__.replace(".configuration_", ".modeling_")
    try:
        spec = importlib.util.find_spec(module)
        source = Path(spec.origin).read_text() if spec and spec.origin else ""
    except (ImportError, OSError, ValueError):
        return True  # cannot tell: do not refuse
    return re.search(rf"config\.{re.escape(key)}\b|[\"']{re.escape(key)}[\"']", source) is not None


def check_inline_config(config: dict[str, Any], where: str) -> Any:
    """A built transformers config for an inline `config:`; every problem as one DistillError."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        if model_type == "qwen3_asr":  # registered by the qwen-asr package, checked when built
            return None
        guess = closest(str(model_type), CONFIG_MAPPING.keys())
        raise DistillError(f"{where}.config: unknown model_type '{model_type}'",
                           (f"did you mean '{guess}'? " if guess else "") + "use a model_type transformers "
                           "knows, e.g. qwen3, llama, qwen3_moe, whisper")
    cls = CONFIG_MAPPING[model_type]
    known = known_config_keys(cls)
    for key in cfg:
        if key not in known and not read_by_model_code(cls, key):
            guess = closest(key, known)
            own = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
            raise DistillError(f"{where}.config: unknown key '{key}' for model_type {model_type} (transformers "
                               "would ignore it silently)",
                               f"did you mean '{guess}'?" if guess else
                               f"remove it; {cls.__name__} keys include: {short_list(own, 15)}")
    try:
        hf = cls(**cfg)
    except Exception as exc:  # noqa: BLE001 - any config-class complaint is the user's to fix
        raise DistillError(f"{where}.config cannot build a {model_type} config: {_first_line(exc)}",
                           "fix the inline config values") from None
    heads, kv = getattr(hf, "num_attention_heads", None), getattr(hf, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv, int) and kv and heads % kv:
        raise DistillError(f"{where}.config: num_attention_heads={heads} is not a multiple of "
                           f"num_key_value_heads={kv} (each KV head serves a whole group of query heads)",
                           f"use num_key_value_heads that divides {heads}, e.g. {_divisor(heads, kv)}")
    hidden = getattr(hf, "hidden_size", None)
    if isinstance(heads, int) and isinstance(hidden, int) and getattr(hf, "head_dim", None) is None \
            and heads and hidden % heads:
        raise DistillError(f"{where}.config: hidden_size={hidden} is not a multiple of "
                           f"num_attention_heads={heads}", "set head_dim, or make hidden_size divisible")
    experts = getattr(hf, "num_experts", None) or getattr(hf, "num_local_experts", None)
    top = getattr(hf, "num_experts_per_tok", None)
    if isinstance(experts, int) and isinstance(top, int) and top > experts:
        raise DistillError(f"{where}.config: num_experts_per_tok={top} exceeds the {experts} experts",
                           f"use num_experts_per_tok <= {experts}")
    return hf


def build_check(hf, where: str) -> None:
    """Build the model on the meta device (no memory); a tiny causal LM also runs one forward."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(hf) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        return  # speech models are built by their stage from the teacher; nothing generic to run
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf)
        n_params = sum(p.numel() for p in model.parameters())
        if n_params <= TINY_FORWARD_PARAMS:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                model = AutoModelForCausalLM.from_config(hf)
                n = min(8, getattr(hf, "max_position_embeddings", 8) or 8)
                model(input_ids=torch.zeros(1, n, dtype=torch.long))
    except Exception as exc:  # noqa: BLE001 - the model code's own message, on one line
        raise DistillError(f"{where}.config builds no working {hf.model_type} model: {_first_line(exc)}",
                           "fix the inline config (head counts, sizes) so the model can be built") from None


def deep(recipe) -> None:
    """Checks that need transformers (run start, `validate --deep`); call after `check`."""
    require_hub(hub_ids(recipe))
    for i, stage in enumerate(recipe.stages):
        refs = {f"stages.{i}.{name}": getattr(stage, name, None) for name in ("teacher", "model")}
        student = getattr(stage, "student", None)
        refs[f"stages.{i}.student.model"] = getattr(student, "model", None)
        for where, ref in refs.items():
            if ref is None or getattr(ref, "config", None) is None:
                continue
            hf = check_inline_config(ref.config, where)
            if hf is None:
                continue
            full = {**hf.to_dict(), **ref.config}  # defaults filled in: positions, vocab, layers

            def facts(r, _ref=ref, _full=full):
                return _full if r is _ref else config_of(r)

            check_models(stage, f"stages.{i}", facts=facts)
            build_check(hf, where)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _divisor(heads: int, kv: int) -> int:
    return max(d for d in range(1, kv + 1) if heads % d == 0)
