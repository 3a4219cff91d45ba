"""ASR distillation stage (Whisper family), after distil-whisper.

1. Decode the training audio; the teacher transcribes it greedily (pseudo-labels).
2. Drop utterances whose pseudo-label WER against the reference exceeds `wer_filter`: training on
   the teacher's mistakes and hallucinations is what makes small-data ASR distillation collapse.
3. Student = teacher encoder + evenly spaced decoder layers. With a frozen encoder its outputs are
   computed once and shared by teacher and student, so a step costs two decoder passes.
4. Loss = kd_weight * KL(teacher || student at T) * T^2 + ce_weight * CE(labels), over label tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from distill import artifacts, losses, models, speech
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import Blocks
from distill.errors import DistillError
from distill.recipe import AsrDistillStage

logger = logging.getLogger(__name__)


def load_whisper(ref, ctx: RunContext):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if ref.source is None:
        raise DistillError("an ASR teacher needs weights, not an inline config",
                           "use asset:whisper-base, asset:whisper-tiny.en or a local Whisper directory")
    path = models.resolve_source(ref.source, ctx)
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("model_type") != "whisper":
        raise DistillError(f"'{ref.source}' is a {config.get('model_type')} model, not Whisper",
                           "distill-asr supports the Whisper family")
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, WhisperProcessor.from_pretrained(path), path


def reference_labels(processor, texts: list[str], language: str | None) -> list[list[int]]:
    """Reference transcripts as decoder targets: prefix tokens + text + EOS, minus the start token."""
    tok = processor.tokenizer
    if language:
        tok.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return [tok(" " + t.strip()).input_ids[1:] for t in texts]


@torch.no_grad()
def encode(encoder, feats: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    return torch.cat([encoder(feats[i:i + batch_size]).last_hidden_state
                      for i in range(0, len(feats), batch_size)])


def run(spec: AsrDistillStage, ctx: RunContext) -> Artifact:
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    teacher, processor, teacher_path = load_whisper(spec.teacher, ctx)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if spec.student.init == "model":
        student, _, _ = load_whisper(spec.student.model, ctx)
        layer_map = None
    else:
        student, layer_map = speech.whisper_student(teacher, spec.student.decoder_layers)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise DistillError(f"teacher vocab {teacher.config.vocab_size} != student vocab "
                           f"{student.config.vocab_size}", "use a student from the same Whisper family")

    utts = speech.read_utterances(spec.data.source, spec.data.split, spec.data.max_items)
    utts, audio, skipped = speech.decode(utts, spec.data.max_seconds)
    feats = speech.features(processor, audio)
    language = spec.language if getattr(teacher.generation_config, "is_multilingual", False) else None
    refs = [u.text for u in utts]
    if spec.pseudo_label:
        labels = speech.pseudo_label(teacher, processor, feats, language)
        hyps = processor.tokenizer.batch_decode(labels, skip_special_tokens=True)
        keep = speech.wer_filter(hyps, refs, spec.wer_filter)
    else:
        labels = reference_labels(processor, refs, language)
        keep = [True] * len(utts)
    kept = [i for i, k in enumerate(keep) if k]
    logger.info("ASR data: %d utterances, %d kept after the WER filter (threshold %s), skipped %s",
                len(utts), len(kept), spec.wer_filter, skipped)
    if not kept:
        raise DistillError(f"the WER filter ({spec.wer_filter}) dropped every utterance",
                           "raise wer_filter, set it to null, or check the references")
    feats = feats[kept]
    label_ids = speech.pad_labels([labels[i] for i in kept])
    gen = teacher.generation_config
    decoder_in = shift_tokens_right(label_ids, gen.pad_token_id if gen.pad_token_id is not None
                                    else teacher.config.pad_token_id, teacher.config.decoder_start_token_id)
    teacher_enc = encode(teacher.model.encoder, feats)
    if spec.freeze_encoder:
        for p in student.model.encoder.parameters():
            p.requires_grad_(False)
    loss_spec = spec.loss

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch[:, 0]
        y, dec = label_ids[idx], decoder_in[idx]
        width = int((y != -100).sum(1).max())
        y, dec = y[:, :width], dec[:, :width]
        if spec.freeze_encoder:
            enc = teacher_enc[idx]  # the student's encoder IS the frozen teacher encoder
        else:
            enc = student.model.encoder(feats[idx]).last_hidden_state
        s_logits = student(encoder_outputs=(enc,), decoder_input_ids=dec).logits
        with torch.no_grad():
            t_logits = teacher(encoder_outputs=(teacher_enc[idx],), decoder_input_ids=dec).logits
        kd = losses.kd_loss(s_logits, t_logits, y, kind=loss_spec.kind,
                            temperature=loss_spec.temperature, beta=loss_spec.beta)
        ce = losses.ce_loss(s_logits, y)
        total = loss_spec.kd_weight * kd + loss_spec.ce_weight * ce
        return total, {"loss": total.item(), "kd": kd.item(), "ce": ce.item(),
                       "label_tokens": float((y != -100).sum())}

    from distill.training import train

    # Rows of this "block" table are utterance indices: the loop's deterministic order applies.
    index = Blocks(torch.arange(len(kept))[:, None], ctx.seed)
    final = train({"student": student}, step, index, spec.train, ctx)

    out = artifacts.prepare_dir(ctx.artifact_dir())
    student.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    teacher_id = (artifacts.load(teacher_path).artifact_id if artifacts.is_complete(teacher_path)
                  else spec.teacher.source)
    art = Artifact(path=out, artifact_id=ctx.artifact_id(), kind="hf-whisper", adapter="hf-whisper",
                   lineage=[teacher_id], stage=spec.model_dump(mode="json"),
                   recipe_sha256=ctx.recipe_sha256, run_id=ctx.run_id,
                   params=models.count_params(student),
                   extra={"teacher_path": str(teacher_path), "decoder_layer_map": layer_map,
                          "utterances": len(utts), "kept_after_wer_filter": len(kept),
                          "skipped": skipped, "final_metrics": final})
    return artifacts.finalize(art)
