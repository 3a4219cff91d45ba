"""`distill plan` for speech-LLM distillation (distill-qwen3-asr): parameters and memory per device.

Models are built on the meta device from their configs (shapes only, no weights), so the 1.7B ->
0.6B pair is sized in seconds offline. Sequence lengths follow the audio: Qwen3-ASR's encoder
turns each second (100 mel frames) into 13 audio tokens (12.5 Hz), the prompt adds ~10 text tokens
and a transcript ~4 tokens per second of English speech; batches are padded to the longest clip,
sized here at `data.max_seconds`.

Estimates, not measurements (bench/qwen3_asr_real_shape.py compares them with a run): transformer
activations use sbh x 34 bytes per layer (16-bit, no s^2 attention term; Korthikanti et al. 2022)
scaled to the compute dtype; the audio encoder's three stride-2 convolutions (480 channels) keep
their inputs and GELU outputs; the frozen teacher keeps ~one layer live (no_grad) plus its hidden
states when hidden-state KD reads them; the chunked KD loss holds one [chunk, V] block per model.
Trainable weights keep gradients and two AdamW moments in their own dtype (fp32 master weights
unless the student's dtype is bfloat16). Allocator slack and the Python runtime are not included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
AUDIO_TOKENS_PER_S = 13  # 100 mel frames -> 13 tokens after the 8x conv downsampling
PROMPT_TOKENS = 10  # chat turns + `language English<asr_text>` around the audio placeholders
LABEL_TOKENS_PER_S = 4  # English read speech ~2.7 words/s x ~1.4 Qwen3 tokens per word
NOMINAL_UTTERANCES = 1000  # sized when data.max_items is not set (the data is not read to plan)
CONV_ELEMS_PER_S = 480 * (64 * 50 + 32 * 25 + 16 * 13)  # conv2d1..3 outputs per 1-s window


@dataclass
class SpeechShape:
    params: int
    encoder_params: int
    encoder_layers: int
    encoder_width: int
    decoder_layers: int
    decoder_width: int
    vocab: int


def config_dict(ref, ctx_dirs: dict) -> dict:
    """Config dict of a ModelRef without weights: inline, a config .json, a directory, an asset, an
    earlier stage, or a hub id already in the local cache."""
    from distill import qwen3_asr

    if ref.config is not None:
        return dict(ref.config)
    if ref.source.startswith("stage:"):
        name = ref.source.removeprefix("stage:")
        if name not in ctx_dirs:
            raise DistillError(f"plan: '{ref.source}' is not an earlier stage", "check the stage name")
        return ctx_dirs[name]
    cfg = qwen3_asr.source_config(ref.source)
    if cfg is None:
        from distill.config_checks import require_hub

        fix = ("plan with the shape-only configs: vars.teacher=recipes/asr/configs/qwen3-asr-1.7b "
               "vars.student=recipes/asr/configs/qwen3-asr-0.6b")
        try:
            require_hub([("plan", ref.source)])  # offline and not cached: one line now, not retries
            from huggingface_hub import hf_hub_download

            cfg = json.loads(Path(hf_hub_download(ref.source, "config.json")).read_text())
        except DistillError as exc:
            raise DistillError(exc.problem, fix) from None
        except Exception:  # noqa: BLE001 - unknown id or a broken download: one clear line instead
            raise DistillError(f"plan: no config for '{ref.source}'", fix) from None
    return cfg


def shape_of(config: dict, layers: int | None = None) -> SpeechShape:
    import copy

    import torch

    from distill import qwen3_asr

    cfg = copy.deepcopy(config)
    cfg.pop("model_type", None)
    text = cfg.setdefault("thinker_config", {}).setdefault("text_config", {})
    if layers is not None:
        text["num_hidden_layers"] = layers
    tb = qwen3_asr.classes()
    with torch.device("meta"):
        model = tb.Qwen3ASRForConditionalGeneration(tb.Qwen3ASRConfig(**cfg))
    th = model.config.thinker_config
    return SpeechShape(params=sum(p.numel() for p in model.parameters()),
                       encoder_params=sum(p.numel() for p in model.thinker.audio_tower.parameters()),
                       encoder_layers=th.audio_config.encoder_layers, encoder_width=th.audio_config.d_model,
                       decoder_layers=th.text_config.num_hidden_layers, decoder_width=th.text_config.hidden_size,
                       vocab=th.text_config.vocab_size)


def student_config(stage, teacher_cfg: dict, dirs: dict) -> tuple[dict, int | None]:
    spec = stage.student
    if spec.init == "layer_map":
        from distill import students

        n_t = teacher_cfg["thinker_config"]["text_config"]["num_hidden_layers"]
        return teacher_cfg, len(students.resolve_layers(spec, n_t))
    return config_dict(spec.model, dirs), None


def memory_rows(stage, teacher: SpeechShape, student: SpeechShape, compute_bytes: int) -> list[tuple]:
    """(label, bytes, sharded over devices?) for one device, at batch x data.max_seconds."""
    tr, hid = stage.train, stage.hidden
    batch, seconds = tr.batch_size, stage.data.max_seconds
    audio = int(seconds * AUDIO_TOKENS_PER_S)
    tokens = batch * (audio + PROMPT_TOKENS + int(seconds * LABEL_TOKENS_PER_S))
    t_bytes = DTYPE_BYTES[stage.teacher.dtype]
    s_dtype = stage.student.model.dtype if stage.student.model is not None else "float32"
    s_bytes = DTYPE_BYTES[s_dtype]
    trainable = student.params - (student.encoder_params if stage.freeze_encoder else 0)
    act = compute_bytes / 2  # the 34-byte rule is for 16-bit activations
    s_act = student.decoder_layers * tokens * student.decoder_width * 34 * act
    if not stage.freeze_encoder:
        s_act += student.encoder_layers * batch * audio * student.encoder_width * 34 * act
        s_act += batch * seconds * CONV_ELEMS_PER_S * 2 * compute_bytes
    t_act = 2 * tokens * teacher.decoder_width * 20 * t_bytes / 2  # the teacher computes in its dtype
    if hid.decoder_layers:
        t_act += (teacher.decoder_layers + 1) * tokens * teacher.decoder_width * t_bytes
    n_utts = stage.data.max_items or NOMINAL_UTTERANCES
    cache = n_utts * audio * (teacher.decoder_width + (teacher.encoder_width if hid.encoder else 0)) * t_bytes
    if stage.freeze_encoder:
        cache += n_utts * audio * student.decoder_width * s_bytes
    chunk = min(stage.loss.chunk_size, tokens)
    rows = [(f"student weights ({s_dtype})", student.params * s_bytes, True),
            ("student gradients", trainable * s_bytes, True),
            ("AdamW moments (2 x student dtype)", trainable * 2 * s_bytes, True),
            ("student activations" + (" (decoder)" if stage.freeze_encoder else " (encoder + decoder)"),
             s_act, False),
            (f"teacher weights ({stage.teacher.dtype})", teacher.params * t_bytes, True),
            ("teacher activations (no_grad)", t_act, False),
            (f"cached audio embeddings ({n_utts}{'' if stage.data.max_items else '?'} utterances)", cache, False),
            ("logits, chunked", chunk * teacher.vocab * 4 * 5, False),
            # The fused loss builds the head's gradient itself, then hands it back scaled: 2 copies.
            ("output-head gradient in the loss", 2 * student.vocab * student.decoder_width * s_bytes, False)]
    return rows


def stage_lines(stage, name: str, dirs: dict, device_gib: float, device_counts, host_gib=None) -> list[str]:
    """The report block of one distill-qwen3-asr stage."""
    t_cfg = config_dict(stage.teacher, dirs)
    s_cfg, layers = student_config(stage, t_cfg, dirs)
    teacher, student = shape_of(t_cfg), shape_of(s_cfg, layers)
    dirs[name] = s_cfg
    out = [f"\nstage {name} (distill-qwen3-asr, student init {stage.student.init}"
           f"{', frozen student encoder' if stage.freeze_encoder else ''}):"]
    for who, m in (("teacher", teacher), ("student", student)):
        out.append(f"  {who:8s} qwen3_asr  {m.params / 1e9:6.3f}B params = encoder {m.encoder_params / 1e6:.0f}M "
                   f"({m.encoder_layers} layers, d {m.encoder_width}) + decoder {(m.params - m.encoder_params) / 1e9:.3f}B "
                   f"({m.decoder_layers} layers, hidden {m.decoder_width}), vocab {m.vocab}")
    if teacher.vocab != student.vocab:
        out.append(f"  warning: vocab differs ({teacher.vocab} vs {student.vocab}): the stage will refuse it")
    tr = stage.train
    seconds = stage.data.max_seconds
    per_utt = int(seconds * AUDIO_TOKENS_PER_S) + PROMPT_TOKENS + int(seconds * LABEL_TOKENS_PER_S)
    compute = 2 if tr.dtype in ("bfloat16", "auto") else 4
    out.append(f"  batch {tr.batch_size} x {seconds:g} s clips = {tr.batch_size * per_utt} decoder tokens per "
               f"micro-batch ({int(seconds * AUDIO_TOKENS_PER_S)} audio tokens per clip), compute "
               f"{'bf16 (GPU autocast)' if compute == 2 else 'fp32'}")
    rows = memory_rows(stage, teacher, student, compute)
    totals = table(out, rows, device_counts)
    verdicts = [f"{n} device(s): {'fits' if totals[n] / GIB <= device_gib * 0.9 else 'does NOT fit'}"
                for n in device_counts]
    out.append(f"  verdict vs {device_gib:.0f} GiB/device (90 % usable): " + "; ".join(verdicts))
    if host_gib is not None:  # CPU: no autocast, against this machine's RAM
        cpu_total = sum(b for _, b, _ in memory_rows(stage, teacher, student, cpu_compute_bytes(stage)))
        out.append(f"  on this CPU (no autocast): {cpu_total / GIB:.2f} GiB + the Python runtime vs "
                   f"{host_gib:.1f} GiB available now: {'fits' if cpu_total / GIB <= host_gib * 0.9 else 'does NOT fit'}")
    return out


def table(out: list[str], rows, device_counts) -> dict[int, float]:
    out.append("  " + f"{'GiB per device':38s}" + "".join(f"{f'{n} dev':>10s}" for n in device_counts))
    totals = {n: 0.0 for n in device_counts}
    for label, nbytes, sharded in rows:
        cells = []
        for n in device_counts:
            v = nbytes / n if sharded else nbytes
            totals[n] += v
            cells.append(f"{v / GIB:10.2f}")
        out.append(f"  {label:38s}" + "".join(cells))
    out.append(f"  {'total':38s}" + "".join(f"{totals[n] / GIB:10.2f}" for n in device_counts))
    return totals


def cpu_compute_bytes(stage) -> int:
    """On CPU there is no autocast: the student computes in its own dtype."""
    return DTYPE_BYTES[stage.student.model.dtype if stage.student.model is not None else "float32"]


def estimate_bytes(stage, compute_bytes: int | None = None) -> tuple[int, SpeechShape, SpeechShape]:
    """Total bytes of one device's training state for a stage (for benches choosing a variant);
    compute_bytes None = this CPU's (the student's dtype)."""
    compute_bytes = compute_bytes or cpu_compute_bytes(stage)
    t_cfg = config_dict(stage.teacher, {})
    s_cfg, layers = student_config(stage, t_cfg, {})
    teacher, student = shape_of(t_cfg), shape_of(s_cfg, layers)
    return int(sum(b for _, b, _ in memory_rows(stage, teacher, student, compute_bytes))), teacher, student


def available_gib() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------ Whisper (distill-asr)
def _whisper_shape(cfg: dict):
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(WhisperConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))
    enc = sum(p.numel() for p in model.model.encoder.parameters())
    return sum(p.numel() for p in model.parameters()), enc, model.config


def whisper_lines(stage, name: str, dirs: dict, device_gib: float, device_counts, host_gib=None) -> list[str]:
    """The report block of a distill-asr (Whisper) stage: the student trains from the teacher's
    cached outputs (the teacher is freed first), so the peak is the larger of the cache fill
    (teacher forward) and a training step."""
    t_cfg = config_dict(stage.teacher, dirs)
    spec = stage.student
    if spec.init == "model":
        s_cfg = config_dict(spec.model, dirs)
    else:
        s_cfg = dict(t_cfg)
        if spec.decoder_layers is not None:
            s_cfg["decoder_layers"] = spec.decoder_layers
        if spec.encoder_layers is not None:
            s_cfg["encoder_layers"] = spec.encoder_layers
        if spec.window_seconds is not None:
            s_cfg["max_source_positions"] = spec.window_seconds * 50
    t_params, t_enc, tc = _whisper_shape(t_cfg)
    s_params, s_enc, sc = _whisper_shape(s_cfg)
    dirs[name] = s_cfg
    tr = stage.train
    frames = sc.max_source_positions  # 20 ms each; Whisper pads every clip to its window
    labels = min(sc.max_target_positions, int(stage.data.max_seconds * LABEL_TOKENS_PER_S) + 4)
    trains_encoder = not stage.freeze_encoder or spec.encoder_layers is not None
    trainable = s_params - (0 if trains_encoder else s_enc)
    compute = 2 if tr.dtype in ("bfloat16", "auto") else 4
    act = compute / 2
    b, d = tr.batch_size, sc.d_model
    s_act = sc.decoder_layers * b * labels * d * 34 * act + sc.decoder_layers * b * frames * d * 2 * compute
    if trains_encoder:
        s_act += sc.encoder_layers * b * frames * d * 34 * act
    t_bytes = DTYPE_BYTES[stage.teacher.dtype]
    out = [f"\nstage {name} (distill-asr, Whisper{', frozen encoder' if not trains_encoder else ''}):"]
    for who, (p, e, c) in (("teacher", (t_params, t_enc, tc)), ("student", (s_params, s_enc, sc))):
        out.append(f"  {who:8s} whisper    {p / 1e6:7.1f}M params = encoder {e / 1e6:.1f}M ({c.encoder_layers} layers, "
                   f"{c.max_source_positions // 50} s window) + decoder {(p - e) / 1e6:.1f}M ({c.decoder_layers} layers), "
                   f"d {c.d_model}, vocab {c.vocab_size}")
    out.append(f"  batch {b} x {labels} label tokens x {frames} encoder frames, compute "
               f"{'bf16 (GPU autocast)' if compute == 2 else 'fp32'}; the teacher fills the cache "
               f"({stage.cache.batch_size} clips per forward) and is freed before training")
    rows = [("student weights (fp32)", s_params * 4, True), ("student gradients", trainable * 4, True),
            ("AdamW moments (2 x fp32)", trainable * 8, True),
            ("student activations", s_act, False),
            ("logits (full vocab, label tokens)", b * labels * sc.vocab_size * 4 * 3, False)]
    totals = table(out, rows, device_counts)
    fill = t_params * t_bytes + stage.cache.batch_size * frames * tc.d_model * 20 * t_bytes / 2
    out.append(f"  {'cache fill peak (teacher forward)':38s}" + "".join(f"{fill / GIB:10.2f}" for _ in device_counts))
    verdicts = [f"{n} device(s): {'fits' if max(totals[n], fill) / GIB <= device_gib * 0.9 else 'does NOT fit'}"
                for n in device_counts]
    out.append(f"  verdict vs {device_gib:.0f} GiB/device (90 % usable): " + "; ".join(verdicts))
    if host_gib is not None:
        cpu = max(sum(r[1] for r in rows) + s_act * (4 / compute - 1), fill)
        out.append(f"  on this CPU (fp32): {cpu / GIB:.2f} GiB + the Python runtime vs {host_gib:.1f} GiB "
                   f"available now: {'fits' if cpu / GIB <= host_gib * 0.9 else 'does NOT fit'}")
    return out
