"""ASR distillation stage (Whisper family), after distil-whisper.

1. Decode the training audio once (undecodable clips skipped and counted, other rates resampled).
2. Teacher pass, once, into resumable on-disk shards (distill.speech_cache): greedy pseudo-labels,
   its encoder states and its top-k log-probs along each label. Stops if too many labels are empty.
3. Drop utterances whose pseudo-label WER against the reference exceeds `wer_filter`: training on
   the teacher's mistakes and hallucinations is what makes small-data ASR distillation collapse.
4. Student = the teacher cut by three levers (speech.whisper_student): decoder depth, encoder depth,
   encoder window. A frozen encoder's outputs come from the cache (a step is one decoder pass); a
   cut encoder trains, matched to the teacher's encoder output.
5. Loss = kd_weight * KL(teacher top-k || student, T) * T^2 + ce_weight * CE(labels)
          + hidden_weight * MSE(student encoder output, teacher encoder output over the window).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from distill import artifacts, losses, models, speech, speech_cache
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import Blocks
from distill.errors import DistillError
from distill.recipe import AsrDistillStage
from distill.whisper_tokenizer import whisper_processor

logger = logging.getLogger(__name__)


def load_whisper(ref, ctx: RunContext):
    from transformers import WhisperForConditionalGeneration

    if ref.source is None:
        raise DistillError("an ASR teacher needs weights, not an inline config",
                           "use asset:whisper-base, asset:whisper-tiny.en or a local Whisper directory")
    path = models.resolve_source(ref.source, ctx)
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("model_type") != "whisper":
        raise DistillError(f"'{ref.source}' is a {config.get('model_type')} model, not Whisper",
                           "distill-asr supports the Whisper family")
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, whisper_processor(path), path


def build_student(spec: AsrDistillStage, teacher, processor, ctx: RunContext):
    """-> (student, its processor, facts). Levers are checked against the teacher before any work."""
    if spec.student.init == "model":
        student, student_proc, _ = load_whisper(spec.student.model, ctx)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise DistillError(f"teacher vocab {teacher.config.vocab_size} != student vocab "
                               f"{student.config.vocab_size}", "use a student from the same Whisper family")
        c = student.config
        return student, student_proc, {"encoder_frames": c.max_source_positions, "decoder_layers": c.decoder_layers,
                                       "encoder_layers": c.encoder_layers,
                                       "window_seconds": speech.student_window_seconds(c, teacher.config)}
    s = spec.student
    student, facts = speech.whisper_student(teacher, s.decoder_layers, s.encoder_layers, s.window_seconds)
    proc = processor if s.window_seconds is None else speech.student_processor(processor, s.window_seconds)
    return student, proc, facts


def run(spec: AsrDistillStage, ctx: RunContext) -> Artifact:
    from distill.teacher_cache import teacher_hash

    teacher, processor, teacher_path = load_whisper(spec.teacher, ctx)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student, student_proc, facts = build_student(spec, teacher, processor, ctx)
    frames = student.config.max_source_positions
    trains_encoder = spec.student.encoder_layers is not None or not spec.freeze_encoder
    extra: dict = {"teacher_path": str(teacher_path), **facts}
    if not spec.init_only:
        extra.update(_train(spec, ctx, teacher, processor, student, student_proc, frames, trains_encoder,
                            teacher_hash(teacher)))
    out = artifacts.prepare_dir(ctx.artifact_dir())
    student.save_pretrained(out, safe_serialization=True)
    student_proc.save_pretrained(out)
    teacher_id = (artifacts.load(teacher_path).artifact_id if artifacts.is_complete(teacher_path)
                  else spec.teacher.source)
    art = Artifact(path=out, artifact_id=ctx.artifact_id(), kind="hf-whisper", adapter="hf-whisper",
                   lineage=[teacher_id], stage=spec.model_dump(mode="json"),
                   recipe_sha256=ctx.recipe_sha256, run_id=ctx.run_id,
                   params=models.count_params(student), extra=extra)
    return artifacts.finalize(art)


def _train(spec, ctx, teacher, processor, student, student_proc, frames, trains_encoder, t_sha) -> dict:
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    from distill.training import train

    utts = speech.read_utterances(spec.data.source, spec.data.split, spec.data.max_items,
                                  spec.data.noisy, ctx.seed)
    utts, counts = speech.decode(utts, spec.data.max_seconds)
    if spec.data.pack_seconds:
        with ctx.procs.main_first():  # rank 0 writes the packed clips, the other ranks find them
            n = len(utts)
            utts = speech.pack(utts, spec.data.pack_seconds, ctx.run_dir / "packed_audio")
        counts["packed_from"], counts["packed_clips"] = n, len(utts)
        logger.info("packed %d utterances into %d clips of at most %g s", n, len(utts), spec.data.pack_seconds)
    language = spec.language if getattr(teacher.generation_config, "is_multilingual", False) else None
    pseudo = spec.pseudo_label
    probe = speech_cache.data_hash(utts, language=language, pseudo=pseudo, max_new_tokens=128,
                                   format=speech_cache.FORMAT_VERSION)
    root = Path(spec.cache.dir) if spec.cache.dir else ctx.run_dir / "speech_cache" / f"{t_sha[:10]}-{probe[:10]}"
    with ctx.procs.main_first():  # rank 0 fills, the other ranks find the cache done
        summary = speech_cache.fill(root, teacher, processor, utts, teacher_sha=t_sha, language=language,
                                    pseudo=pseudo, top_k=spec.cache.top_k, shard_items=spec.cache.shard_items,
                                    batch_size=spec.cache.batch_size, max_empty_rate=spec.max_empty_rate)
        window = None
        if not trains_encoder and frames != teacher.config.max_source_positions:
            window = speech_cache.fill_window(root, teacher, processor, utts, frames // 50, teacher_sha=t_sha,
                                              shard_items=spec.cache.shard_items, batch_size=spec.cache.batch_size)
    cache = speech_cache.SpeechCache(root, expect_teacher=t_sha)
    enc_cache = speech_cache.SpeechCache(root / f"window-{frames}", t_sha) if window is not None else cache
    side = cache.side()
    keep = speech.wer_filter(side["hyps"], side["refs"], spec.wer_filter) if pseudo else [True] * len(utts)
    window_s = speech.student_window_seconds(student.config, teacher.config)
    fits = speech.fits_window(utts, window_s)
    counts["longer_than_window"] = sum(1 for k, f in zip(keep, fits) if k and not f)
    kept = [i for i, (k, f) in enumerate(zip(keep, fits)) if k and f]
    logger.info("ASR data: %d utterances, %d kept after the WER filter (threshold %s) and the %s-s "
                "window, skipped %s", len(utts), len(kept), spec.wer_filter, window_s or "full", counts)
    if not kept:
        raise DistillError(f"the WER filter ({spec.wer_filter}) and the student's window dropped every "
                           "utterance", "raise wer_filter, set it to null, widen the window, or check the references")
    cfg = teacher.config
    pad = teacher.generation_config.pad_token_id
    pad = cfg.pad_token_id if pad is None else pad
    start_id = cfg.decoder_start_token_id
    del teacher  # everything the loss needs from it is in the cache
    student.train()
    for p in student.model.encoder.parameters():
        p.requires_grad_(trains_encoder)
    loss_spec = spec.loss
    k = loss_spec.top_k or spec.cache.top_k
    fe = student_proc.feature_extractor

    def step(batch: torch.Tensor, rows=None) -> tuple[torch.Tensor, dict[str, float]]:
        idx = [kept[int(i)] for i in batch[:, 0]]
        y = cache.get("labels", idx, pad=-100).long()
        dec = shift_tokens_right(y, pad, start_id)
        metrics: dict[str, float] = {}
        total = torch.zeros(())
        if trains_encoder:
            feats = speech.features(fe, [speech.load_wave(utts[i].audio_path)[0] for i in idx])
            enc = student.model.encoder(feats).last_hidden_state
            if loss_spec.hidden_weight:
                target = cache.get("enc", idx)[:, :frames].float()
                hidden = losses.hidden_loss([enc], [target], [(0, 0)], kind=loss_spec.hidden_loss)
                total = total + loss_spec.hidden_weight * hidden
                metrics["hidden"] = hidden.item()
        else:
            enc = enc_cache.get("enc", idx).float()
        logits = student(encoder_outputs=(enc,), decoder_input_ids=dec).logits
        if loss_spec.kd_weight:
            kd = losses.sparse_kd_loss(logits, cache.get("topk_ids", idx)[..., :k],
                                       cache.get("topk_logp", idx)[..., :k], y, kind=loss_spec.kind,
                                       temperature=loss_spec.temperature, beta=loss_spec.beta)
            total = total + loss_spec.kd_weight * kd
            metrics["kd"] = kd.item()
        if loss_spec.ce_weight:
            ce = losses.ce_loss(logits, y)
            total = total + loss_spec.ce_weight * ce
            metrics["ce"] = ce.item()
        metrics.update(loss=total.item(), label_tokens=float((y != -100).sum()))
        return total, metrics

    # Rows of this "block" table are utterance indices: the loop's deterministic order applies.
    index = Blocks(torch.arange(len(kept))[:, None], ctx.seed)
    final = train({"student": student}, step, index, spec.train, ctx, unit="utt")
    student.eval()
    return {"utterances": len(utts), "kept_after_wer_filter": sum(keep), "kept": len(kept), "skipped": counts,
            "speech_cache": {"dir": str(root), **summary, "window": window}, "final_metrics": final}
