"""One adapter interface for every artifact kind: the task code never sees the backend.

A loader turns a model directory into a `CausalLM` (log-probs + generate), a `SpeechToText`
(Whisper) or a `qwen3_asr.Qwen3ASR` (both: transcribe). The manifest's `adapter` field picks the
loader from ADAPTERS; the registry is a dict literal so `distill ls` can print it. Heavy libraries
are imported inside the loaders.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.dtypes import bnb_dtype, dtype_name
from distill.errors import DistillError, unknown_choice
from distill.evaluation import longform

logger = logging.getLogger(__name__)


@dataclass
class CausalLM:
    """A causal LM behind the two calls the LM tasks need. backend/dtype go into every record."""

    model: Any
    tokenizer: Any
    backend: str  # torch-eager | onnxruntime | bitsandbytes | torch-dynamic-quant
    dtype: str
    device: str = "cpu"
    modality: str = "lm"
    max_length: int = 2048
    _accepts: set = field(default_factory=set)

    def __post_init__(self):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._accepts = set(inspect.signature(base.forward).parameters)
        cfg = getattr(self.model, "config", None)
        self.max_length = int(getattr(cfg, "max_position_embeddings", None) or 2048)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    def _forward(self, ids, mask, keep_last: bool):
        import torch

        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if "position_ids" in self._accepts:
            # Left padding: positions must count real tokens only, or every padded row shifts.
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0).to(self.device)
        if keep_last and "logits_to_keep" in self._accepts:
            kwargs["logits_to_keep"] = 1  # skip the [B, T, V] head matmul we would throw away
        if "use_cache" in self._accepts:
            kwargs["use_cache"] = False
        with torch.inference_mode():
            return self.model(**kwargs).logits.float()

    def last_logprobs(self, seqs: list[list[int]]):
        """seqs: B token lists -> [B, V] log-probs of the next token after each full sequence.

        Left-padded so the last real token sits in the last column for every row.
        """
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        logits = self._forward(ids, mask, keep_last=True)[:, -1, :]
        return torch.log_softmax(logits, dim=-1).cpu()

    @property
    def can_share_prefix(self) -> bool:
        """Eager torch models take a KV cache; ORT/bnb/quantized paths are scored in full."""
        return self.backend == "torch-eager" and "past_key_values" in self._accepts

    def prefix_cache(self, prefix: list[int]):
        """KV cache of a token prefix (batch 1), for `prefixed_last_logprobs`."""
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([prefix], device=self.device),
                              use_cache=True).past_key_values

    def prefixed_last_logprobs(self, cache, n_prefix: int, suffixes: list[list[int]]):
        """[B, V] next-token log-probs after prefix + suffix[b], reusing the prefix's KV cache.

        Few-shot prompts of one subject share their header and exemplars: that prefix is run once
        and every question then costs only its own tokens. Suffixes are right-padded: under the
        causal mask real tokens never see the padding.
        """
        import copy

        import torch

        width = max(len(s) for s in suffixes)
        ids = torch.full((len(suffixes), width), self.pad_id, dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(s)
        batch_cache = copy.deepcopy(cache)  # the forward appends to the cache in place
        batch_cache.batch_repeat_interleave(len(suffixes))
        positions = torch.arange(n_prefix, n_prefix + width).expand(len(suffixes), width)
        mask = torch.ones((len(suffixes), n_prefix + width), dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), past_key_values=batch_cache,
                                attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), use_cache=True).logits.float()
        last = torch.tensor([len(s) - 1 for s in suffixes], device=logits.device)
        picked = logits[torch.arange(len(suffixes), device=logits.device), last]
        return torch.log_softmax(picked, dim=-1).cpu()

    def token_logprobs(self, seqs: list[list[int]]) -> list:
        """seqs: B token lists -> B tensors [len-1]: log P(seq[t] | seq[:t]) for t >= 1.

        Right-padded: real positions never attend to padding under a causal mask.
        """
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = self._forward(ids, mask, keep_last=False).cpu()
        out = []
        for i, s in enumerate(seqs):
            # Row by row, gather minus logsumexp: no second [B, T, V] log-softmax tensor.
            row = logits[i, : len(s) - 1]
            target = ids[i, 1: len(s)]
            out.append(row.gather(-1, target[:, None])[:, 0] - torch.logsumexp(row, dim=-1))
        return out

    def generate(self, ids, mask, new_tokens: int):
        """Greedy decode of exactly `new_tokens` tokens (for decode-speed timing)."""
        import torch

        with torch.inference_mode():
            return self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                num_beams=1, pad_token_id=self.pad_id)


@dataclass
class SpeechToText:
    """A Whisper-style encoder-decoder behind `transcribe` (greedy, batched)."""

    model: Any
    processor: Any
    backend: str
    dtype: str
    device: str = "cpu"
    modality: str = "asr"
    multilingual: bool = False
    max_new_tokens: int = 128

    @property
    def max_audio_seconds(self) -> float:
        return getattr(self.processor.feature_extractor, "chunk_length", 30)  # a cut student: < 30

    def transcribe(self, audios: list, language: str = "en", sampling_rate: int = 16000,
                   context: str | None = None, long_audio: str = "chunk") -> list[str]:
        """audios: B float32 mono arrays at `sampling_rate` -> B raw (un-normalised) texts.

        context: Whisper's prompt (previous-text tokens); long_audio: `chunk` decodes audio past
        the window (Whisper's sequential long-form rule for a 30-s model, pieces cut at pauses for
        a cut window: distill.evaluation.longform), `error` refuses it."""
        window_s = self.max_audio_seconds
        longest = max(len(a) for a in audios) / sampling_rate
        if long_audio == "error" and longest > window_s:
            raise DistillError(f"audio of {longest:.1f} s exceeds this Whisper's {window_s:g} s window and "
                               "long_audio is 'error'", "set long_audio: chunk or cut the audio")
        if longest > window_s and window_s < longform.WHISPER_WINDOW_S:
            return longform.transcribe_in_pieces(
                audios, int(window_s * sampling_rate), lambda pieces: [
                    self._text(t) for t in self._generate(pieces, language, sampling_rate, context, long_form=False)],
                sampling_rate)
        return [self._text(t) for t in self._generate(audios, language, sampling_rate, context,
                                                      long_form=longest > window_s)]

    def _text(self, ids: list[int]) -> str:
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate(self, audios: list, language: str, sampling_rate: int, context: str | None,
                  long_form: bool) -> list[list[int]]:
        """-> per audio, its generated text tokens (specials and timestamps dropped)."""
        import torch

        kwargs: dict[str, Any] = {"num_beams": 1, "do_sample": False}
        if context:  # <|startofprev|> + the text before <|startoftranscript|>; not part of the output
            kwargs["prompt_ids"] = self.processor.get_prompt_ids(context.strip(), return_tensors="pt").to(self.device)
        if long_form:
            # Past the 30-s window: Whisper's sequential long-form decoding (timestamps drive the
            # window shifts) instead of silently truncating the audio.
            feats = self.processor.feature_extractor(
                audios, sampling_rate=sampling_rate, return_tensors="pt", truncation=False,
                padding="longest", return_attention_mask=True)
            kwargs.update(attention_mask=feats.attention_mask.to(self.device), return_timestamps=True,
                          condition_on_prev_tokens=False)
        else:
            feats = self.processor.feature_extractor(audios, sampling_rate=sampling_rate,
                                                     return_tensors="pt")
            kwargs["max_new_tokens"] = self.max_new_tokens
        if self.multilingual:
            # Forced, not detected: detection errors would show up as WER we did not ask about.
            kwargs.update(language=language, task="transcribe")
        elif language != "en":
            raise DistillError(f"this English-only model cannot transcribe language '{language}'",
                               "use a multilingual model for this suite")
        features = feats.input_features.to(self.device)
        if self.backend == "torch-eager":
            features = features.to(next(self.model.parameters()).dtype)
        with torch.inference_mode():
            out = self.model.generate(features, **kwargs)
        eot = self.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # specials follow it
        return [[int(t) for t in row if 0 <= int(t) < eot] for row in out]


def _config(path: str) -> dict:
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def is_speech(path: str) -> bool:
    return _config(path).get("model_type") in ("whisper", "qwen3_asr")


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _whisper(model, path: str, backend: str, device: str) -> SpeechToText:
    from distill.whisper_tokenizer import whisper_processor

    processor = whisper_processor(path)  # a `context` prompt encodes as the model was trained
    gen = getattr(model, "generation_config", None)
    multi = getattr(gen, "is_multilingual", None)
    if multi is None:
        multi = len(processor.tokenizer) >= 51865  # English-only vocabularies are one token shorter
    if backend == "bitsandbytes":  # its float32 convs/embeddings would otherwise name the dtype
        dtype = bnb_dtype(model)
    else:
        dtype = "float32" if backend == "onnxruntime" else dtype_name(model)
    return SpeechToText(model=model, processor=processor, backend=backend, dtype=dtype,
                        device=device, multilingual=bool(multi))


def load_hf_causal_lm(path: str, device: str = "cpu", manifest=None) -> CausalLM:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return CausalLM(model=model, tokenizer=_tokenizer(path), backend="torch-eager",
                    dtype=dtype_name(model), device=device)


def load_hf_whisper(path: str, device: str = "cpu", manifest=None) -> SpeechToText:
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return _whisper(model, path, "torch-eager", device)


def load_qwen3_asr(path: str, device: str = "cpu", manifest=None):
    """Qwen3-ASR through the qwen-asr package's classes; same `transcribe` contract as SpeechToText."""
    from distill.evaluation import qwen3_asr

    return qwen3_asr.load(path, device)


def _load_speech(path: str, device: str = "cpu"):
    """fp32 speech model of either family, by config model_type (PEFT bases, dynamic quant)."""
    is_qwen = _config(path).get("model_type") == "qwen3_asr"
    return (load_qwen3_asr if is_qwen else load_hf_whisper)(path, device)


def _base_of_adapter(path: str, manifest) -> str:
    from distill.evaluation.loading import resolve_model

    extra = getattr(manifest, "extra", None) or {}
    base = extra.get("base") or json.loads((Path(path) / "adapter_config.json").read_text()).get(
        "base_model_name_or_path")
    if not base:
        raise DistillError(f"PEFT adapter '{path}' does not name its base model",
                           "set base_model_name_or_path in adapter_config.json or manifest extra.base")
    return resolve_model(base).source


def load_peft_adapter(path: str, device: str = "cpu", manifest=None):
    from peft import PeftModel

    base_path = _base_of_adapter(path, manifest)
    quant = ((getattr(manifest, "extra", None) or {}).get("base_quantization"))
    if quant:  # QLoRA: evaluate the adapter on the quantized base it was trained on
        from types import SimpleNamespace

        base = load_bnb(base_path, device, SimpleNamespace(extra={"quantization": quant}))
    else:
        base = (_load_speech if is_speech(base_path) else load_hf_causal_lm)(base_path, device)
    model = PeftModel.from_pretrained(base.model, path).eval()
    base.model = model
    if isinstance(base, CausalLM):
        base.__post_init__()
    return base


def _bnb_config(path: str, manifest):
    import torch
    from transformers import BitsAndBytesConfig

    q = ((getattr(manifest, "extra", None) or {}).get("quantization")) or {}
    if q.get("bits") == 8 or q.get("load_in_8bit"):
        return BitsAndBytesConfig(load_in_8bit=True)
    if q.get("bits") == 4 or q.get("load_in_4bit"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.get("quant_type", "nf4"),
                                  bnb_4bit_compute_dtype=torch.float32,
                                  bnb_4bit_use_double_quant=bool(q.get("double_quant", False)))
    raise DistillError(f"bnb artifact '{path}' has no quantization_config in config.json and no "
                       "manifest extra.quantization {bits: 4|8}", "re-run the quantize stage")


def load_bnb(path: str, device: str = "cpu", manifest=None):
    """bitsandbytes quantizes at load time: a saved quantization_config or manifest settings."""
    import torch
    from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration

    config = _config(path)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if "quantization_config" not in config:
        kwargs["quantization_config"] = _bnb_config(path, manifest)
    if device == "cpu":
        kwargs["device_map"] = {"": "cpu"}
    if config.get("model_type") == "qwen3_asr":
        from distill.evaluation import qwen3_asr

        asr = qwen3_asr.load(path, device, "bitsandbytes", kwargs.get("quantization_config"))
        asr.dtype = bnb_dtype(asr.model)  # its float32 convs/embeddings would otherwise name the dtype
        return asr
    if is_speech(path):
        model = WhisperForConditionalGeneration.from_pretrained(path, **kwargs).eval()
        return _whisper(model, path, "bitsandbytes", device)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    return CausalLM(model=model, tokenizer=_tokenizer(path), backend="bitsandbytes", dtype=bnb_dtype(model),
                    device=device)


def load_torch_dynamic_quant(path: str, device: str = "cpu", manifest=None):
    """torch.ao dynamic INT8 Linear. The quantize stage saves the quantized state dict
    (`model.int8.pt`): the module tree is built from config.json, given the same dynamic-INT8
    structure, then loaded (weights_only). Older artifacts hold fp32 weights quantized here."""
    import torch

    if device != "cpu":
        raise DistillError("torch dynamic quantization runs on CPU only", "use --device cpu")
    packed = Path(path) / "model.int8.pt"
    if packed.is_file():
        from transformers import AutoConfig, AutoModelForCausalLM, WhisperForConditionalGeneration

        config = AutoConfig.from_pretrained(path)
        cls = WhisperForConditionalGeneration if config.model_type == "whisper" else AutoModelForCausalLM
        model = cls.from_config(config) if cls is AutoModelForCausalLM else cls(config)
        model = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
        model.load_state_dict(torch.load(packed, weights_only=True))
        if config.model_type == "whisper":
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(path)
            inner = _whisper(model, path, "torch-dynamic-quant", "cpu")
        else:
            inner = CausalLM(model=model, tokenizer=_tokenizer(path), backend="torch-dynamic-quant",
                             dtype="qint8-dynamic")
    else:
        inner = (_load_speech if is_speech(path) else load_hf_causal_lm)(path, "cpu")
        inner.model = torch.ao.quantization.quantize_dynamic(inner.model, {torch.nn.Linear},
                                                             dtype=torch.qint8)
    inner.backend, inner.dtype = "torch-dynamic-quant", "qint8-dynamic"
    return inner


def onnx_dtype(path: str, manifest=None) -> str:
    """What an ONNX artifact computes in, from its manifest (`extra.precision`, written by the
    export stage); older exports are named by their file names."""
    precision = ((getattr(manifest, "extra", None) or {}).get("precision")) or {}
    if precision.get("dtype"):
        return precision["dtype"]
    quantized = any("quantized" in p.name or "int8" in p.name for p in Path(path).glob("*.onnx"))
    q = ((getattr(manifest, "extra", None) or {}).get("quantization")) or {}
    return "int8-dynamic" if quantized or q.get("method") == "ort-int8-dynamic" else "float32"


def load_onnx(path: str, device: str = "cpu", manifest=None):
    """optimum-onnx ORTModel: decoder-only LMs and Whisper-style speech seq2seq. ORT gets as many
    intra-op threads as torch has (the harness's --threads), so the two compare like for like."""
    import onnxruntime as ort
    import torch

    provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    dtype = onnx_dtype(path, manifest)
    if is_speech(path):
        from optimum.onnxruntime import ORTModelForSpeechSeq2Seq

        model = ORTModelForSpeechSeq2Seq.from_pretrained(path, provider=provider, session_options=options)
        asr = _whisper(model, path, "onnxruntime", device)
        asr.dtype = dtype
        return asr
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(path, provider=provider, session_options=options)
    return CausalLM(model=model, tokenizer=_tokenizer(path), backend="onnxruntime", dtype=dtype,
                    device=device)


def load_ct2(path: str, device: str = "cpu", manifest=None):
    """CTranslate2 export (Whisper or causal LM), in its own module: distill.evaluation.ct2_models."""
    from distill.evaluation import ct2_models

    return ct2_models.load_ct2(path, device, manifest)


ADAPTERS = {
    "hf-causal-lm": load_hf_causal_lm,
    "hf-whisper": load_hf_whisper,
    "qwen3-asr": load_qwen3_asr,
    "peft-adapter": load_peft_adapter,
    "bnb": load_bnb,
    "torch-dynamic-quant": load_torch_dynamic_quant,
    "onnx": load_onnx,
    "ct2": load_ct2,
}


def loader_for(ref):
    """The loader of a resolved ModelRef (its manifest's `adapter`): where a model reference meets
    this registry, so model resolution (loading.py) needs no import of it."""
    if ref.adapter not in ADAPTERS:
        raise unknown_choice(f"adapter of '{ref.artifact_id}'", ref.adapter, ADAPTERS)
    return ADAPTERS[ref.adapter]
