"""Everything about a recipe that can go wrong is found before its run directory exists.

`check(recipe)` is torch-free (`distill validate` and the start of `distill run`): the output
directory can be created and written, every stage kind has its code, local text data holds text,
the eval block names a real suite and baseline, and what a model's config says (inline `config:`
or a local/asset `config.json`) fits the recipe: positions vs `seq_len`, layers vs the student's
layer map, vocabulary vs the tokenizer. What needs transformers (inline configs vs their config
class, a meta-device build, hub ids) is in `distill.config_checks`, which `distill run` also calls
before writing anything.

Compression stages (lora, prune) are checked against their input model in `distill.preflight`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path

from distill.errors import DistillError, closest

BYTE_VOCAB = 258  # the built-in byte-level tokenizer: 256 bytes + eos + pad (models.byte_tokenizer)
VIRTUAL_FS = ("/proc", "/sys", "/dev")


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
    """A local text source holds text, at least one block of it (an empty file fails here, not
    after the teacher loaded)."""
    source = getattr(data, "source", None)
    if isinstance(source, str) and not source.strip():
        raise DistillError(f"{where}.source is empty", "give a .txt/.jsonl file, a directory or asset:<id>")
    if not isinstance(source, str) or source.startswith(("asset:", "stage:")):
        return
    path = Path(source).expanduser()
    if not path.exists():
        return  # check_references reports it
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DistillError(f"{where}.source '{source}' is a directory without .txt files",
                           "point at a .txt/.jsonl file or a directory of .txt files")
    if not any(_holds_text(file, where) for file in files):
        raise DistillError(f"{where}.source '{source}' holds no text (empty)", "point at a non-empty corpus")
    seq_len = getattr(data, "seq_len", None)
    total = sum(f.stat().st_size for f in files)
    if isinstance(seq_len, int) and total < seq_len:  # a token is at least one byte: < 1 block
        raise DistillError(f"{where}.source '{source}' holds {total} bytes, fewer than one block of "
                           f"seq_len={seq_len} tokens", "use more text or a smaller seq_len")


def _holds_text(file: Path, where: str) -> bool:
    """Non-blank text in the first MB; a .jsonl's first row must be {"text": ...}."""
    with open(file, "rb") as f:
        head = f.read(1 << 20)
    if file.suffix != ".jsonl":
        return bool(head.strip())
    first = next((line for line in head.splitlines() if line.strip()), None)
    if first is None:
        return False
    try:
        row = json.loads(first)
        ok = isinstance(row, dict) and isinstance(row.get("text"), str)
    except ValueError:
        ok = False
    if not ok:
        raise DistillError(f"{where}.source: {file} line 1 is not a JSON object with a 'text' field",
                           'write one {"text": ...} object per line')
    return True


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
        vocab = (cfgs[name] or {}).get("vocab_size")
        # A model directory ships its own tokenizer; only a recipe's own pairing (an inline config, or
        # `tokenizer:` given) can mismatch, and reading a large tokenizer.json costs ~0.1-0.5 s.
        paired = ref.config is not None or bool(ref.tokenizer)
        tokens = tokenizer_size(ref) if isinstance(vocab, int) and paired else None
        if tokens is not None and vocab < tokens:  # ids past the embedding table: an index error later
            what = "the built-in byte tokenizer" if tokenizer_key(ref) == "bytes" else \
                f"its tokenizer ({tokenizer_key(ref)})"
            raise DistillError(f"{name}: vocab_size={vocab} is smaller than {what} ({tokens} tokens)",
                               f"set vocab_size: {tokens} (or more), or give `tokenizer:` a matching tokenizer")
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
def check_eval(recipe, strict: bool = False) -> None:
    """The eval block's suite exists, its baseline is one of the run's evaluated models; with
    `strict` (run start) the suite's data assets are installed, or the run would fail after
    training."""
    spec = recipe.eval
    if spec is None:
        return
    from distill.evaluation.tasks import load_suite, load_task
    from distill.recipe import InputStage, stage_name

    try:
        suite = load_suite(spec.suite)
        tasks = [load_task(task) for task in suite.tasks]
        if strict:
            from distill.assets import asset_path

            for task in tasks:
                if task.dataset.startswith("asset:"):
                    asset_path(task.dataset.removeprefix("asset:"))
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


def check(recipe, strict: bool = False) -> None:
    """The torch-free checks (see the module doc); raises the first problem as a DistillError.
    `strict` (run start): what a run needs must exist now, not just be named correctly."""
    check_writable_dir(recipe.output_dir, "output_dir")
    check_stage_code(recipe)
    for i, stage in enumerate(recipe.stages):
        data = getattr(stage, "data", None)
        if data is not None:
            check_text_data(data, f"stages.{i}.data")
        check_models(stage, f"stages.{i}")
    check_eval(recipe, strict)
