"""`distill plan RECIPE`: parameters and memory per device before a run, without loading weights.

Teacher and student are instantiated on the meta device from their configs (shapes only), so a
235B-parameter teacher is planned in seconds on a laptop. For every training stage it reports:
parameter counts (total and active per token for MoE), bytes of weights, gradients, AdamW state,
activations and logits for the recipe's batch and sequence length, per device for 1 and 8 devices
as the code runs them (weights/gradients/optimizer divided over the processes only with
train.parallel fsdp; replicated with ddp), whether online KD fits a device or the offline teacher
cache is needed, and for the cache fill the teacher's weights per device for 8/4/2/1 filling
processes on an 8-device node (device_map="auto" over each process's share).

Estimates, not measurements: activations use the per-layer rule sbh x 34 bytes (16-bit, SDPA
attention without the s^2 term; Korthikanti et al. 2022) scaled to the compute dtype; optimizer =
fp32 master + 2 AdamW moments; allocator slack and framework overhead are not included (keep
~10 % headroom).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

logger = logging.getLogger(__name__)

GIB = 1024**3
DEVICE_GIB = 80.0  # an H100/A100-80GB class accelerator; the report says so
DEVICE_COUNTS = (1, 8)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelShape:
    name: str
    config: object
    params: int
    active_params: int
    hidden: int
    layers: int
    vocab: int


def _config_for(ref, ctx_dirs: dict[str, object]):
    """HF config of a ModelRef without weights: inline dict, local dir, stage output or hub cache."""
    from transformers import AutoConfig

    if ref.config is not None:
        from distill.config_checks import check_inline_config

        checked = check_inline_config(ref.config, "model")  # unknown type/keys: one error line
        if checked is not None:
            return checked
        cfg = dict(ref.config)
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    source = ref.source
    if source.startswith("stage:"):
        name = source.removeprefix("stage:")
        if name not in ctx_dirs:
            raise DistillError(f"plan: '{source}' is not an earlier stage", "check the stage name")
        return ctx_dirs[name]
    from distill.models import resolve_source

    path = resolve_source(source)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=ref.trust_remote_code)
    except OSError:
        raise DistillError(f"plan: no config for '{source}' (offline, hub ids need a local copy)",
                           "point the recipe at a directory holding config.json") from None


def _meta_model(config):
    """The model on the meta device: real module tree and parameter shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def shape_of(name: str, config) -> ModelShape:
    model = _meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    from distill import students

    inactive = 0
    for _, block in students.moe_blocks(model):
        per_expert = sum(p.numel() for p in block.experts[0].parameters())
        n_exp = len(block.experts)
        inactive += per_expert * (n_exp - config.num_experts_per_tok)
    return ModelShape(name, config, total, total - inactive, config.hidden_size, config.num_hidden_layers,
                      model.get_output_embeddings().weight.shape[0])


def student_config(stage, teacher_cfg, dirs):
    """The student's config as the stage would build it (layer map / merge / own config)."""
    from distill import pruning, students

    spec = stage.student
    if spec.init in ("config", "model"):
        return _config_for(spec.model, dirs)
    layers = students.resolve_layers(spec, teacher_cfg.num_hidden_layers)
    if spec.init == "layer_map":
        return pruning.with_layers(teacher_cfg, layers)
    if teacher_cfg.model_type not in students.MOE_FAMILIES:
        raise DistillError(f"plan: init moe_merge needs a MoE teacher, got '{teacher_cfg.model_type}'",
                           "use init: layer_map")
    width = teacher_cfg.moe_intermediate_size * (spec.merge_top_k if spec.merge == "top_k" else 1)
    return pruning.with_layers(students.dense_config(teacher_cfg, width), layers)


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f}"


def _largest_block(shape: ModelShape) -> int:
    """Parameters of the largest decoder block: what FSDP gathers at once (the next one is prefetched)."""
    from distill import distributed

    model = _meta_model(shape.config)
    names = distributed.block_class_names(model)
    sizes = [sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in names]
    return max(sizes, default=shape.params)


def micro_batch(tr, n: int) -> float:
    """Rows per device per micro-batch with n processes (train.batch_size or global_batch split)."""
    return tr.batch_size if tr.global_batch is None else tr.global_batch / (n * tr.grad_accum)


def device_rows(stage, teacher: ModelShape, student: ModelShape) -> list[tuple[str, object]]:
    """[(label, bytes per device as a function of the process count n)] for a distill stage."""
    tr, seq = stage.train, stage.data.seq_len
    t_bytes = DTYPE_BYTES[stage.teacher.dtype]
    # Sized for the accelerator the report targets: `auto` means bf16 autocast there.
    compute = 2 if tr.dtype in ("bfloat16", "auto") else 4
    vocab = min(teacher.vocab, student.vocab)
    online = stage.teacher_mode == "online" and (stage.loss.kd_weight > 0 or stage.loss.hidden_weight > 0)
    fsdp = tr.parallel == "fsdp"

    def batch(n: int) -> float:
        return micro_batch(tr, n)

    s_weights = student.params * 4  # fp32 master weights (autocast computes in bf16 on GPU)
    t_weights = teacher.params * t_bytes if online else 0
    block = _largest_block(student) * 4 * 2 if fsdp else 0  # fp32, current + prefetched block
    rows = [("student weights (fp32 master)", lambda n: s_weights / (n if fsdp else 1)),
            ("student gradients", lambda n: s_weights / (n if fsdp else 1)),
            ("AdamW moments (2 x fp32)", lambda n: 2 * s_weights / (n if fsdp else 1)),
            ("FSDP: gathered blocks (2 x fp32)", lambda n: block if n > 1 else 0),
            ("student activations", lambda n: student.layers * batch(n) * seq * student.hidden * 34 * compute / 2),
            # online: every process holds the whole teacher (it is not sharded)
            (f"teacher weights ({stage.teacher.dtype})" if online else "teacher weights (offline: not loaded)",
             lambda n: t_weights),
            ("teacher activations (no_grad)",  # ~one layer live
             lambda n: 2 * batch(n) * seq * teacher.hidden * 20 * compute / 2 if online else 0),
            ("logits, chunked (this workbench)",  # one chunk alive: s logits, log-softmax, grad (+ teacher x2)
             lambda n: min(stage.loss.chunk_size, batch(n) * seq) * vocab * 4 * (3 + (2 if online else 0)))]
    return rows


def stage_plan(stage, teacher: ModelShape, student: ModelShape, device_gib: float, cuda: bool) -> list[str]:
    """Per-device memory of one distill stage, as the code runs it: with train.parallel fsdp the
    student's weights, gradients and AdamW state are divided over the processes (plus the blocks
    FSDP gathers while computing); with ddp every process holds all of them. Offline, training
    never loads the teacher; the cache fill does (see cache_fill_plan)."""
    tr, seq = stage.train, stage.data.seq_len
    compute = 2 if tr.dtype in ("bfloat16", "auto") else 4
    vocab = min(teacher.vocab, student.vocab)
    online = stage.teacher_mode == "online" and (stage.loss.kd_weight > 0 or stage.loss.hidden_weight > 0)
    fsdp = tr.parallel == "fsdp"
    rows = device_rows(stage, teacher, student)
    t_weights = rows[5][1](1)

    lines = [f"  train.parallel {tr.parallel}: " + ("weights, gradients and AdamW state divided over the "
             "processes" if fsdp else "every process holds a full replica (set train.parallel: fsdp to shard)"),
             "  micro-batch per device: " + ", ".join(f"{n} dev {micro_batch(tr, n):g} x seq {seq}" for n in DEVICE_COUNTS)
             + f"; compute {'bf16' if compute == 2 else 'fp32'}, vocab compared {vocab}"]
    lines.append("  " + f"{'GiB per device':38s}" + "".join(f"{f'{n} dev':>10s}" for n in DEVICE_COUNTS))
    totals = {n: 0.0 for n in DEVICE_COUNTS}
    for label, per_device in rows:
        cells = []
        for n in DEVICE_COUNTS:
            v = per_device(n)
            totals[n] += v
            cells.append(f"{_gib(v):>10s}")
        lines.append(f"  {label:38s}" + "".join(cells))
    lines.append(f"  {'total':38s}" + "".join(f"{_gib(totals[n]):>10s}" for n in DEVICE_COUNTS))
    verdicts = []
    for n in DEVICE_COUNTS:
        if tr.global_batch is not None and tr.global_batch % (n * tr.grad_accum):
            verdicts.append(f"{n} device(s): global_batch {tr.global_batch} does not split")
        elif totals[n] / GIB <= device_gib * 0.9:
            verdicts.append(f"{n} device(s): {'online KD' if online else 'this stage'} fits")
        elif online and (totals[n] - t_weights) / GIB <= device_gib * 0.9:
            verdicts.append(f"{n} device(s): online KD does NOT fit; use teacher_mode: offline (cache) - then it fits")
        else:
            verdicts.append(f"{n} device(s): does NOT fit" + ("" if fsdp else " (try train.parallel: fsdp)"))
    lines.append(f"  verdict vs {device_gib:.0f} GiB/device (90 % usable): " + "; ".join(verdicts))
    if stage.teacher_mode == "offline":
        lines.extend(cache_fill_plan(stage, teacher, student, device_gib))
    return lines


def cache_fill_plan(stage, teacher: ModelShape, student: ModelShape, device_gib: float) -> list[str]:
    """The offline cache fill: each filling process loads the teacher with device_map="auto" over its
    share of a node's devices (distill.teacher_cache.fill_memory: 8 devices / P processes, 90 % of
    each), so the teacher's weights per device are teacher / (8 / P)."""
    from distill import cache_codec

    t_bytes = teacher.params * DTYPE_BYTES[stage.teacher.dtype]
    vocab, k, cache = min(teacher.vocab, student.vocab), stage.loss.top_k, stage.cache
    per_token = (cache_codec.compact_bytes_per_token(k, vocab, cache.logp_bits) if cache.format == "compact"
                 else k * (2 if vocab <= 65536 else 4) + 2 * k)
    lines = [f"  cache fill (teacher {stage.teacher.dtype}, device_map=auto over each process's devices; "
             f"cache {cache.format}, k={k}: {per_token} bytes/token = {per_token * 1e6 / GIB:.2f} GiB per 1M tokens)"]
    devices = max(DEVICE_COUNTS)
    for procs in (devices, 4, 2, 1):
        share = devices // procs
        per_device = t_bytes / share
        fits = per_device / GIB <= device_gib * 0.9
        lines.append(f"    {procs} process(es) x {share} device(s): teacher {_gib(per_device).strip()} GiB per "
                     f"device -> {'fits' if fits else 'does NOT fit (layers offload to CPU RAM: slow)'}")
    return lines


def plan(recipe_path: str, overrides: list[str]) -> str:
    """The text report of `distill plan` (see the module docstring)."""
    import torch

    from distill import recipe as recipe_mod

    r = recipe_mod.load(recipe_path, overrides)
    cuda = torch.cuda.is_available()
    device_gib = torch.cuda.get_device_properties(0).total_memory / GIB if cuda else DEVICE_GIB
    out = [f"plan: {r.name} ({recipe_path})",
           f"devices: {'cuda ' + torch.cuda.get_device_name(0) if cuda else f'no GPU here; sized for {DEVICE_GIB:.0f} GiB accelerators'}"
           f" ({device_gib:.0f} GiB each); estimates only, keep ~10 % headroom"]
    dirs: dict[str, object] = {}
    for i, stage in enumerate(r.stages):
        name = recipe_mod.stage_name(i, stage)
        # Dispatch on the schema classes (recipe.STAGE_CLASSES): the one place a stage kind exists.
        if isinstance(stage, recipe_mod.DistillStage):
            t_cfg = _config_for(stage.teacher, dirs)
            s_cfg = student_config(stage, t_cfg, dirs)
            teacher, student = shape_of("teacher", t_cfg), shape_of("student", s_cfg)
            out.append(f"\nstage {name} (distill, student init {stage.student.init}, teacher {stage.teacher_mode}):")
            for m in (teacher, student):
                moe = f", {m.active_params / 1e9:.2f}B active/token" if m.active_params != m.params else ""
                out.append(f"  {m.name:8s} {m.config.model_type:10s} {m.params / 1e9:8.3f}B params{moe}, "
                           f"{m.layers} layers, hidden {m.hidden}, vocab {m.vocab}")
            if student.params > teacher.params:
                out.append("  warning: the student is larger than the teacher")
            out.extend(stage_plan(stage, teacher, student, device_gib, cuda))
            dirs[name] = s_cfg
        elif isinstance(stage, recipe_mod.TrainStage):
            cfg = _config_for(stage.model, dirs)
            m = shape_of("model", cfg)
            out.append(f"\nstage {name} (train): {m.config.model_type} {m.params / 1e6:.1f}M params "
                       f"({m.active_params / 1e6:.1f}M active/token), {m.layers} layers")
            dirs[name] = cfg
        elif isinstance(stage, recipe_mod.PruneStage):
            from distill.pruning import pruned_config

            src = stage.model or recipe_mod.ModelRef(source=f"stage:{list(dirs)[-1]}" if dirs else None)
            cfg = pruned_config(stage, _config_for(src, dirs))
            m = shape_of("model", cfg)
            out.append(f"\nstage {name} (prune, {stage.method}): {m.config.model_type} {m.params / 1e6:.1f}M params, "
                       f"{m.layers} layers (no training memory: pruning runs forward passes only)")
            dirs[name] = cfg
        elif stage.kind in ("distill-qwen3-asr", "distill-asr"):
            from distill import plan_asr

            lines = plan_asr.stage_lines if stage.kind == "distill-qwen3-asr" else plan_asr.whisper_lines
            out.extend(lines(stage, name, dirs, device_gib, DEVICE_COUNTS,
                             None if cuda else plan_asr.available_gib()))
        else:
            out.append(f"\nstage {name} ({stage.kind}): not planned (no training memory to estimate)")
    return "\n".join(out)
