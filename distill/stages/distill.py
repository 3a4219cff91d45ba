"""Distillation stage: teach a student to match a teacher's token distributions.

The KD step reads top to bottom: student body -> teacher body under no_grad (online) or cached
top-k rows (offline) -> chunked KD + CE from the final hidden states (no [B, S, V] logits) ->
optional hidden-state loss over the layer map -> backward (in the shared training loop).

kd_weight: 0 makes this the CE-only baseline on the same data, student init and budget (the
teacher then never runs during training), so KD and CE-only runs differ in the loss alone.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

from distill import artifacts, losses, models, students
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import text_blocks
from distill.errors import DistillError
from distill.recipe import DistillStage
from distill.stages.common import heldout_ce, save_model_artifact

logger = logging.getLogger(__name__)


def init_student(spec: DistillStage, teacher, ctx: RunContext, calibration: torch.Tensor | None = None):
    """(student, its tokenizer or None, init facts) per `student.init`."""
    init = spec.student.init
    if init in ("config", "model"):
        student, tok = models.load_causal_lm(spec.student.model, ctx, seed=ctx.seed + 1)
        return student, tok, {"init": init}
    student, info = students.init_student(spec.student, teacher, ctx, calibration)
    return student, None, {"init": init, **info}


def _token_strings(tok, n: int) -> list[str]:
    return tok.convert_ids_to_tokens(list(range(n)))


def align_vocab(student, teacher, s_tok=None, t_tok=None) -> int:
    """Number of leading vocabulary rows both models are compared on.

    student, teacher: models, or their output-row counts (a teacher the stage never loads).
    Same tokenizer, different padded rows (e.g. 151,936 vs 152,064): slice to the shared rows,
    logged. Different tokenizers (sizes or id -> token strings differ): a DistillError naming both.
    """
    s_rows = student if isinstance(student, int) else students.output_head(student).shape[0]
    t_rows = teacher if isinstance(teacher, int) else students.output_head(teacher).shape[0]
    if s_tok is not None and t_tok is not None and s_tok is not t_tok:
        s_n, t_n = len(s_tok), len(t_tok)
        same = s_n == t_n and _token_strings(s_tok, s_n) == _token_strings(t_tok, t_n)
        if not same:
            raise DistillError(
                f"student and teacher tokenizers differ (student {s_n} tokens / {s_rows} rows, teacher "
                f"{t_n} tokens / {t_rows} rows): token ids do not mean the same text",
                "give the student the teacher's tokenizer (student.model.tokenizer), build it from the "
                "teacher (init: layer_map or moe_merge), or pick a teacher/student pair that shares one",
            )
    shared = min(s_rows, t_rows)
    used = len(t_tok) if t_tok is not None else shared
    if used > shared:
        raise DistillError(f"the tokenizer has {used} tokens but the smaller model has only {shared} "
                           "output rows", "use a student whose vocab covers the tokenizer")
    if s_rows != t_rows:
        logger.info("padded vocab differs (student %d rows, teacher %d): comparing the %d shared ids",
                    s_rows, t_rows, shared)
    return shared


def teacher_artifact(spec: DistillStage, teacher, tokenizer, ctx: RunContext) -> str:
    """An evaluable location for the teacher: its own dir if it has one, else saved in the run."""
    if spec.teacher.source is not None:
        return models.resolve_source(spec.teacher.source, ctx)
    name = f"{ctx.stage_name}-teacher"
    if artifacts.is_complete(ctx.artifact_dir(name)):
        return str(ctx.artifact_dir(name))
    art = save_model_artifact(teacher, tokenizer, ctx, name, lineage=[],
                              stage={"kind": "teacher", "config": spec.teacher.config})
    return str(art.path)


def hidden_pairs(student, teacher, info: dict) -> list[tuple[int, int]]:
    """(student, teacher) `hidden_states` indices: layer outputs matched along the layer map."""
    n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    layers = info.get("layers") or losses.even_layer_map(n_s, n_t)
    return [(j + 1, t + 1) for j, t in enumerate(layers)]


def _teacher_shape(spec: DistillStage, teacher, teacher_dir: str | None) -> tuple[int, int]:
    """(output rows, parameters) of the teacher, read from its config when it is not loaded."""
    if teacher is not None:
        return students.output_head(teacher).shape[0], models.count_params(teacher)
    from transformers import AutoConfig

    from distill.plan import shape_of

    shape = shape_of("teacher", AutoConfig.from_pretrained(teacher_dir,
                                                           trust_remote_code=spec.teacher.trust_remote_code))
    return shape.vocab, shape.params


def run(spec: DistillStage, ctx: RunContext) -> Artifact:
    from distill import teacher_cache

    loss_spec = spec.loss
    offline = spec.teacher_mode == "offline" and bool(loss_spec.kd_weight) and not spec.init_only
    inline = spec.teacher.config is not None
    teacher_dir = None if inline else teacher_cache.model_dir(spec.teacher.source, ctx)
    # Offline, the cache is matched by the teacher's files: fingerprinted first, so a directory
    # without weights (the shapes-only configs `distill plan` reads) fails before anything loads.
    t_hash = teacher_cache.files_fingerprint(teacher_dir) if offline and not inline else None
    # Offline, the teacher's weights are read only to fill the cache (and to build a student from
    # them): a pretrained student next to a cached teacher never has the teacher in memory.
    if not offline or inline or spec.student.init in ("layer_map", "moe_merge"):
        teacher, tokenizer = models.load_causal_lm(spec.teacher, ctx, seed=ctx.seed)
        for p in teacher.parameters():
            p.requires_grad_(False)
    else:
        teacher, tokenizer = None, models.load_tokenizer(spec.teacher, teacher_dir, ctx)
    teacher_path = teacher_artifact(spec, teacher, tokenizer, ctx)
    teacher_id = (artifacts.load(teacher_path).artifact_id if artifacts.is_complete(teacher_path)
                  else spec.teacher.source)
    blocks, heldout = text_blocks(spec.data, tokenizer, ctx.seed)
    student, s_tok, info = init_student(spec, teacher, ctx, calibration=blocks.tokens)
    t_rows, n_teacher = _teacher_shape(spec, teacher, teacher_dir)
    vocab = align_vocab(student, t_rows, s_tok, tokenizer)
    n_student = models.count_params(student)
    if n_student > n_teacher:
        logger.warning("the student (%d params) is larger than the teacher (%d): distillation usually "
                       "compresses; check student.init / student.model", n_student, n_teacher)
    extra: dict = {"student_init": info, "vocab_compared": vocab, "student_params": n_student,
                   "teacher_params": n_teacher}

    modules: dict[str, torch.nn.Module] = {"student": student}
    pairs, projector = [], None
    if loss_spec.hidden_weight:
        pairs = hidden_pairs(student, teacher, info)
        projector = losses.HiddenProjector(student.config.hidden_size, teacher.config.hidden_size, len(pairs))
        if projector.needed:
            modules["proj"] = projector

    cache = teacher_head = None
    if offline:
        root = spec.cache.dir or str(ctx.run_dir / "teacher_cache" / ctx.stage_name)
        if inline:
            t_hash, source = teacher_cache.teacher_hash(teacher), teacher
        else:  # each process loads the teacher only if it has shards to fill
            source = functools.partial(teacher_cache.load_for_fill, spec.teacher, teacher_dir, ctx.procs)
        del teacher  # the student is built: from here on only the cache fill may load the teacher
        extra["teacher_cache"] = teacher_cache.fill(
            root, source, blocks.tokens, loss_spec.top_k, vocab, spec.cache.shard_blocks,
            spec.cache.batch_size, t_hash=t_hash, fmt=spec.cache.format, logp_bits=spec.cache.logp_bits,
            procs=ctx.procs)
        del source
        extra["teacher_cache"]["dir"] = str(root)
        cache = teacher_cache.TeacherCache(root, expect_teacher=t_hash)
        teacher = None
    elif teacher is not None:
        teacher.to(ctx.device)
        teacher_head = students.output_head(teacher)[:vocab]
    student.to(ctx.device)  # after the fill: a filling process's GPU holds the teacher until then
    need_teacher = loss_spec.kd_weight > 0 or loss_spec.hidden_weight > 0

    def step(batch: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        labels = losses.shift_labels(batch)
        s_out = students.final_hidden(student, batch, all_layers=bool(pairs))
        s_hidden = s_out[0] if pairs else s_out
        t_hidden = t_states = top_idx = top_logp = None
        if cache is not None:
            top_idx, top_logp = cache.lookup(rows)
            top_idx, top_logp = top_idx.to(batch.device), top_logp.to(batch.device)
        elif need_teacher:
            with torch.no_grad():
                t_out = students.final_hidden(teacher, batch, all_layers=bool(pairs))
            t_hidden, t_states = (t_out if pairs else (t_out, None))
        total, kd, ce = losses.chunked_kd_ce(
            s_hidden, students.output_head(student)[:vocab], t_hidden, teacher_head, labels,
            kd_weight=loss_spec.kd_weight, ce_weight=loss_spec.ce_weight, kind=loss_spec.kind,
            temperature=loss_spec.temperature, beta=loss_spec.beta, chunk_size=loss_spec.chunk_size,
            teacher_top_idx=top_idx, teacher_top_logp=top_logp,
        ) if (loss_spec.kd_weight or loss_spec.ce_weight) else (s_hidden.sum() * 0, torch.zeros(()), torch.zeros(()))
        metrics = {"kd": float(kd), "ce": float(ce)}
        if pairs:
            hid = losses.hidden_loss(s_out[1], t_states, pairs, kind=loss_spec.hidden_loss, projector=projector)
            total = total + loss_spec.hidden_weight * hid
            metrics["hidden"] = float(hid.detach())
        metrics["loss"] = float(total.detach())
        return total, metrics

    from distill.training import train

    t0 = time.perf_counter()
    if spec.init_only:
        final = heldout_ce(student, heldout, vocab)
    else:
        final = train(modules, step, blocks, spec.train, ctx, with_rows=True,
                      eval_fn=lambda: heldout_ce(student, heldout, vocab))
    extra["train_seconds"] = round(time.perf_counter() - t0, 2)
    logger.info("stage %s done: %s", ctx.stage_name, {k: round(v, 4) for k, v in final.items()})
    stage_dict = spec.model_dump(mode="json")
    return save_model_artifact(student, tokenizer, ctx, ctx.stage_name, lineage=[teacher_id],
                               stage=stage_dict, extra={"teacher_path": teacher_path, "final_metrics": final,
                                                        **extra})


def fill_cache_only(recipe_path: str, overrides: list[str]) -> list[dict]:
    """`distill cache RECIPE`: fill the offline teacher cache of every offline distill stage and stop.

    For teachers too big to fill inside the training launch: e.g. one process spreading a 235B
    teacher over all 8 GPUs of a node (`torchrun --nproc_per_node 1 -m distill cache ...`), then
    `torchrun --nproc_per_node 8 -m distill run ...` with the same `cache.dir` trains the student
    and finds the cache complete, so it never loads the teacher. Needs `cache.dir` and a teacher
    directory or hub id (an inline or `stage:` teacher exists only inside a run). -> summaries.
    """
    from transformers import AutoConfig

    from distill import recipe as recipe_mod
    from distill import teacher_cache
    from distill.context import join_processes

    r = recipe_mod.load(recipe_path, overrides)
    procs = join_processes()
    summaries = []
    for i, spec in enumerate(r.stages):
        name = recipe_mod.stage_name(i, spec)
        if not isinstance(spec, DistillStage) or spec.teacher_mode != "offline" or not spec.loss.kd_weight:
            continue
        if not spec.cache.dir or spec.teacher.source is None or spec.teacher.source.startswith("stage:"):
            raise DistillError(f"distill cache: stage {name} needs stages.{i}.cache.dir and a teacher "
                               "directory or hub id", f"set stages.{i}.cache.dir=/shared/path (the same in "
                               "the later `distill run`); inline or stage: teachers fill inside `distill run`")
        teacher_dir = teacher_cache.model_dir(spec.teacher.source)
        t_hash = teacher_cache.files_fingerprint(teacher_dir)  # first: a shapes-only dir fails here, clearly
        tokenizer = models.load_tokenizer(spec.teacher, teacher_dir)
        blocks, _ = text_blocks(spec.data, tokenizer, r.seed)
        t_rows = _teacher_shape(spec, None, teacher_dir)[0]
        if spec.student.init == "model":
            s_rows = AutoConfig.from_pretrained(teacher_cache.model_dir(spec.student.model.source)).vocab_size
        elif spec.student.init == "config":
            s_rows = spec.student.model.config["vocab_size"]
        else:
            s_rows = t_rows
        source = functools.partial(teacher_cache.load_for_fill, spec.teacher, teacher_dir, procs)
        summary = teacher_cache.fill(spec.cache.dir, source, blocks.tokens, spec.loss.top_k, align_vocab(s_rows, t_rows),
                                     spec.cache.shard_blocks, spec.cache.batch_size,
                                     t_hash=t_hash, fmt=spec.cache.format,
                                     logp_bits=spec.cache.logp_bits, procs=procs)
        summaries.append({"stage": name, "dir": spec.cache.dir, **summary})
    if not summaries:
        raise DistillError(f"'{recipe_path}' has no offline distill stage with a KD loss: nothing to cache",
                           "set teacher_mode: offline and loss.top_k in a distill stage")
    return summaries
