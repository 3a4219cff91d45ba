"""Speech-LLM distillation: a Qwen3-ASR teacher (e.g. 1.7B) teaches a Qwen3-ASR student (0.6B).

1. The teacher transcribes the training audio greedily with the package's prompt (pseudo-labels,
   cached on disk and resumable); utterances whose label disagrees with the reference by more than
   `wer_filter` (WER, or CER for zh/yue/ja/th) are dropped.
2. Each example = prompt (system context, audio placeholders, `language X<asr_text>`) + label +
   <|im_end|>, the layout of the package's SFT script; only label tokens and <|im_end|> are scored.
3. Step: student audio encoder (or its cached output when frozen) -> student decoder; teacher under
   no_grad (its audio embeddings computed once) -> chunked KD(T) * T^2 + CE from the final hidden
   states (vocab 151,936: no [B, S, V] logits) -> optional hidden-state MSE through learned
   projections (encoder output 896 -> 1024, decoder layers 1024 -> 2048 for 0.6B <- 1.7B).
The loop, checkpoints, exact resume and metrics are the shared `distill.training.train`.
"""

from __future__ import annotations

import logging
import time

import torch

from distill import artifacts, losses, models, pseudo_labels, speech, students
from distill import qwen3_asr as q3
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import Blocks
from distill.errors import DistillError
from distill.recipe import Qwen3AsrDistillStage

logger = logging.getLogger(__name__)


def init_student(spec: Qwen3AsrDistillStage, teacher, processor, ctx: RunContext):
    """(student in its dtype: fp32 unless student.model.dtype says otherwise, its processor, init
    facts) per `student.init`. A config-built student uses the teacher's processor."""
    init = spec.student.init
    if init == "layer_map":
        layers = students.resolve_layers(spec.student, q3.num_decoder_layers(teacher))
        return q3.layer_map_student(teacher, layers).float(), processor, {"init": init, "layers": layers}
    ref = spec.student.model
    if init == "config" and ref.config is None and not ref.source.endswith(".json"):
        ref = ref.model_copy(update={"source": str(ref.source) + "/config.json"})  # weights ignored
    student, s_proc, _ = q3.load_ref(ref, ctx, seed=ctx.seed + 1, processor=processor)
    if init == "model" and len(s_proc.tokenizer) != len(processor.tokenizer):
        raise DistillError(f"student tokenizer has {len(s_proc.tokenizer)} tokens, the teacher's "
                           f"{len(processor.tokenizer)}", "use a student from the same Qwen3-ASR family")
    return student.to(getattr(torch, ref.dtype)), s_proc, {"init": init, "dtype": ref.dtype}


def encode(processor, audio, prompt: str, text: str) -> dict:
    """One training example: token ids with audio placeholders expanded, where the label starts,
    and the utterance's features [128, T]."""
    eos = processor.tokenizer.eos_token or "<|im_end|>"
    full = processor(text=[prompt + text + eos], audio=[audio], return_tensors="pt")
    n_prompt = len(processor(text=[prompt], audio=[audio], return_tensors="pt")["input_ids"][0])
    frames = int(full["feature_attention_mask"][0].sum())
    return {"ids": full["input_ids"][0], "label_start": n_prompt,
            "features": full["input_features"][0, :, :frames]}


def collate(examples: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> input_ids [B, S] (right-padded), attention_mask [B, S], labels [B, S] already shifted:
    position t predicts token t+1, scored only inside the label (+ <|im_end|>)."""
    width = max(len(e["ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for b, e in enumerate(examples):
        n = len(e["ids"])
        ids[b, :n], mask[b, :n] = e["ids"], 1
        labels[b, e["label_start"] - 1:n - 1] = e["ids"][e["label_start"]:]
    return ids, mask, labels


@torch.no_grad()
def _audio(thinker, examples: list[dict], encoder_states: bool, batch: int = 8):
    """Per-example audio embeddings (and encoder states) computed once, for a frozen encoder."""
    embeds, states = [], []
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        dtype = next(thinker.parameters()).dtype
        e, s = q3.audio_embeddings(thinker, [x["features"].to(dtype) for x in chunk], encoder_states)
        sizes = [int((x["ids"] == thinker.config.audio_token_id).sum()) for x in chunk]
        embeds += list(e.split(sizes))
        states += list(s.split(sizes)) if s is not None else [None] * len(chunk)
    return embeds, states


def decode(utts, max_seconds: float):
    """-> (utterances kept, their 16 kHz audio, skip counts): undecodable or too long are counted."""
    from distill.evaluation.asr import SAMPLE_RATE, load_audio

    kept, audio, skipped = [], [], {"decode_error": 0, "too_long": 0}
    for utt in utts:
        try:
            wave = load_audio(utt.audio_path)
        except Exception:  # noqa: BLE001 - any decoder failure: skip and count
            skipped["decode_error"] += 1
            continue
        if len(wave) / SAMPLE_RATE > max_seconds:
            skipped["too_long"] += 1
            continue
        kept.append(utt)
        audio.append(wave)
    if not kept:
        raise DistillError("no training utterance could be decoded (or all exceed data.max_seconds)",
                           "check the speech data's audio files and data.max_seconds")
    return kept, audio, skipped


def pseudo_label(spec, ctx: RunContext, teacher, processor, utts, audio) -> list[str]:
    from distill import teacher_cache

    asr = q3.Qwen3ASR(model=teacher, processor=processor, max_new_tokens=spec.max_new_tokens,
                      context=spec.context)
    meta = {"teacher_sha256": teacher_cache.teacher_hash(teacher), "language": q3.language_name(spec.language),
            "context": spec.context, "max_new_tokens": spec.max_new_tokens, "format": 1}
    root = spec.labels_dir or ctx.run_dir / "pseudo_labels" / ctx.stage_name
    with ctx.procs.main_first():  # rank 0 labels; the other ranks then find every line cached
        by_id = pseudo_labels.fill(root, meta, [u.id for u in utts],
                                   lambda idx: asr.transcribe([audio[i] for i in idx], language=spec.language),
                                   spec.label_batch_size)
    return [by_id[u.id] for u in utts]


def run(spec: Qwen3AsrDistillStage, ctx: RunContext) -> Artifact:
    teacher, processor, teacher_path = q3.load_ref(spec.teacher, ctx, seed=ctx.seed)
    teacher.requires_grad_(False)
    utts = speech.read_utterances(spec.data.source, spec.data.split, spec.data.max_items)
    utts, audio, skipped = decode(utts, spec.data.max_seconds)
    refs = [u.text for u in utts]
    code = q3.language_code(spec.language)
    texts = pseudo_label(spec, ctx, teacher, processor, utts, audio) if spec.pseudo_label else refs
    keep, rates = pseudo_labels.keep_mask(texts, refs, spec.wer_filter if spec.pseudo_label else None, code)
    kept = [i for i, k in enumerate(keep) if k]
    logger.info("speech data: %d utterances, %d kept by the %s filter (threshold %s), skipped %s",
                len(utts), len(kept), "CER" if code in pseudo_labels.CHARACTER_LANGUAGES else "WER",
                spec.wer_filter, skipped)
    if not kept:
        raise DistillError(f"the pseudo-label filter ({spec.wer_filter}) dropped every utterance",
                           "raise wer_filter, set it to null, or check the references and language")

    student, s_proc, info = init_student(spec, teacher, processor, ctx)
    t_vocab, s_vocab = teacher.thinker.lm_head.weight.shape[0], student.thinker.lm_head.weight.shape[0]
    if t_vocab != s_vocab:
        raise DistillError(f"student vocab {s_vocab} != teacher vocab {t_vocab}",
                           "use a student of the same Qwen3-ASR family (vocab 151,936)")
    prompt = q3.prompt(processor, spec.language, spec.context)
    examples = [encode(processor, audio[i], prompt, texts[i]) for i in kept]
    t_thinker, s_thinker = teacher.thinker, student.thinker
    loss_spec, hid = spec.loss, spec.hidden
    t_audio, t_enc = _audio(t_thinker, examples, hid.encoder)  # the teacher never changes
    s_audio = None
    if spec.freeze_encoder:
        s_thinker.audio_tower.requires_grad_(False)
        s_audio, _ = _audio(s_thinker, examples, False)

    modules: dict[str, torch.nn.Module] = {"student": student}
    pairs: list[tuple[int, int]] = []
    enc_proj = dec_proj = None
    if hid.decoder_layers:
        n_s, n_t = q3.num_decoder_layers(student), q3.num_decoder_layers(teacher)
        bad = [i for i in hid.decoder_layers if not 0 <= i < n_s]
        if bad:
            raise DistillError(f"hidden.decoder_layers {bad} outside the student's {n_s} layers",
                               f"use indices 0..{n_s - 1}")
        mapped = losses.even_layer_map(n_s, n_t) if info.get("layers") is None else info["layers"]
        pairs = [(i + 1, mapped[i] + 1) for i in hid.decoder_layers]  # hidden_states[0] = embeddings
        dec_proj = losses.HiddenProjector(q3.decoder_width(student), q3.decoder_width(teacher), len(pairs))
        modules["decoder_proj"] = dec_proj
    if hid.encoder:
        enc_proj = losses.HiddenProjector(q3.encoder_width(student), q3.encoder_width(teacher), 1)
        modules["encoder_proj"] = enc_proj
    modules = {k: m for k, m in modules.items() if any(True for _ in m.parameters())}
    student.to(ctx.device)
    teacher.to(ctx.device)
    pad_id = processor.tokenizer.pad_token_id or 0
    s_head, t_head = s_thinker.lm_head.weight, t_thinker.lm_head.weight

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        rows = batch[:, 0].tolist()
        chosen = [examples[i] for i in rows]
        ids, mask, labels = (t.to(ctx.device) for t in collate(chosen, pad_id))
        s_enc = None
        if s_audio is not None:
            s_emb = torch.cat([s_audio[i] for i in rows])
        else:
            s_emb, s_enc = q3.audio_embeddings(s_thinker, [examples[i]["features"].to(ctx.device) for i in rows],
                                               hid.encoder)
        s_hidden, s_states = q3.thinker_states(s_thinker, ids, mask, s_emb, hidden=bool(pairs))
        with torch.no_grad():
            t_hidden, t_states = q3.thinker_states(t_thinker, ids, mask, torch.cat([t_audio[i] for i in rows]),
                                                   hidden=bool(pairs))
        total, kd, ce = losses.chunked_kd_ce(
            s_hidden, s_head, t_hidden, t_head, labels, kd_weight=loss_spec.kd_weight,
            ce_weight=loss_spec.ce_weight, kind=loss_spec.kind, temperature=loss_spec.temperature,
            beta=loss_spec.beta, chunk_size=loss_spec.chunk_size,
        ) if (loss_spec.kd_weight or loss_spec.ce_weight) else (s_hidden.sum() * 0, torch.zeros(()), torch.zeros(()))
        metrics = {"kd": float(kd), "ce": float(ce), "label_tokens": float((labels != -100).sum())}
        if pairs:
            dec = losses.hidden_loss(s_states, t_states, pairs, kind=loss_spec.hidden_loss, projector=dec_proj,
                                     mask=mask.bool())
            total = total + loss_spec.hidden_weight * dec
            metrics["hidden_decoder"] = float(dec.detach())
        if hid.encoder:
            t_e = torch.cat([t_enc[i] for i in rows]).to(ctx.device)
            enc = losses.hidden_loss([s_enc[None]], [t_e[None]], [(0, 0)], kind=loss_spec.hidden_loss,
                                     projector=enc_proj)
            total = total + loss_spec.hidden_weight * enc
            metrics["hidden_encoder"] = float(enc.detach())
        metrics["loss"] = float(total.detach())
        return total, metrics

    from distill.training import train

    t0 = time.perf_counter()
    index = Blocks(torch.arange(len(examples))[:, None], ctx.seed)  # rows = example indices
    final = train(modules, step, index, spec.train, ctx, unit="utt")
    train_s = round(time.perf_counter() - t0, 2)

    out = artifacts.prepare_dir(ctx.artifact_dir())
    q3.save(student, s_proc, out)
    teacher_ref = teacher_path or _saved_teacher(spec, teacher, processor, ctx)
    teacher_id = (artifacts.load(teacher_ref).artifact_id if teacher_ref and artifacts.is_complete(teacher_ref)
                  else spec.teacher.source or "inline-config")
    art = Artifact(path=out, artifact_id=ctx.artifact_id(), kind="qwen3-asr", adapter="qwen3-asr",
                   lineage=[teacher_id], stage=spec.model_dump(mode="json"), recipe_sha256=ctx.recipe_sha256,
                   run_id=ctx.run_id, params=models.count_params(student),
                   extra={"teacher_path": teacher_ref, "student_init": info, "utterances": len(utts),
                          "kept_after_filter": len(kept), "skipped": skipped,
                          "filter_rates": [None if r is None else round(r, 4) for r in rates],
                          "teacher_params": models.count_params(teacher), "train_seconds": train_s,
                          "final_metrics": final})
    return artifacts.finalize(art)


def _saved_teacher(spec, teacher, processor, ctx: RunContext) -> str | None:
    """A config-built (random) teacher is saved beside the student only when the recipe evaluates
    it: evaluation needs a directory, and a real-shape twin is gigabytes."""
    ev = ctx.recipe.eval
    if ev is None or not ev.include_teacher:
        return None
    name = f"{ctx.stage_name}-teacher"
    out = ctx.artifact_dir(name)
    if not artifacts.is_complete(out):
        out = artifacts.prepare_dir(out)
        q3.save(teacher, processor, out)
        artifacts.finalize(Artifact(path=out, artifact_id=ctx.artifact_id(name), kind="qwen3-asr",
                                    adapter="qwen3-asr", stage={"kind": "teacher", "config": spec.teacher.config},
                                    run_id=ctx.run_id, params=models.count_params(teacher)))
    return str(out)
