"""Recipe schema: typed, validated before anything heavy loads.

A recipe is YAML data (`yaml.safe_load`) checked by pydantic models with `extra="forbid"`, so a
typo fails at once with the name of the key and the closest valid one. Overrides come from the
command line as `dotted.key=value` (values parsed as YAML scalars); `${dotted.key}` inside strings
is replaced by another value of the recipe (e.g. `${vars.data_dir}`) or an environment variable
(`${env:NAME}`).

This module must stay free of torch/transformers: `distill validate` imports it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.errors import DistillError, closest


# Bounds that turn a slip (`steps=1e29`, `seq_len=1e8`) into an error instead of a run that never
# ends or allocates terabytes; far above any real recipe.
MAX_STEPS = 100_000_000
MAX_SEQ_LEN = 1 << 20
MAX_SEED = 2**31 - 1  # numpy seeds must fit 32 bits; stages add their index to the recipe seed
# A run id and a stage name become directory names: no separators, no leading dot.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class Spec(BaseModel):
    """Base for every recipe block: unknown keys are errors, values are checked on assignment,
    and no float may be NaN/inf (`.nan` slips past a `<= 0` check)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------- models
class ModelRef(Spec):
    """Where a model comes from. A plain string in YAML is shorthand for `{source: <string>}`."""

    source: str | None = Field(
        None,
        description="`asset:<id>` (offline asset), a local HF directory, an artifact directory, "
        "`stage:<name>` (an earlier stage's output) or a HF hub id",
    )
    config: dict[str, Any] | None = Field(
        None,
        description="inline HF config (needs `model_type`), for tiny random models built in-process",
    )
    tokenizer: str | None = Field(
        None, description="tokenizer source if not beside the weights; `bytes` = built-in byte-level"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype (fp32 on CPU: bf16 is ~4x slower there)"
    )
    trust_remote_code: bool = Field(False, description="allow model code from the hub; off unless needed")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.source is None) == (self.config is None):
            raise ValueError("give exactly one of `source` or `config`")
        if self.source is not None and not self.source.strip():
            raise ValueError("the model reference is empty: give asset:<id>, a directory, stage:<name> or a "
                             "hub id")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("an inline `config` needs a `model_type` (e.g. qwen3)")
        return self


# ----------------------------------------------------------------------------------------- data
class TextData(Spec):
    """Text for language-model training: packed into fixed-length token blocks."""

    source: str = Field(
        description="`asset:<id>` (e.g. asset:text-en), a .txt/.jsonl file, or a directory of .txt"
    )
    split: str = Field("train", description="dataset split for assets with splits")
    seq_len: int = Field(128, gt=1, le=MAX_SEQ_LEN, description="tokens per training block")
    max_tokens: int | None = Field(None, gt=0, description="cap on tokens read (None = all)")
    heldout_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of a plain file kept aside for validation loss"
    )


# ------------------------------------------------------------------------------------- training
class TrainSpec(Spec):
    steps: int = Field(100, gt=0, le=MAX_STEPS, description="optimizer steps")
    batch_size: int = Field(8, gt=0, description="sequences per micro-batch, per process")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(3e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up before cosine decay")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a share of peak lr")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip gradients (None = off)")
    checkpoint_every: int = Field(50, gt=0, description="save a resumable checkpoint every N steps")
    log_every: int = Field(10, gt=0, description="write metrics every N steps")
    eval_every: int | None = Field(None, gt=0, description="held-out loss every N steps (None = at end)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="compute dtype: auto = fp32 on CPU, bf16 autocast on GPU"
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="several processes: ddp = a full replica each; fsdp = weights, gradients and "
        "AdamW state sharded over them (FSDP2, one unit per decoder block)"
    )
    global_batch: int | None = Field(
        None, gt=0, description="rows per optimizer step over all processes; when set it replaces "
        "batch_size (= global_batch / (processes x grad_accum), which must divide exactly)"
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSpec:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        if self.global_batch is not None and "batch_size" in self.model_fields_set:
            raise ValueError("give train.batch_size (per process) or train.global_batch (all processes), not both")
        if self.global_batch is not None and self.global_batch % self.grad_accum:
            raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of grad_accum "
                             f"({self.grad_accum})")
        return self


class LossSpec(Spec):
    kind: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="divergence between teacher and student token distributions"
    )
    beta: float = Field(0.5, ge=0, le=1, description="JSD interpolation (0 = forward KL, 1 = reverse)")
    temperature: float = Field(1.0, description="softens both distributions; loss scaled by T^2")
    kd_weight: float = Field(1.0, ge=0, description="weight of the distillation term (0 = CE-only baseline)")
    ce_weight: float = Field(0.0, ge=0, description="weight of next-token cross-entropy on the data")
    top_k: int | None = Field(
        None, gt=0, description="sparse KD over the teacher's top-k tokens (+ one tail bucket); "
        "required by teacher_mode offline, where it is also the cache's k"
    )
    chunk_size: int = Field(256, gt=0, description="tokens per loss chunk (bounds logit memory)")
    hidden_weight: float = Field(0.0, ge=0, description="weight of hidden-state matching over the layer map")
    hidden_loss: Literal["mse", "cosine"] = Field("mse", description="hidden-state distance")

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("temperature must be > 0 (1.0 = unchanged distributions)")
        return value

    @model_validator(mode="after")
    def _some_signal(self) -> LossSpec:
        if self.kd_weight == 0 and self.ce_weight == 0 and self.hidden_weight == 0:
            raise ValueError("all loss weights are 0: set kd_weight, ce_weight or hidden_weight > 0")
        return self


class StudentSpec(Spec):
    init: Literal["config", "layer_map", "moe_merge", "model"] = Field(
        "layer_map",
        description="config = random init from `model.config`; layer_map = copy of the teacher with "
        "evenly spaced layers; moe_merge = dense FFNs merged from a MoE teacher's experts; "
        "model = load `model` as is",
    )
    model: ModelRef | None = Field(None, description="student model (for init=config or model)")
    num_layers: int | None = Field(None, gt=0, description="student depth for init=layer_map/moe_merge")
    layers: list[int] | None = Field(None, description="explicit teacher layer indices to keep, ascending")
    merge: Literal["frequency", "uniform", "top_k"] = Field(
        "frequency", description="expert merge for init=moe_merge"
    )
    merge_top_k: int = Field(2, gt=0, description="experts kept by merge=top_k")
    calibration_blocks: int = Field(
        64, gt=0, description="training blocks the router frequencies are counted on (moe_merge)"
    )

    @model_validator(mode="after")
    def _needs_model(self) -> StudentSpec:
        if self.init in ("config", "model") and self.model is None:
            raise ValueError(f"student init '{self.init}' needs `student.model`")
        if self.init in ("layer_map", "moe_merge") and self.model is not None:
            raise ValueError(f"student init '{self.init}' builds the student from the teacher: "
                             "remove `student.model` (or use init: model)")
        if self.layers is not None:
            if not self.layers or any(i < 0 for i in self.layers):
                raise ValueError("student.layers must be a non-empty list of teacher indices >= 0")
            if sorted(set(self.layers)) != self.layers:
                raise ValueError("student.layers must be ascending without repeats (e.g. [0, 5, 11])")
            if self.num_layers is not None and self.num_layers != len(self.layers):
                raise ValueError(f"student.num_layers={self.num_layers} disagrees with "
                                 f"{len(self.layers)} student.layers: give one of them")
        return self


# --------------------------------------------------------------------------------------- stages
class StageBase(Spec):
    """A stage block. `runner` ("module:function") is where the stage kind is registered: the one
    place that says which code runs it (`distill.stages.get` imports it lazily)."""

    runner: ClassVar[str]
    name: str | None = Field(None, description="stage name (default: <index>-<kind>)")


class TeacherCacheSpec(Spec):
    """Offline teacher: top-k log-probs + ids written once in shards, read back every step."""

    dir: str | None = Field(
        None, description="cache directory (default: <run>/teacher_cache/<stage>); reused across runs "
        "when the teacher hash and data match"
    )
    shard_blocks: int = Field(256, gt=0, description="blocks per shard file (resume granularity)")
    batch_size: int = Field(8, gt=0, description="teacher forward batch while filling the cache")
    format: Literal["compact", "fp16"] = Field(
        "compact", description="compact = Elias-Fano coded ids (~13 bits each for Qwen3) + log-probs as "
        "logp_bits-bit codes below each token's top value, tail mass kept (k=64: 144 bytes/token); "
        "fp16 = 16/32-bit ids + fp16 log-probs (k=64: 256/384)"
    )
    logp_bits: int = Field(4, ge=1, le=8, description="compact: bits per cached log-prob (see "
                           "bench/results/kd_cache_compact.md for bytes/token vs KL)")


class DistillStage(StageBase):
    kind: Literal["distill"]
    runner: ClassVar[str] = "distill.stages.distill:run"
    teacher: ModelRef = Field(description="the model to learn from")
    student: StudentSpec = Field(default_factory=StudentSpec, description="how the student is built")
    data: TextData = Field(description="training text")
    loss: LossSpec = Field(default_factory=LossSpec, description="what the student is trained to match")
    teacher_mode: Literal["online", "offline"] = Field(
        "online", description="online = teacher forward each step; offline = cached top-k log-probs"
    )
    cache: TeacherCacheSpec = Field(default_factory=TeacherCacheSpec, description="offline teacher cache")
    train: TrainSpec = Field(default_factory=TrainSpec, description="optimisation settings")
    init_only: bool = Field(
        False, description="save the initialised student without training (the untrained baseline)"
    )

    @model_validator(mode="after")
    def _mode_rules(self) -> DistillStage:
        if self.teacher_mode == "offline":
            if self.loss.kd_weight and self.loss.top_k is None:
                raise ValueError("teacher_mode offline caches top-k log-probs: set loss.top_k (e.g. 64)")
            if self.loss.hidden_weight:
                raise ValueError("teacher_mode offline caches no hidden states: set loss.hidden_weight: 0 "
                                 "or use teacher_mode online")
        return self


class TrainStage(StageBase):
    """Plain next-token training of a model (e.g. the MoE teacher a MoE->dense recipe distils)."""

    kind: Literal["train"]
    runner: ClassVar[str] = "distill.stages.train:run"
    model: ModelRef = Field(description="the model to train (inline config = from scratch)")
    data: TextData = Field(description="training text")
    router_aux_weight: float | None = Field(
        None, ge=0, description="MoE load-balancing loss weight (None = the model config's coefficient)"
    )
    train: TrainSpec = Field(default_factory=TrainSpec, description="optimisation settings")


class InputStage(StageBase):
    """A stage that transforms a model: the previous stage's output, or `model` when given."""

    model: ModelRef | None = Field(
        None, description="input model (default: the previous stage's artifact)"
    )


class NoiseAugment(Spec):
    """Noisy copies of the training utterances (speech LoRA): coloured noise mixed at given SNRs."""

    kinds: list[Literal["pink", "brown", "white"]] = Field(
        default_factory=lambda: ["pink", "brown"], description="noise colours drawn per copy")
    snr_db: list[float] = Field(default_factory=lambda: [10.0, 0.0],
                                description="signal-to-noise ratios (dB) drawn per copy")
    copies: int = Field(1, gt=0, description="noisy copies per clean utterance")
    keep_clean: bool = Field(True, description="also train on the clean utterances")


class LoraStage(InputStage):
    """Low-rank adapters (peft) on a frozen base: causal LMs on text, Whisper on speech.

    QLoRA = `quantize_base: nf4` (the frozen base in 4-bit NormalFloat via bitsandbytes). The
    objective is CE on the data or KD from `teacher` (the LoRA model is the student)."""

    kind: Literal["lora"]
    runner: ClassVar[str] = "distill.stages.lora:run"
    rank: int = Field(16, gt=0, description="LoRA rank: higher = more capacity and memory")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="module names (suffixes) that get adapters, or all-linear")
    quantize_base: Literal["none", "nf4"] = Field(
        "none", description="nf4 = QLoRA: the frozen base loaded in 4-bit NF4 (bitsandbytes)")
    merge: bool = Field(
        False, description="output merged full weights (the adapter is saved beside as <stage>-adapter); "
        "false = the output is the PEFT adapter")
    objective: Literal["ce", "kd"] = Field("ce", description="ce = next-token / transcript CE; kd = "
                                           "distil `teacher` into the LoRA model")
    teacher: ModelRef | None = Field(None, description="teacher for objective kd (same tokenizer)")
    loss: LossSpec = Field(default_factory=lambda: LossSpec(kd_weight=1.0, ce_weight=0.0),
                           description="KD loss for objective kd (kd_weight, ce_weight, temperature)")
    data: TextData | None = Field(None, description="training text (causal LMs)")
    speech: SpeechData | None = Field(None, description="training utterances (Whisper)")
    noise: NoiseAugment | None = Field(None, description="noisy copies of the utterances (speech only)")
    language: str | None = Field("en", description="Whisper language token (ignored by .en models)")
    train: TrainSpec = Field(default_factory=TrainSpec, description="optimisation settings")

    @model_validator(mode="after")
    def _lora_rules(self) -> LoraStage:
        if (self.data is None) == (self.speech is None):
            raise ValueError("give exactly one of `data` (text, causal LMs) or `speech` (Whisper)")
        if self.noise is not None and self.speech is None:
            raise ValueError("`noise` augments speech: use it with `speech`, not `data`")
        if self.speech is not None and self.speech.pack_seconds is not None:
            raise ValueError("speech.pack_seconds packs clips for a short-window distill-asr student; "
                             "a LoRA stage trains on the clips as they are: remove it")
        if self.objective == "kd" and self.teacher is None:
            raise ValueError("objective kd needs `teacher` (e.g. asset:smollm2-135m-instruct)")
        if self.objective == "ce" and self.teacher is not None:
            raise ValueError("`teacher` is only used by objective kd: set objective: kd or remove it")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is empty: name modules (e.g. [q_proj, v_proj]) or all-linear")
        return self


class PruneStage(InputStage):
    """Structured (depth, width, experts) or unstructured (magnitude, 2:4) pruning of a causal LM.

    Recovery is a following `distill` stage with `student: {init: model, model: stage:<this>}`."""

    kind: Literal["prune"]
    runner: ClassVar[str] = "distill.stages.prune:run"
    method: Literal["depth", "width", "experts", "magnitude", "2:4"] = Field(
        "depth", description="depth = drop layers; width = FFN channels + attention heads by activation "
        "importance (Minitron); experts = MoE experts by router-weighted activation (REAP); "
        "magnitude = unstructured smallest |w|; 2:4 = 2 of every 4 weights")
    keep_layers: list[int] | None = Field(None, description="depth: layer indices kept, ascending")
    num_layers: int | None = Field(None, gt=0, description="depth: layers kept, evenly spaced")
    intermediate_size: int | None = Field(None, gt=0, description="width: FFN channels kept per layer")
    ffn_ratio: float | None = Field(None, gt=0, lt=1, description="width: share of FFN channels removed")
    num_heads: int | None = Field(None, gt=0, description="width: query heads kept (a multiple of the "
                                  "KV heads kept: GQA groups stay equal)")
    num_kv_heads: int | None = Field(None, gt=0, description="width: KV heads (GQA groups) kept")
    num_experts: int | None = Field(None, gt=0, description="experts: experts kept per MoE layer")
    experts_ratio: float | None = Field(None, gt=0, lt=1, description="experts: share of experts removed")
    sparsity: float | None = Field(None, gt=0, lt=1, description="magnitude: share of weights zeroed")
    calibration: TextData | None = Field(None, description="width/experts: text the importance is "
                                         "measured on")
    calibration_blocks: int = Field(64, ge=8, description="calibration blocks used (at least 8)")

    @model_validator(mode="after")
    def _method_fields(self) -> PruneStage:
        given = {k for k in ("keep_layers", "num_layers", "intermediate_size", "ffn_ratio", "num_heads",
                             "num_kv_heads", "num_experts", "experts_ratio", "sparsity")
                 if getattr(self, k) is not None}
        allowed = {"depth": {"keep_layers", "num_layers"},
                   "width": {"intermediate_size", "ffn_ratio", "num_heads", "num_kv_heads"},
                   "experts": {"num_experts", "experts_ratio"}, "magnitude": {"sparsity"}, "2:4": set()}[self.method]
        if given - allowed:
            raise ValueError(f"method {self.method} does not use {sorted(given - allowed)}; its fields: "
                             f"{sorted(allowed) or 'none'}")
        if self.method != "2:4" and not given:
            raise ValueError(f"method {self.method} needs one of {sorted(allowed)}")
        if {"intermediate_size", "ffn_ratio"} <= given or {"num_experts", "experts_ratio"} <= given \
                or {"keep_layers", "num_layers"} <= given:
            raise ValueError("give a size or a ratio, not both")
        if self.keep_layers is not None and (not self.keep_layers or sorted(set(self.keep_layers))
                                             != self.keep_layers or min(self.keep_layers) < 0):
            raise ValueError("keep_layers must be ascending layer indices >= 0 without repeats")
        if self.method in ("width", "experts") and self.calibration is None:
            raise ValueError(f"method {self.method} ranks by activations: give `calibration` text "
                             "(e.g. {source: asset:text-en, seq_len: 256})")
        if self.num_heads is not None and self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads="
                             f"{self.num_kv_heads}: GQA needs every KV head to serve the same number "
                             "of query heads")
        return self


class GateSpec(Spec):
    """Parity gate: the stage scores its input and its output on the same held-out items with the
    evaluation harness and fails the recipe when the output is worse by more than `tolerance`."""

    task: str = Field(description="evaluation task (eval/tasks), e.g. asterisk-en, mmlu-mini-0shot, "
                      "text-en-ppl; its modality must match the model's")
    metric: str | None = Field(None, description="one of the task's metrics (default: its first: "
                               "wer, acc or perplexity), or max_abs_logprob_diff (LMs, perplexity "
                               "task: largest per-token |delta log p| between input and output)")
    tolerance: float = Field(ge=0, description="largest allowed drift towards worse: percentage "
                             "points for wer/cer/acc, the metric's units otherwise (unit: abs), or "
                             "percent of the input's value (unit: rel)")
    unit: Literal["abs", "rel"] = Field("abs", description="abs = absolute drift, rel = percent of "
                                        "the input's value")
    limit: int = Field(50, gt=0, description="held-out items scored (spread over the task)")


class CalibrationSpec(Spec):
    """Representative inputs for static INT8 activation ranges and GPTQ (not the gate's items)."""

    MIN_ITEMS: ClassVar[int] = 8  # fewer gives activation ranges driven by one or two outliers

    source: str = Field(description="asset:tts-en / a speech .jsonl (Whisper) or asset:text-en / a text "
                        "file (causal LMs)")
    split: str = Field("train", description="dataset split (keep it apart from the gate's test items)")
    n: int = Field(32, gt=0, description=f"calibration items (at least {MIN_ITEMS})")
    seq_len: int = Field(128, gt=1, description="tokens per calibration block (text)")

    @field_validator("n")
    @classmethod
    def _enough(cls, value: int) -> int:
        if value < cls.MIN_ITEMS:
            raise ValueError(f"calibration set too small: {value} items, at least {cls.MIN_ITEMS} needed")
        return value


class QuantizeStage(InputStage):
    kind: Literal["quantize"]
    runner: ClassVar[str] = "distill.stages.quantize:run"
    method: Literal["bnb-int8", "bnb-nf4", "torch-dynamic-int8"] = Field(
        "bnb-int8",
        description="bnb-int8 (LLM.int8), bnb-nf4 (4-bit NormalFloat), torch-dynamic-int8 "
        "(torch.ao dynamic INT8 Linear); ONNX Runtime INT8/INT4 is `kind: export` with `quantize:`",
    )
    gate: GateSpec | None = Field(None, description="fail the recipe when the output drifts from the input")


ONNX_QUANT = ("none", "int8-dynamic", "int8-static", "int4")


class ExportStage(InputStage):
    kind: Literal["export"]
    runner: ClassVar[str] = "distill.stages.export:run"
    format: Literal["onnx", "ct2"] = Field(
        "onnx", description="onnx = optimum-onnx graphs (Whisper: encoder + one merged decoder) for "
        "ONNX Runtime; ct2 = CTranslate2 (what faster-whisper and ctranslate2.Generator load; "
        "Whisper and causal LMs)")
    quantization: Literal["int8", "int8_float32", "float32"] | None = Field(
        None, description="ct2 only: CTranslate2 weight type (default int8: int8 weights with per-row "
        "scales; int8 and int8_float32 both run int8 GEMMs with float32 elsewhere on CPU)")
    window_buckets: list[int] = Field(
        default_factory=list, description="ct2 Whisper only: shorter encoder windows (s) the export "
        "also runs. CTranslate2 encodes any length up to the model's window, so each clip is padded "
        "to the shortest bucket that leaves bucket_padding_s after it, and a short clip pays for a "
        "short encoder pass. A bucket is the model with its window cut (train the student for it: "
        "an untrained cut loops when little padding is left); faster-whisper pads to 30 s and "
        "ignores this")
    bucket_padding_s: float = Field(1.0, ge=0, description="ct2 window_buckets: padding (s) a clip "
                                    "keeps after it in a bucket")
    optimize: bool = Field(True, description="ONNX Runtime offline graph optimisation (fusions, "
                           "extended level: portable across CPUs) after quantization")
    quantize: Literal[ONNX_QUANT] = Field(
        "none", description="int8-dynamic = INT8 weights, activations quantized at run time; "
        "int8-static = INT8 weights and activations, ranges from `calibration`; int4 = 4-bit "
        "weight-only MatMulNBits (block-wise), activations fp32")
    per_channel: bool = Field(True, description="INT8: one scale per output channel, not per tensor")
    int4_method: Literal["rtn", "hqq", "gptq"] = Field(
        "rtn", description="int4: rtn = round to nearest; hqq = half-quadratic (no data); "
        "gptq = error-compensating, needs `calibration` (causal LMs only)")
    block_size: int = Field(32, ge=16, le=256, description="int4: weights per scale (power of 2; "
                            "smaller = more accurate, larger file)")
    calibration: CalibrationSpec | None = Field(None, description="data for int8-static and int4 gptq")
    keep_float: list[str] = Field(default_factory=list, description="ONNX node-name substrings left "
                                  "in fp32 by the quantizers, e.g. [down_proj] (LM layers whose inputs "
                                  "carry activation outliers), [lm_head], [embed_tokens]")
    gate: GateSpec | None = Field(None, description="fail the recipe when the output drifts from the input")

    @model_validator(mode="after")
    def _quant_rules(self) -> ExportStage:
        if self.format == "ct2" and (self.quantize != "none" or self.calibration is not None):
            raise ValueError("format ct2 quantizes with `quantization: int8 | int8_float32 | float32` "
                             "(no calibration); `quantize`/`calibration` are for format onnx")
        if self.format == "onnx" and self.quantization is not None:
            raise ValueError("`quantization` is the ct2 weight type; for format onnx use `quantize: "
                             "int8-dynamic | int8-static | int4`")
        if self.window_buckets and self.format != "ct2":
            raise ValueError("window_buckets are run by the CTranslate2 adapter: set format: ct2 or drop them")
        if any(w <= self.bucket_padding_s for w in self.window_buckets):
            raise ValueError(f"every window bucket must exceed bucket_padding_s ({self.bucket_padding_s:g} s), "
                             f"got {self.window_buckets}")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of 2 (16, 32, 64, 128), got {self.block_size}")
        needs = self.quantize == "int8-static" or (self.quantize == "int4" and self.int4_method == "gptq")
        if needs and self.calibration is None:
            what = "int8-static" if self.quantize == "int8-static" else "int4 gptq"
            raise ValueError(f"{what} needs `calibration:` (e.g. {{source: asset:tts-en, n: 32}})")
        return self


class SpeechData(Spec):
    """Utterances for speech training: audio files with reference transcripts."""

    source: str | list[str] = Field(
        description="`asset:<id>` (e.g. asset:tts-en), a .jsonl manifest of {audio_path, text}, or a "
        "list of them (each shuffled by the seed, taken round-robin: max_items takes equally from each)"
    )
    split: str | None = Field("train", description="dataset split (assets with splits or a split column)")
    max_items: int | None = Field(None, gt=0, description="cap on utterances used (None = all)")
    max_seconds: float = Field(30.0, gt=0, le=30, description="drop longer clips (Whisper's window is 30 s)")
    noisy: bool = Field(True, description="include noise-mixed rows (column `noise`) of the split")
    pack_seconds: float | None = Field(
        None, gt=0, le=30, description="concatenate consecutive utterances (0.3 s apart) into clips of at "
        "most this many seconds (distil-whisper's concatenate_audio): a short-window student then trains "
        "on clips that fill its window; keep it 1 s under the window (None = no packing)")


class AsrStudentSpec(Spec):
    """The student's three CPU levers, each usable alone: decoder depth, encoder depth, window."""

    init: Literal["decoder_layer_map", "model"] = Field(
        "decoder_layer_map",
        description="decoder_layer_map = the teacher cut by the levers below (evenly spaced layers, "
        "first and last kept, as distil-whisper); model = load `model` as is",
    )
    decoder_layers: int | None = Field(2, gt=0, description="student decoder depth (None = the teacher's)")
    encoder_layers: int | None = Field(
        None, gt=0, description="student encoder depth (None = the teacher's); a cut encoder trains, "
        "matched to the teacher's encoder output (loss.hidden_weight)")
    window_seconds: int | None = Field(
        None, gt=0, description="encoder window in whole seconds (None = the teacher's 30 s): positional "
        "table sliced to its prefix, processor chunk_length set to match; longer audio is chunked")
    model: ModelRef | None = Field(None, description="student model for init=model")

    @model_validator(mode="after")
    def _needs_model(self) -> AsrStudentSpec:
        if self.init == "model" and self.model is None:
            raise ValueError("student init 'model' needs `student.model`")
        return self


class SpeechCacheSpec(Spec):
    """Teacher outputs (pseudo-labels, encoder states, top-k log-probs) written once in shards."""

    dir: str | None = Field(
        None, description="cache directory (default: <run>/speech_cache); shared by the stages of a "
        "run, refused when written by another teacher or for other data")
    shard_items: int = Field(64, gt=0, description="utterances per shard file (resume granularity)")
    batch_size: int = Field(8, gt=0, description="teacher batch while filling the cache")
    top_k: int = Field(32, gt=0, le=1024, description="teacher log-probs kept per label token")


class AsrDistillStage(StageBase):
    """Speech-recognition distillation (distil-whisper recipe): pseudo-label, filter, KD + CE."""

    kind: Literal["distill-asr"]
    runner: ClassVar[str] = "distill.stages.distill_asr:run"
    teacher: ModelRef = Field(description="the speech model to learn from (Whisper family)")
    student: AsrStudentSpec = Field(default_factory=AsrStudentSpec, description="how the student is built")
    data: SpeechData = Field(description="training utterances")
    language: str | None = Field("en", description="forced language token (None for .en models)")
    pseudo_label: bool = Field(True, description="train on the teacher's greedy transcripts")
    wer_filter: float | None = Field(
        0.1, ge=0, description="drop utterances whose pseudo-label WER vs the reference exceeds "
        "this (None = keep all); distil-whisper calls this filter key to good distillation",
    )
    max_empty_rate: float = Field(
        0.2, ge=0, le=1, description="stop when more than this share of non-empty references get an "
        "empty pseudo-label (silent/broken audio would teach the student to say nothing)")
    freeze_encoder: bool = Field(
        True, description="keep the student encoder frozen (its outputs are cached once: a step costs "
        "decoder passes only); a cut encoder (student.encoder_layers) always trains",
    )
    loss: LossSpec = Field(
        default_factory=lambda: LossSpec(kind="forward_kl", temperature=2.0, kd_weight=1.0, ce_weight=0.8),
        description="KD (teacher top-k, cached) + CE on the (pseudo-)labels + hidden_weight x MSE to the "
        "teacher's encoder output; distil-whisper: 0.8 CE + KL at T=2",
    )
    cache: SpeechCacheSpec = Field(default_factory=SpeechCacheSpec, description="teacher output cache")
    train: TrainSpec = Field(default_factory=TrainSpec, description="optimisation settings")
    init_only: bool = Field(False, description="save the cut student without training (the untrained baseline)")

    @model_validator(mode="after")
    def _asr_rules(self) -> AsrDistillStage:
        if self.loss.hidden_weight and self.freeze_encoder and self.student.encoder_layers is None:
            raise ValueError("loss.hidden_weight matches encoder outputs, but this student's encoder is "
                             "frozen: set freeze_encoder: false or student.encoder_layers")
        if self.loss.top_k is not None and self.loss.top_k > self.cache.top_k:
            raise ValueError(f"loss.top_k {self.loss.top_k} exceeds cache.top_k {self.cache.top_k}")
        window = self.student.window_seconds if self.student.init != "model" else None
        if self.data.pack_seconds and self.data.pack_seconds > (window or 30):
            raise ValueError(f"data.pack_seconds {self.data.pack_seconds:g} exceeds the student's {window or 30}-s "
                             "window: packed clips would be kept out of training; keep it 1 s under the window")
        return self


class HiddenKdSpec(Spec):
    """Hidden-state KD for speech-LLMs: student widths are mapped to the teacher's by learned
    linear projections (1.7B -> 0.6B: encoder 896 -> 1024, decoder 1024 -> 2048), trained with the
    student and dropped after training."""

    encoder: bool = Field(False, description="match the audio encoder's last layer output (after its norm)")
    decoder_layers: list[int] | None = Field(
        None, description="student decoder layers whose outputs are matched, each to the evenly "
        "spaced teacher layer (e.g. [6, 13, 20, 27]); null = none"
    )


class Qwen3AsrDistillStage(StageBase):
    """Speech-LLM distillation: Qwen3-ASR teacher -> Qwen3-ASR student (audio encoder + decoder)."""

    kind: Literal["distill-qwen3-asr"]
    runner: ClassVar[str] = "distill.stages.distill_qwen3_asr:run"
    teacher: ModelRef = Field(description="Qwen3-ASR weights (hub id, directory, asset), or a config "
                              "(.json file / inline) for random-weight twins and real-shape smokes")
    student: StudentSpec = Field(
        description="init config = random weights from `model` (e.g. the 0.6B shape); layer_map = "
        "the teacher with evenly spaced decoder layers (same widths); model = a checkpoint "
        "(e.g. Qwen/Qwen3-ASR-0.6B)"
    )
    data: SpeechData = Field(description="training utterances with reference transcripts")
    language: str = Field("en", description="language forced in the prompt (code or name, e.g. en, zh)")
    context: str = Field("", description="system-turn text context used for labels and training")
    pseudo_label: bool = Field(True, description="train on the teacher's greedy transcripts")
    wer_filter: float | None = Field(
        0.2, ge=0, description="drop utterances whose pseudo-label WER (CER for zh/yue/ja/th) vs the "
        "reference exceeds this (None = keep all)"
    )
    max_new_tokens: int = Field(256, gt=0, description="pseudo-label decode bound per utterance")
    label_batch_size: int = Field(8, gt=0, description="teacher batch while pseudo-labelling")
    labels_dir: str | None = Field(
        None, description="pseudo-label cache (default <run>/pseudo_labels/<stage>); resumable, and "
        "refused when written by another teacher or prompt"
    )
    freeze_encoder: bool = Field(
        False, description="keep the student's audio encoder fixed: its outputs are computed once"
    )
    hidden: HiddenKdSpec = Field(default_factory=HiddenKdSpec, description="hidden states matched "
                                 "when loss.hidden_weight > 0")
    loss: LossSpec = Field(
        default_factory=lambda: LossSpec(kind="forward_kl", temperature=2.0, kd_weight=1.0, ce_weight=0.8),
        description="KD(T) * T^2 + CE on the transcript tokens (+ hidden_weight * hidden-state MSE)",
    )
    train: TrainSpec = Field(default_factory=TrainSpec, description="optimisation settings")

    @model_validator(mode="after")
    def _qwen3_asr_rules(self) -> Qwen3AsrDistillStage:
        from distill import qwen3_asr

        if self.student.init == "moe_merge":
            raise ValueError("student init moe_merge is for MoE LMs: use config, layer_map or model")
        if self.data.pack_seconds is not None:
            raise ValueError("data.pack_seconds packs clips for a short-window Whisper student (distill-asr); "
                             "Qwen3-ASR has no fixed window to fill: remove it")
        qwen3_asr.language_name(self.language)  # DistillError names the supported languages
        wants_hidden = self.hidden.encoder or bool(self.hidden.decoder_layers)
        if bool(self.loss.hidden_weight) != wants_hidden:
            raise ValueError("loss.hidden_weight > 0 and hidden.encoder / hidden.decoder_layers go "
                             "together: set both or neither")
        if self.hidden.encoder and self.freeze_encoder:
            raise ValueError("hidden.encoder trains the student's encoder, but freeze_encoder is true")
        if self.loss.top_k is not None:
            raise ValueError("loss.top_k (cached sparse KD) is not used here: the teacher runs online")
        qwen3_asr.check_pair(self.teacher, self.student.model)
        return self


STAGE_CLASSES = (DistillStage, AsrDistillStage, TrainStage, LoraStage, PruneStage, QuantizeStage,
                 ExportStage, Qwen3AsrDistillStage)
Stage = Annotated[Union[STAGE_CLASSES], Field(discriminator="kind")]
STAGE_BY_KIND: dict[str, type[BaseModel]] = {
    cls.model_fields["kind"].annotation.__args__[0]: cls for cls in STAGE_CLASSES
}
STAGE_KINDS = tuple(STAGE_BY_KIND)


class EvalSpec(Spec):
    suite: str = Field(description="evaluation suite from eval/suites (see `distill ls`)")
    baseline: str | None = Field(
        None, description="stage name, `teacher` or `input` whose record is the recovery baseline"
    )
    include_teacher: bool = Field(
        True, description="also evaluate the first stage's teacher (or input model)"
    )
    limit: int | None = Field(None, gt=0, description="items per task, at most (None = all); a suite "
                              "whose tasks are all smaller runs on all of their items")
    results_dir: str | None = Field(
        None, description="where records go (default: <run dir>/results)"
    )
    more_suites: list[str] = Field(
        default_factory=list, description="suites run on every model after `suite`, into the same "
        "records (e.g. asr-latency: batch-1 speed beside asr-en's batch-8)"
    )


class Recipe(Spec):
    name: str = Field(description="recipe name; part of the run id")
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds python, numpy, torch and data order")
    output_dir: str = Field("runs", min_length=1, description="runs are written to <output_dir>/<run_id>/")
    vars: dict[str, Any] = Field(default_factory=dict, description="values for ${vars.x} interpolation")
    stages: list[Stage] = Field(description="stages in order; each consumes the previous artifact")
    eval: EvalSpec | None = None

    @field_validator("stages")
    @classmethod
    def _non_empty(cls, stages: list) -> list:
        if not stages:
            raise ValueError("`stages` is empty: add at least one stage (kinds: " + ", ".join(STAGE_KINDS) + ")")
        return stages

    @field_validator("name")
    @classmethod
    def _dir_safe_name(cls, name: str) -> str:
        check_name(name, "name")
        return name

    @model_validator(mode="after")
    def _cross_stage_rules(self) -> Recipe:
        for i, stage in enumerate(self.stages):
            if stage.name is not None:
                check_name(stage.name, f"stages.{i}.name")
        names = [stage_name(i, s) for i, s in enumerate(self.stages)]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate stage names: {sorted(dupes)}")
        for i, stage in enumerate(self.stages):
            before = self.stages[i - 1] if i else None
            if stage.kind in ("quantize", "export") and isinstance(before, LoraStage) and not before.merge:
                raise ValueError(
                    f"stage {i} ({stage.kind}) follows a LoRA stage with merge: false; set merge: true"
                )
            if isinstance(stage, LoraStage) and stage.model is None and (
                    isinstance(before, ExportStage)
                    or isinstance(before, QuantizeStage) and before.method == "torch-dynamic-int8"):
                raise ValueError(f"stage {i} (lora) would train on the {before.kind} output of stage "
                                 f"{i - 1}, which is not full-precision or bitsandbytes weights; put the "
                                 "LoRA stage before it (QLoRA: quantize_base: nf4)")
            if i == 0 and isinstance(stage, InputStage) and stage.model is None:
                raise ValueError(f"the first stage is '{stage.kind}' with no input: give it "
                                 "`model:` (e.g. asset:whisper-base) or put a stage before it")
        return self


def check_name(name: str, where: str) -> None:
    """Names that become directories (run id, artifacts/<stage>) must stay inside output_dir."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"{where} {name!r} cannot be a directory name: use letters, digits and . _ + - "
                         "(no '/', no leading dot, not empty)")


def stage_name(index: int, stage: Any) -> str:
    return stage.name or f"{index}-{stage.kind}"


# ----------------------------------------------------------------------------- load / override
_REF = re.compile(r"\$\{([^}]+)\}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`; users write 1e-4) and
    refuses a key given twice in one mapping (plain YAML keeps the last one, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` then overriding keys is fine
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key '{key}' is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _lookup(data: Any, dotted: str) -> Any:
    node = data
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise DistillError(f"interpolation ${{{dotted}}} names nothing in the recipe",
                               "check the key path, e.g. ${vars.data_dir}")
    return node


def interpolate(data: Any, root: Any | None = None, depth: int = 0) -> Any:
    """Replace `${a.b}` (recipe values) and `${env:NAME}` in strings; a whole-string ref keeps type."""
    import os

    root = data if root is None else root
    if depth > 20:
        raise DistillError("interpolation does not terminate", "remove the ${...} cycle")
    if isinstance(data, dict):
        return {k: interpolate(v, root, depth) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, root, depth) for v in data]
    if not isinstance(data, str) or "${" not in data:
        return data
    if re.search(r"\$\{\s*\}", data):
        raise DistillError(f"empty interpolation '${{}}' in {data!r:.80}",
                           "name a value inside it, e.g. ${vars.data_dir} or ${env:HOME}")

    def value(ref: str) -> Any:
        if ref.startswith("env:"):
            name = ref[4:]
            if name not in os.environ:
                raise DistillError(f"environment variable {name} (from ${{{ref}}}) is not set",
                                   f"export {name}=... or remove the reference")
            return os.environ[name]
        return interpolate(_lookup(root, ref), root, depth + 1)

    whole = _REF.fullmatch(data)
    if whole:
        return value(whole.group(1))
    return _REF.sub(lambda m: str(value(m.group(1))), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`stages.0.train.steps=5` -> (['stages','0','train','steps'], 5)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not p for p in key.split(".")) or " " in key:
        raise DistillError(f"bad override '{item}'", "write overrides as dotted.key=value, e.g. seed=1")
    try:
        value = safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, item: str) -> None:
    path, value = parse_override(item)
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise DistillError(f"override '{item}': no list item '{where}'",
                                   f"indices run 0..{len(node) - 1}")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise DistillError(f"override '{item}': '{where}' is a value ({node!r:.40}), not a section",
                               f"override the value itself, e.g. {where}=...")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise DistillError(f"override '{item}': no list item '{last}'", "check the index")
        node[int(last)] = value
    else:
        node[last] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"recipe file '{path}' not found", "check the path (recipes live in recipes/)")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DistillError(f"'{path}' is not a UTF-8 text file (binary data?)",
                           "pass a YAML recipe, e.g. recipes/quickstart.yaml") from None
    except OSError as exc:
        raise DistillError(f"cannot read recipe '{path}': {exc.strerror or exc}", "check the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        if "is given twice" in str(getattr(exc, "problem", "")):
            raise DistillError(f"'{path}': {exc.problem}{where} (YAML would keep the last one silently)",
                               "keep one of them") from None
        tag = re.search(r"tag '?(!!?python/[\w/.:-]*|tag:yaml.org,2002:python/[\w/.:-]*)", str(exc))
        if tag:
            name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise DistillError(f"'{path}' uses the Python-object YAML tag {name}{where}; recipes "
                               "are read with safe loading, which never builds Python objects",
                               "write a plain value instead of the tag") from None
        raise DistillError(f"'{path}' is not valid YAML{where}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise DistillError(f"'{path}' does not hold a mapping of recipe keys",
                           "start the file with keys such as name:, stages:")
    return data


def _is_tag(loc: tuple, i: int) -> bool:
    """Whether loc[i] is the stage-kind tag pydantic inserts after a list index (a kind such as
    `train` can also be a field name, so position decides, not spelling)."""
    return loc[i] in STAGE_KINDS and i > 0 and isinstance(loc[i - 1], int)


def _model_for(loc: tuple) -> type[BaseModel] | None:
    """The schema class a validation error location points into (for 'did you mean' hints)."""
    model: Any = Recipe
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int) or model is None:
            continue
        if _is_tag(loc, i):  # discriminated-union tag in the location
            model = STAGE_BY_KIND[part]
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model


def _unwrap(annotation: Any) -> Any:
    """The BaseModel inside Optional[...] / list[...] annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def explain(exc: ValidationError, source: str) -> DistillError:
    """Turn pydantic's report into one line: where, what, and how to fix it."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = ".".join(str(p) for i, p in enumerate(loc) if not _is_tag(loc, i)) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        model = _model_for(loc)
        valid = list(model.model_fields) if model is not None else []
        guess = closest(key, valid)
        fix = f"did you mean '{guess}'?" if guess else "remove it"
        if valid:
            fix += f"{' ' if guess else '; '}valid keys here: {', '.join(valid)}"
        return DistillError(f"{source}: unknown key '{where}'", fix)
    if err["type"] == "union_tag_invalid":
        bad = err.get("input", {}).get("kind") if isinstance(err.get("input"), dict) else None
        return DistillError(f"{source}: {where}: unknown stage kind '{bad}'",
                            f"use one of: {', '.join(STAGE_KINDS)}")
    if err["type"] == "union_tag_not_found":
        return DistillError(f"{source}: {where}: stage has no `kind`",
                            f"add kind: one of {', '.join(STAGE_KINDS)}")
    if err["type"] == "missing":
        return DistillError(f"{source}: missing required key '{where}'", "add it to the recipe")
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = f" (got {got!r:.80})" if got is not None and not isinstance(got, (dict, list)) else ""
    at = f"{where}: " if loc else ""  # a cross-field rule names its own keys
    return DistillError(f"{source}: {at}{msg}{shown}", "fix this value in the recipe or override")


def build(data: dict, overrides: list[str] | None = None, source: str = "recipe") -> Recipe:
    """Apply overrides, interpolate, validate. Raises DistillError with one clear line."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides or []:
        apply_override(data, item)
    data = interpolate(data)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, source) from None


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    return build(read_yaml(path), overrides, source=str(path))


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML: loading it back gives an equal Recipe."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_unset=False), sort_keys=False)


def sha256(recipe: Recipe) -> str:
    return hashlib.sha256(dump(recipe).encode()).hexdigest()


# ------------------------------------------------------------------------ reference checks
def looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((".txt", ".jsonl", ".json")) \
        or source.count("/") > 1


def check_references(r: Recipe, strict: bool = False) -> list[str]:
    """Fail early on references that cannot work; return notes about ones that may later.

    Errors: an unknown `asset:` id, a local path that does not exist, a `stage:` that is not an
    earlier stage, and everything `distill.checks.check` finds (output dir, stage code, data, eval
    block, model configs vs the recipe). Notes: a known asset that is not installed yet.
    Runs before anything is written, and without torch, so `validate` catches these too. A
    missing path under `output_dir` (an earlier run's output) is only a note unless `strict`
    (as `distill run` calls it: by then it must exist).
    """
    notes: list[str] = []
    earlier: list[str] = []

    def check(source: str | None, where: str) -> None:
        if source is None:
            return
        if source.startswith("asset:"):
            notes.extend(_check_asset(source.removeprefix("asset:"), where, strict))
        elif source.startswith("stage:"):
            name = source.removeprefix("stage:")
            if name not in earlier:
                raise DistillError(f"{where}: '{source}' is not an earlier stage",
                                   f"earlier stages: {', '.join(earlier) or '(none)'}")
        elif looks_local(source) and not Path(source).expanduser().exists():
            if not strict and Path(source).is_relative_to(r.output_dir):  # an earlier run's output
                notes.append(f"{where}: '{source}' does not exist yet (output of an earlier run?)")
                return
            raise DistillError(f"{where}: path '{source}' does not exist",
                               "fix the path (relative paths start from the current directory)")

    for i, stage in enumerate(r.stages):
        where = f"stages.{i}"
        for field in ("teacher", "model", "data", "speech", "calibration"):
            value = getattr(stage, field, None)
            if value is not None:
                for source in value.source if isinstance(value.source, list) else [value.source]:
                    check(source, f"{where}.{field}")
        student = getattr(stage, "student", None)
        if student is not None and student.model is not None:
            check(student.model.source, f"{where}.student.model")
        earlier.append(stage_name(i, stage))
    from distill import checks  # output dir, stage code, data, eval block, model configs (torch-free)

    checks.check(r, strict)
    from distill import preflight  # compression stages vs their model's config (torch-free)

    preflight.check(r, strict)
    from distill import gate  # quantize/export inputs and parity gates (torch-free)

    gate.check_recipe(r, strict)
    return notes


def _check_asset(asset_id: str, where: str, strict: bool = False) -> list[str]:
    """An unknown id is an error; one not installed is a note for `validate`, an error for `run`
    (which would otherwise fail after creating its run directory)."""
    try:
        from distill.assets import ASSETS
    except ImportError:  # asset registry unavailable: leave the check to load time
        return []
    if asset_id not in ASSETS:
        from distill.errors import unknown_choice

        err = unknown_choice("asset", asset_id, ASSETS)
        raise DistillError(f"{where}: {err.problem}", err.fix)
    from distill.assets import cache_dir

    cache_dir()  # a cache that is a file is an error, not "not installed yet"
    try:
        from distill.assets import asset_path

        asset_path(asset_id)
    except DistillError as exc:
        if strict:
            raise DistillError(f"{where}: {exc.problem}", exc.fix) from None
        return [f"{where}: asset '{asset_id}' is not installed yet (distill assets install {asset_id})"]
    return []
