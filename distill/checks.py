"""Everything about a recipe that can go wrong is found before its run directory exists.

`check(recipe)` is torch-free (`distill validate` and the start of `distill run`): the output
directory can be created and written, every stage kind has its code, local text data holds text,
the eval block names a real suite and baseline, and what a model's config says (inline `config:`
or a local/asset `config.json`) fits the recipe: positions vs `seq_len`, layers vs the student's
layer map, vocabulary vs the tokenizer. `deep(recipe)` needs transformers (so `distill run` calls
it, and `distill validate --deep`): an inline config's keys are checked against its config
class, and the model is built on the meta device (a tiny one also runs one forward), so a config
that cannot build or run fails in one line before anything is written. Hub ids fail fast offline.

Compression stages (lora, prune) are checked against their input model in `distill.preflight`.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from distill.errors import DistillError, closest, short_list

BYTE_VOCAB = 258  # the built-in byte-level tokenizer: 256 bytes + eos + pad (models.byte_tokenizer)
VIRTUAL_FS = ("/proc", "/sys", "/dev")
TINY_FORWARD_PARAMS = 5_000_000  # inline models up to this size also run one real forward
HUB_HOST = "huggingface.co"


# ------------------------------------------------------------------------------- directories
def check_writable_dir(path: str | Path, what: str) -> None:
    """`path` is a directory, or can be created as one, and a file can be written there.

    Probes with a temporary directory it removes again (permissions alone say nothing to root, and
    a read-only mount only shows when writing)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DistillError(f"{what} '{path}' is a file, not a directory", f"point {what} at a directory")
    absolute = Path(os.path.abspath(path))
    if any(absolute == Path(v) or Path(v) in absolute.parents for v in VIRTUAL_FS):
        raise DistillError(f"{what} '{path}' is under {absolute.parts[0]}{absolute.parts[1]}, a virtual "
                           "filesystem of the kernel", f"point {what} at a real directory, e.g. runs")
    existing = absolute
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DistillError(f"{what} '{path}' cannot be created: '{existing}' is a file",
                           f"point {what} at a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".distill-write-probe-"))
    except OSError as exc:
        raise DistillError(f"{what} '{path}' is not writable ('{existing}': {exc.strerror or exc})",
                           f"point {what} at a writable directory") from None


# ------------------------------------------------------------------------------------ stages
def check_stage_code(recipe) -> None:
    """Every stage kind in the recipe has its module in this installation."""
    from distill.recipe import STAGE_BY_KIND

    def built(kind: str) -> bool:
        module = STAGE_BY_KIND[kind].runner.partition(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    for i, stage in enumerate(recipe.stages):
        if not built(stage.kind):
            available = [k for k in STAGE_BY_KIND if built(k)]
            raise DistillError(f"stages.{i}: stage kind '{stage.kind}' is not built in this version of distill",
                               f"use one of: {', '.join(available)}")


# -------------------------------------------------------------------------------------- data
def check_text_data(data, where: str) -> None:
    """A local text source holds text (an empty file fails here, not after the teacher loaded)."""
    source = getattr(data, "source", None)
    if not isinstance(source, str) or source.startswith(("asset:", "stage:")):
        return
    path = Path(source).expanduser()
    if not path.exists():
        return  # check_references reports it
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DistillError(f"{where}.source '{source}' is a directory without .txt files",
                           "point at a .txt/.jsonl file or a directory of .txt files")
    for file in files:
        with open(file, "rb") as f:
            head = f.read(1 << 20)
        if file.suffix == ".jsonl":
            first = next((line for line in head.splitlines() if line.strip()), None)
            if first is None:
                continue
            try:
                row = json.loads(first)
                ok = isinstance(row, dict) and isinstance(row.get("text"), str)
            except ValueError:
                ok = False
            if not ok:
                raise DistillError(f"{where}.source: {file} line 1 is not a JSON object with a 'text' field",
                                   'write one {"text": ...} object per line')
            return
        if head.strip():
            return
    raise DistillError(f"{where}.source '{source}' holds no text (empty)", "point at a non-empty corpus")


# ------------------------------------------------------------------------------------ models
def local_dir(source: str | None) -> Path | None:
    """The directory a model/tokenizer source names, when it exists now."""
    if not source or source.startswith("stage:") or source == "bytes":
        return None
    if source.startswith("asset:"):
        try:
            from distill.assets import asset_path

            return Path(asset_path(source.removeprefix("asset:")))
        except DistillError:
            return None
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def config_of(ref) -> dict | None:
    """A model reference's config as a dict, when readable now without loading anything."""
    if ref is None:
        return None
    if ref.config is not None:
        return ref.config
    path = local_dir(ref.source)
    try:
        return json.loads((path / "config.json").read_text()) if path else None
    except (OSError, ValueError):
        return None


def positions(cfg: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_target_positions"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def tokenizer_key(ref) -> str | None:
    """Which tokenizer a reference implies: 'bytes', a source string, or None (unknown)."""
    if ref is None:
        return None
    if ref.tokenizer:
        return ref.tokenizer
    return "bytes" if ref.config is not None else ref.source


def tokenizer_size(ref) -> int | None:
    """Tokens of the tokenizer a reference implies, when knowable without loading it (the byte
    tokenizer, or a directory's tokenizer.json); None when not."""
    key = tokenizer_key(ref)
    if key == "bytes":
        return BYTE_VOCAB
    path = local_dir(key)
    try:
        data = json.loads((path / "tokenizer.json").read_text()) if path else None
    except (OSError, ValueError):
        return None
    vocab = (data or {}).get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        return None
    added = {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    return len(vocab) + len(added - set(vocab))


def check_models(stage, where: str, facts=config_of) -> None:
    """What the models' configs say vs the stage: vocab vs tokenizer, positions vs seq_len, layers."""
    refs = {f"{where}.{name}": getattr(stage, name, None) for name in ("teacher", "model")}
    student = getattr(stage, "student", None)
    if student is not None and getattr(student, "model", None) is not None:
        refs[f"{where}.student.model"] = student.model
    refs = {k: v for k, v in refs.items() if v is not None and hasattr(v, "config")}
    cfgs = {k: facts(v) for k, v in refs.items()}
    for name, ref in refs.items():
        cfg = cfgs[name] or {}
        vocab = cfg.get("vocab_size")
        if tokenizer_key(ref) == "bytes" and isinstance(vocab, int) and vocab < BYTE_VOCAB:
            raise DistillError(f"{name}: vocab_size={vocab} is smaller than the built-in byte tokenizer "
                               f"({BYTE_VOCAB} tokens)", f"set vocab_size: {BYTE_VOCAB} (or more), or give "
                               "`tokenizer:` a tokenizer directory")
    data = getattr(stage, "data", None)
    seq_len = getattr(data, "seq_len", None)
    if isinstance(seq_len, int):
        for name, cfg in cfgs.items():
            limit = positions(cfg or {})
            if limit is not None and seq_len > limit:
                raise DistillError(f"{where}.data.seq_len={seq_len} exceeds {name}'s {limit} positions "
                                   "(max_position_embeddings)", f"use seq_len <= {limit}")
    teacher = getattr(stage, "teacher", None)
    t_name = f"{where}.teacher"
    if student is None or teacher is None or not hasattr(student, "num_layers"):
        return
    t_cfg = cfgs.get(t_name) or {}
    n = t_cfg.get("num_hidden_layers")
    if student.init in ("layer_map", "moe_merge") and isinstance(n, int):
        if student.num_layers is not None and student.num_layers > n:
            raise DistillError(f"{where}.student.num_layers={student.num_layers} cannot be mapped onto the "
                               f"teacher's {n} layers", f"use num_layers <= {n} (or init: config for a "
                               "bigger student)")
        bad = [i for i in student.layers or [] if i >= n]
        if bad:
            raise DistillError(f"{where}.student.layers {bad} out of range: the teacher has {n} layers",
                               f"use indices 0..{n - 1}")
    if student.init in ("config", "model") and student.model is not None:
        sizes = {tokenizer_size(teacher), tokenizer_size(student.model)}
        if None not in sizes and len(sizes) == 2:
            raise DistillError(f"{where}: the teacher and the student use different tokenizers ("
                               f"{tokenizer_key(teacher)}: {tokenizer_size(teacher)} tokens, "
                               f"{tokenizer_key(student.model)}: {tokenizer_size(student.model)}): token ids "
                               "would not mean the same text",
                               "give the student the teacher's tokenizer (student.model.tokenizer), or use "
                               "init: layer_map")


# -------------------------------------------------------------------------------------- eval
def check_eval(recipe) -> None:
    """The eval block's suite exists, its baseline is one of the run's evaluated models."""
    spec = recipe.eval
    if spec is None:
        return
    from distill.evaluation.tasks import load_suite, load_task
    from distill.recipe import InputStage, stage_name

    try:
        suite = load_suite(spec.suite)
        for task in suite.tasks:
            load_task(task)
    except DistillError as exc:
        raise DistillError(f"eval.suite: {exc.problem}", exc.fix) from None
    first = recipe.stages[0]
    names = [stage_name(i, s) for i, s in enumerate(recipe.stages)]
    if spec.include_teacher and getattr(first, "teacher", None) is not None:
        names.insert(0, "teacher")
    elif spec.include_teacher and isinstance(first, InputStage):
        names.insert(0, "input")
    if spec.baseline is not None and spec.baseline not in names:
        guess = closest(spec.baseline, names)
        raise DistillError(f"eval.baseline '{spec.baseline}' is not evaluated by this run",
                           (f"did you mean '{guess}'? " if guess else "") + f"use one of: {', '.join(names)}")
    if spec.results_dir:
        check_writable_dir(spec.results_dir, "eval.results_dir")


def check(recipe) -> None:
    """The torch-free checks (see the module doc); raises the first problem as a DistillError."""
    check_writable_dir(recipe.output_dir, "output_dir")
    check_stage_code(recipe)
    for i, stage in enumerate(recipe.stages):
        data = getattr(stage, "data", None)
        if data is not None:
            check_text_data(data, f"stages.{i}.data")
        check_models(stage, f"stages.{i}")
    check_eval(recipe)


# ----------------------------------------------------------------------------- deep (torch)
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
    host = (os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
        return True
    except OSError:
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
