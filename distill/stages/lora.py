"""LoRA stage (peft): low-rank adapters on a frozen base, for causal LMs (text) and Whisper (speech).

- QLoRA: `quantize_base: nf4` loads the frozen base in 4-bit NormalFloat (bitsandbytes) and trains
  fp32 adapters on top (Dettmers et al. 2023); a bnb artifact as input is used as it is.
- Objective: CE on the text / reference transcripts, or KD from a teacher (the LoRA model is the
  student, as torchtune's KD recipes do) with the chunked KD loss for LMs.
- The training loop is the shared one: only the adapter weights are optimised and checkpointed,
  so a checkpoint is small and `--resume` continues exactly.
- Output: the PEFT adapter (loads with plain `PeftModel.from_pretrained(base, dir)`), or with
  `merge: true` merged full weights (the adapter kept beside as `<stage>-adapter`). A QLoRA merge
  adds the adapter to the *dequantized* NF4 weights: the base the adapter was trained on.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from distill import artifacts, losses, models, preflight, speech, students
from distill.artifacts import Artifact
from distill.context import RunContext
from distill.data import Blocks, text_blocks
from distill.errors import DistillError
from distill.evaluation import throughput
from distill.recipe import LoraStage
from distill.stages.common import copy_preprocessing, input_artifact, new_artifact

logger = logging.getLogger(__name__)

NF4 = {"bits": 4, "quant_type": "nf4"}


# ------------------------------------------------------------------------------------- models
def model_class(kind: str):
    from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration

    return WhisperForConditionalGeneration if kind == "hf-whisper" else AutoModelForCausalLM


def base_quantization(spec: LoraStage, source: Artifact) -> dict | None:
    """The bnb settings of the frozen base: nf4 for QLoRA, a bnb input's own, else None (fp32)."""
    if source.kind == "bnb":
        return source.extra.get("quantization") or {"bits": 4}
    return dict(NF4) if spec.quantize_base == "nf4" else None


def load_base(path: Path, kind: str, quant: dict | None, device: str):
    """The frozen base model: fp32, or bitsandbytes-quantized (QLoRA)."""
    from transformers import BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32}
    config = preflight.read_config(path)
    if quant and "quantization_config" not in config:
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if quant.get("bits") == 8 else
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.get("quant_type", "nf4"),
                               bnb_4bit_compute_dtype=torch.float32))
    if quant:
        kwargs["device_map"] = {"": device}
    model = model_class(kind).from_pretrained(path, **kwargs)
    if not quant:
        model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def artifact_kind(source: Artifact, path: Path) -> str:
    if source.kind == "bnb":
        return "hf-whisper" if preflight.read_config(path).get("model_type") == "whisper" else "hf-causal-lm"
    if source.kind not in ("hf-causal-lm", "hf-whisper"):
        raise DistillError(f"cannot train LoRA on an artifact of kind '{source.kind}'",
                           "use a full-precision or bitsandbytes model (LoRA before quantize/export)")
    return source.kind


def attach_lora(base, spec: LoraStage):
    """get_peft_model after checking every target names a module of this model."""
    from peft import LoraConfig, get_peft_model

    names = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) or hasattr(m, "quant_state")
             or type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
    preflight.check_targets(spec.target_modules, names, "lora")
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=spec.target_modules, bias="none")
    return get_peft_model(base, config)


def adapter_weights(peft_model) -> torch.nn.ModuleDict:
    """The trainable LoRA A/B matrices as one module: what the loop optimises and checkpoints."""
    parts = {name.replace(".", "__"): module for name, module in peft_model.named_modules()
             if name.endswith((".lora_A", ".lora_B"))}
    return torch.nn.ModuleDict(parts)


def dequantized_copy(path: Path, kind: str, quant: dict):
    """fp32 model whose weights are exactly the bnb base's dequantized values (for QLoRA merges)."""
    model = load_base(path, kind, quant, "cpu")
    model.dequantize()
    return model.to(torch.float32)


# --------------------------------------------------------------------------------------- text
def text_step(spec: LoraStage, peft_model, teacher):
    inner = peft_model.get_base_model()
    head_rows = students.output_head(inner).shape[0]
    vocab = min(head_rows, students.output_head(teacher).shape[0]) if teacher is not None else head_rows
    t_head = students.output_head(teacher)[:vocab] if teacher is not None else None
    loss = spec.loss

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        labels = losses.shift_labels(batch)
        hidden = students.final_hidden(inner, batch)
        if teacher is None:
            total, _, ce = losses.chunked_kd_ce(hidden, students.output_head(inner), None, None, labels,
                                                kd_weight=0.0, ce_weight=1.0, chunk_size=loss.chunk_size)
            return total, {"loss": float(total.detach()), "ce": float(ce)}
        with torch.no_grad():
            t_hidden = students.final_hidden(teacher, batch)
        total, kd, ce = losses.chunked_kd_ce(
            hidden, students.output_head(inner)[:vocab], t_hidden, t_head, labels, kd_weight=loss.kd_weight,
            ce_weight=loss.ce_weight, kind=loss.kind, temperature=loss.temperature, beta=loss.beta,
            chunk_size=loss.chunk_size)
        return total, {"loss": float(total.detach()), "kd": float(kd), "ce": float(ce)}

    return step


# ------------------------------------------------------------------------------------- speech
def coloured_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
    return np.fft.irfft(spectrum / f**exponent, n)


def noisy_copies(audio: list[np.ndarray], texts: list[str], noise, seed: int):
    """Training audio/texts: the clean utterances (unless keep_clean is off) plus noisy copies."""
    from distill.assets.noise import mix

    rng = np.random.default_rng(seed)
    out_audio = list(audio) if noise.keep_clean else []
    out_text = list(texts) if noise.keep_clean else []
    facts = []
    for _ in range(noise.copies):
        for wave, text in zip(audio, texts, strict=True):
            kind, snr = noise.kinds[rng.integers(len(noise.kinds))], noise.snr_db[rng.integers(len(noise.snr_db))]
            out_audio.append(mix(wave, coloured_noise(kind, len(wave), rng), snr, rng).astype(np.float32))
            out_text.append(text)
            facts.append(f"{kind}@{snr:g}")
    counts = {k: facts.count(k) for k in sorted(set(facts))}
    return out_audio, out_text, counts


def speech_setup(spec: LoraStage, source_path: Path, model, ctx: RunContext):
    """(utterance index blocks, step-function factory inputs) for Whisper LoRA."""
    from distill.whisper_tokenizer import whisper_processor

    processor = whisper_processor(source_path)  # references encode as the model was trained
    # Clean rows only: the asset's noisy copies are test conditions; noise here comes from `noise:`.
    utts = speech.read_utterances(spec.speech.source, spec.speech.split, spec.speech.max_items, noisy=False)
    utts, skipped = speech.decode(utts, spec.speech.max_seconds)
    audio = [speech.load_wave(u.audio_path)[0] for u in utts]
    texts = [u.text for u in utts]
    facts: dict = {"utterances": len(utts), "skipped": skipped}
    if spec.noise is not None:
        audio, texts, facts["noisy_copies"] = noisy_copies(audio, texts, spec.noise, ctx.seed)
    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
    labels = speech.pad_labels(speech.reference_labels(processor.tokenizer, texts,
                                                       spec.language if multilingual else None))
    facts["training_items"] = len(audio)
    return processor, audio, labels, facts


def speech_step(spec: LoraStage, peft_model, teacher, processor, audio, labels):
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    inner = peft_model.get_base_model()
    cfg = inner.config
    pad = inner.generation_config.pad_token_id if inner.generation_config.pad_token_id is not None \
        else cfg.pad_token_id
    decoder_in = shift_tokens_right(labels, pad, cfg.decoder_start_token_id)
    loss = spec.loss

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch[:, 0].tolist()
        feats = speech.features(processor.feature_extractor, [audio[i] for i in idx]).to(batch.device)
        y, dec = labels[idx].to(batch.device), decoder_in[idx].to(batch.device)
        width = int((y != -100).sum(1).max())
        y, dec = y[:, :width], dec[:, :width]
        logits = inner(input_features=feats, decoder_input_ids=dec).logits
        ce = losses.ce_loss(logits, y)
        if teacher is None:
            return ce, {"loss": float(ce.detach()), "ce": float(ce.detach())}
        with torch.no_grad():
            t_logits = teacher(input_features=feats, decoder_input_ids=dec).logits
        kd = losses.kd_loss(logits, t_logits, y, kind=loss.kind, temperature=loss.temperature, beta=loss.beta)
        total = loss.kd_weight * kd + loss.ce_weight * ce
        return total, {"loss": float(total.detach()), "kd": float(kd.detach()), "ce": float(ce.detach())}

    return step


# ---------------------------------------------------------------------------------------- run
def base_reference(spec: LoraStage, source: Artifact) -> str:
    """How the adapter names its base: the recipe's asset:<id> when it gave one, else the path."""
    src = spec.model.source if spec.model is not None else None
    return src if src and src.startswith("asset:") else str(source.path)


def save_adapter(peft_model, out: Path, source_path: Path) -> None:
    peft_model.peft_config["default"].base_model_name_or_path = str(source_path)
    peft_model.save_pretrained(out, safe_serialization=True)
    copy_preprocessing(source_path, out)


def run(spec: LoraStage, ctx: RunContext) -> Artifact:
    source = input_artifact(spec, ctx)
    path = Path(source.path)
    preflight.check_lora_base(path, f"stage '{ctx.stage_name}'")
    kind = artifact_kind(source, path)
    if (kind == "hf-whisper") != (spec.speech is not None):
        raise DistillError(f"stage '{ctx.stage_name}': a {kind} model needs "
                           f"{'`speech:` utterances' if kind == 'hf-whisper' else '`data:` text'}",
                           "use `data:` for causal LMs and `speech:` for Whisper")
    quant = base_quantization(spec, source)
    window = throughput.reset_peak_memory(ctx.device)
    t0 = time.perf_counter()
    base = load_base(path, kind, quant, ctx.device)
    peft_model = attach_lora(base, spec)
    teacher = None
    if spec.objective == "kd":
        t_path = Path(models.resolve_source(spec.teacher.source, ctx)) if spec.teacher.source else None
        if kind == "hf-whisper":
            teacher = load_base(t_path, "hf-whisper", None, ctx.device)
        else:
            teacher, _ = models.load_causal_lm(spec.teacher, ctx, seed=ctx.seed)
            teacher.to(ctx.device)
            for p in teacher.parameters():
                p.requires_grad_(False)
    weights = adapter_weights(peft_model)
    trainable = sum(p.numel() for p in weights.parameters())
    extra: dict = {"base": base_reference(spec, source), "lora": {
        "rank": spec.rank, "alpha": spec.alpha, "dropout": spec.dropout, "target_modules": spec.target_modules,
        "trainable_params": trainable, "base_params": models.count_params(base)}}
    if quant:
        extra["base_quantization"] = quant
    if kind == "hf-whisper":
        processor, audio, labels, facts = speech_setup(spec, path, base, ctx)
        extra["speech"] = facts
        blocks = Blocks(torch.arange(len(audio))[:, None], ctx.seed)
        step = speech_step(spec, peft_model, teacher, processor, audio, labels)
    else:
        tokenizer = models.load_tokenizer(spec.model or models_ref(path), str(path), ctx)
        blocks, _ = text_blocks(spec.data, tokenizer, ctx.seed)
        step = text_step(spec, peft_model, teacher)

    from distill.training import train

    peft_model.train()
    final = train({"lora": weights}, step, blocks, spec.train, ctx, unit="utt" if kind == "hf-whisper" else "tok")
    peft_model.eval()
    extra.update(final_metrics=final, train_seconds=round(time.perf_counter() - t0, 2),
                 peak_memory=throughput.peak_memory(ctx.device, window)[0])
    if window:  # the harness's label names its own window; this one is the stage's
        extra["peak_memory"]["conditions"]["scope"] = "stage: base load to end of training"
    logger.info("stage %s done: %s; peak RSS %.0f MB", ctx.stage_name,
                {k: round(v, 4) for k, v in final.items()}, extra["peak_memory"]["value"] / 1e6)

    if not spec.merge:
        out = artifacts.prepare_dir(ctx.artifact_dir())
        save_adapter(peft_model, out, path)
        return artifacts.finalize(new_artifact(ctx, source, spec, "peft-adapter", trainable, extra))

    adapter_dir = ctx.artifact_dir(f"{ctx.stage_name}-adapter")
    if artifacts.is_complete(adapter_dir):  # a resumed stage redoes both outputs, deterministically
        shutil.rmtree(adapter_dir)
    artifacts.prepare_dir(adapter_dir)
    save_adapter(peft_model, adapter_dir, path)
    adapter_art = new_artifact(ctx, source, spec, "peft-adapter", trainable, extra)
    adapter_art.path, adapter_art.artifact_id = adapter_dir, ctx.artifact_id(f"{ctx.stage_name}-adapter")
    artifacts.finalize(adapter_art)
    merged = merge(peft_model, path, kind, quant, adapter_dir)
    out = artifacts.prepare_dir(ctx.artifact_dir())
    merged.save_pretrained(out, safe_serialization=True)
    copy_preprocessing(path, out)
    extra["adapter_path"] = str(adapter_dir)
    return artifacts.finalize(new_artifact(ctx, source, spec, kind, models.count_params(merged), extra))


def merge(peft_model, path: Path, kind: str, quant: dict | None, adapter_dir: Path):
    """Full fp32 weights = base + B A * alpha / r (on the dequantized base for QLoRA)."""
    from peft import PeftModel

    if not quant:
        return peft_model.merge_and_unload()
    base = dequantized_copy(path, kind, quant)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def models_ref(path: Path):
    from distill.recipe import ModelRef

    return ModelRef(source=str(path))
