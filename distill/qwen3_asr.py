"""Qwen3-ASR, one home for training and evaluation: load or build, prompt, transcribe, forward.

Qwen3-ASR = AuT audio encoder (conv 8x downsampling of 128-mel features, transformer, projection
to the decoder width) + a Qwen3 decoder; the `qwen-asr` package (0.0.6) supplies the classes for
transformers 4.57, which has no native qwen3_asr. Importing it takes 10-20 s, so nothing here
imports it (or torch) at module level: `distill validate` reads LANGUAGES and `check_source`.

The package's transcription path (qwen_asr/inference/qwen3_asr.py) renders a chat prompt with a
system turn (the optional text context) and one audio placeholder, forces the language by
appending `language <Name><asr_text>` to the assistant turn, decodes greedily and passes the
output through `parse_asr_output`. `Qwen3ASR.transcribe` repeats those steps, so a record's WER is
the WER a package user gets, and training targets follow the same layout (the package's SFT
script: prompt + transcript + <|im_end|>, loss on the transcript and <|im_end|> only).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.dtypes import torch_dtype
from distill.errors import DistillError

INSTALL = "pip install -c requirements/constraints.txt qwen-asr==0.0.6"
# Past this the package cuts audio at quiet points and joins the pieces' texts
# (qwen_asr.inference.utils.MAX_ASR_INPUT_SECONDS; a test checks the two agree).
MAX_AUDIO_SECONDS = 1200.0
# Task YAMLs name languages by ISO 639 code; Qwen3-ASR's prompt wants its English names
# (qwen_asr.inference.utils.SUPPORTED_LANGUAGES; a test checks the two agree).
LANGUAGES = {
    "zh": "Chinese", "en": "English", "yue": "Cantonese", "ar": "Arabic", "de": "German",
    "fr": "French", "es": "Spanish", "pt": "Portuguese", "id": "Indonesian", "it": "Italian",
    "ko": "Korean", "ru": "Russian", "th": "Thai", "vi": "Vietnamese", "ja": "Japanese",
    "tr": "Turkish", "hi": "Hindi", "ms": "Malay", "nl": "Dutch", "sv": "Swedish", "da": "Danish",
    "fi": "Finnish", "pl": "Polish", "cs": "Czech", "fil": "Filipino", "tl": "Filipino",
    "fa": "Persian", "el": "Greek", "ro": "Romanian", "hu": "Hungarian", "mk": "Macedonian",
}
# Qwen3-ASR's tokenizer = the Qwen3 one plus these; `<asr_text>` is not special, so it survives
# skip_special_tokens and the package's parser can split "language X<asr_text>text" on it.
AUDIO_TOKENS = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                "audio_eos_token": "<|audio_end|>"}
# The layout of Qwen3-ASR's chat template, for twins built around a bare tokenizer (released
# checkpoints ship their own): system turn (context), user turn = one audio placeholder.
CHAT_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' }}"
    "{%- if m.content is string %}{{- m.content }}{%- else %}{%- for c in m.content %}"
    "{%- if c.type == 'audio' %}{{- '<|audio_start|><|audio_pad|><|audio_end|>' }}"
    "{%- elif c.type == 'text' %}{{- c.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# ------------------------------------------------------------------------ torch-free checks
def language_name(language: str) -> str:
    """'en' | 'English' | 'english' -> 'English'; anything Qwen3-ASR cannot force is an error."""
    key = language.strip()
    name = LANGUAGES.get(key.lower()) or next((n for n in LANGUAGES.values() if n.lower() == key.lower()), None)
    if name is None:
        raise DistillError(f"Qwen3-ASR cannot be forced to transcribe language '{language}'",
                           f"use one of: {', '.join(sorted(LANGUAGES))} (or their names)")
    return name


def language_code(language: str) -> str:
    name = language_name(language)
    return next(code for code, n in LANGUAGES.items() if n == name)


def require_package() -> None:
    """Fail with the install command when qwen-asr is missing (checked without importing it)."""
    if importlib.util.find_spec("qwen_asr") is None:
        raise DistillError("the qwen-asr package is not installed (Qwen3-ASR's model classes)", INSTALL)


def source_config(source: str | None) -> dict | None:
    """config.json of a local directory or `asset:` (no torch); None for hub ids and .json configs."""
    if source is None or source.startswith("stage:"):
        return None
    if source.endswith(".json"):
        path = Path(source).expanduser()
        return json.loads(path.read_text()) if path.is_file() else None
    if source.startswith("asset:"):
        try:
            from distill.assets import asset_path

            path = Path(asset_path(source.removeprefix("asset:")))
        except DistillError:
            return None
    else:
        path = Path(source).expanduser()
    cfg = path / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else None


def text_vocab(config: dict) -> int | None:
    """Decoder vocabulary size from a Qwen3-ASR config dict (151,936 for the released models)."""
    text = (config.get("thinker_config") or {}).get("text_config") or {}
    return text.get("vocab_size")


def _ref_config(ref) -> dict | None:
    if ref is None:
        return None
    return ref.config if ref.config is not None else source_config(ref.source)


def check_pair(teacher, student) -> None:
    """Recipe check (no torch, no weights): the package is installed, both models are Qwen3-ASR
    where their configs are readable, and their vocabularies agree (logit KD compares ids)."""
    require_package()
    configs = {}
    for who, ref in (("teacher", teacher), ("student", student)):
        cfg = _ref_config(ref)
        if cfg is None:
            continue
        if cfg.get("model_type") != "qwen3_asr":
            name = ref.source or "inline config"
            raise DistillError(f"{who} '{name}' is a {cfg.get('model_type')} model but distill-qwen3-asr "
                               "distils Qwen3-ASR into Qwen3-ASR: the families differ",
                               "use Qwen3-ASR teacher and student (Whisper pairs: kind distill-asr)")
        configs[who] = cfg
    vocabs = {who: text_vocab(cfg) for who, cfg in configs.items()}
    if len(vocabs) == 2 and None not in vocabs.values() and vocabs["teacher"] != vocabs["student"]:
        raise DistillError(f"student vocab {vocabs['student']} != teacher vocab {vocabs['teacher']}: "
                           "token ids would not mean the same text", "give the student the teacher's "
                           "vocab_size (Qwen3-ASR 1.7B and 0.6B both use 151,936)")


def check_dir(path: str) -> None:
    """A local directory must hold a qwen3_asr config; checked before the slow package import."""
    if not Path(path).is_dir():
        return  # a hub id: from_pretrained resolves it
    cfg = Path(path) / "config.json"
    model_type = json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None
    if model_type != "qwen3_asr":
        raise DistillError(f"'{path}' is not a Qwen3-ASR model directory (config.json model_type: "
                           f"{model_type})", "point at a directory saved by "
                           "Qwen3ASRForConditionalGeneration.save_pretrained plus its processor")


# ------------------------------------------------------------------------------ load / build
def classes():
    """The package's transformers classes (importing it registers qwen3_asr with the Auto classes)."""
    require_package()
    import qwen_asr  # noqa: F401 - registers qwen3_asr with transformers' Auto classes
    from qwen_asr.core import transformers_backend

    return transformers_backend


def build_processor(tokenizer):
    """Processor around a bare Qwen3 (or byte-level) tokenizer made with
    `extra_special_tokens=AUDIO_TOKENS`: Whisper 128-mel features, the audio tokens, `<asr_text>`
    and the chat layout. For twins; released checkpoints ship theirs."""
    from tokenizers import AddedToken
    from transformers import WhisperFeatureExtractor

    tb = classes()
    tokenizer.add_special_tokens({"additional_special_tokens": list(AUDIO_TOKENS.values())},
                                 replace_additional_special_tokens=False)
    tokenizer.add_tokens([AddedToken("<asr_text>", special=False, normalized=False)])
    return tb.Qwen3ASRProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128),
                                tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def byte_tokenizer():
    """Byte-level Qwen2TokenizerFast with Qwen's chat specials: a tiny vocabulary for twins."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    chars = bytes_to_unicode()
    bpe = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    return Qwen2TokenizerFast(tokenizer_object=bpe, extra_special_tokens=AUDIO_TOKENS, unk_token=None,
                              eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              additional_special_tokens=["<|im_start|>"])


def twin_processor(tokenizer: str | None):
    """`bytes` (default) or a Qwen3 tokenizer directory / asset -> processor for a built model."""
    if tokenizer in (None, "bytes"):
        return build_processor(byte_tokenizer())
    from transformers import AutoTokenizer

    from distill.models import resolve_source

    return build_processor(AutoTokenizer.from_pretrained(resolve_source(tokenizer),
                                                         extra_special_tokens=AUDIO_TOKENS))


def build_model(config: dict, processor, seed: int, dtype: str = "float32"):
    """Random-weight Qwen3-ASR from a config dict (tiny twins, real shapes); the token ids and the
    text vocabulary default to the processor's tokenizer."""
    import torch

    import copy

    tb = classes()
    cfg = {k: v for k, v in copy.deepcopy(config).items() if k != "model_type"}
    tok = processor.tokenizer
    thinker = cfg.setdefault("thinker_config", {})
    thinker.setdefault("audio_token_id", tok.convert_tokens_to_ids(AUDIO_TOKENS["audio_token"]))
    thinker.setdefault("audio_start_token_id", tok.convert_tokens_to_ids(AUDIO_TOKENS["audio_bos_token"]))
    text = thinker.setdefault("text_config", {})
    text.setdefault("vocab_size", len(tok))
    if text["vocab_size"] < len(tok):
        raise DistillError(f"config vocab_size {text['vocab_size']} < the tokenizer's {len(tok)} tokens",
                           "raise thinker_config.text_config.vocab_size")
    torch.manual_seed(seed)
    # Built in its dtype (a 2B-parameter bf16 teacher never exists in fp32 first).
    model = tb.Qwen3ASRForConditionalGeneration._from_config(tb.Qwen3ASRConfig(**cfg), dtype=torch_dtype(dtype))
    return model.eval()




def load_model(path: str, device: str = "cpu", dtype: str = "float32", quantization_config=None,
               quantized: bool = False):
    """(model, processor) from a directory or hub id. quantized: bitsandbytes weights (from
    `quantization_config` or the saved config), which need fp32 (their convs load as fp16) and are
    placed at load time."""
    check_dir(path)
    tb = classes()
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    quantized = quantized or quantization_config is not None
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if quantized and device == "cpu":
        kwargs["device_map"] = {"": "cpu"}
    try:
        model = tb.Qwen3ASRForConditionalGeneration.from_pretrained(path, **kwargs)
        # fix_mistral_regex=True as the package passes it: transformers 4.57.6 otherwise warns
        # about a Mistral regex on any local tokenizer; the prompt's tokens are the same either way.
        processor = tb.Qwen3ASRProcessor.from_pretrained(path, fix_mistral_regex=True)
    except OSError as exc:
        raise DistillError(f"cannot load Qwen3-ASR from '{path}' ({str(exc).splitlines()[0]})",
                           "check the directory (weights, processor files) or the hub id") from None
    if not quantized:
        model = model.to(device)
    return model.eval(), processor


def load_ref(ref, ctx=None, seed: int = 0, processor=None):
    """(model, processor, weights path or None) for a recipe ModelRef: weights (dir, asset, stage,
    hub id), or random weights from an inline `config` / a config .json file."""
    from distill.models import resolve_source

    cfg = ref.config
    if cfg is None and ref.source.endswith(".json"):
        cfg = source_config(ref.source)
        if cfg is None:
            raise DistillError(f"config file '{ref.source}' not found", "fix the path")
    if cfg is not None:
        processor = processor or twin_processor(ref.tokenizer)
        return build_model(cfg, processor, seed, ref.dtype), processor, None
    path = resolve_source(ref.source, ctx)
    model, own = load_model(path, dtype=ref.dtype)
    return model, own, path


def save(model, processor, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


# ------------------------------------------------------------------------------------ prompt
def prompt(processor, language: str, context: str = "") -> str:
    """The package's prompt for one utterance, language forced ('English' or 'en')."""
    messages = [{"role": "system", "content": context},
                {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
    base = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return base + f"language {language_name(language)}<asr_text>"


def stop_ids(processor) -> list[int]:
    """<|im_end|> and <|endoftext|>: the package's generate() default ids, read from the tokenizer
    so twins with small vocabularies stop too."""
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return [i for i in ids if i is not None and i != tok.unk_token_id]


@dataclass
class Qwen3ASR:
    """A Qwen3-ASR model + processor behind `transcribe` (greedy, batched, language forced)."""

    model: Any  # Qwen3ASRForConditionalGeneration (possibly bnb- or dynamically quantized)
    processor: Any  # Qwen3ASRProcessor: Whisper 128-mel features + Qwen2 tokenizer + chat template
    backend: str = "torch-eager"
    dtype: str = ""
    device: str = "cpu"
    modality: str = "asr"
    max_new_tokens: int = 512  # the package's default; a finished transcript stops at <|im_end|>
    context: str = ""  # default system turn (the package's `context`, empty by default)
    max_audio_seconds: float = MAX_AUDIO_SECONDS  # longer audio is cut into pieces (or refused)
    _features_dtype: Any = field(default=None, init=False, repr=False)

    def __post_init__(self):
        # Features follow the weights' float dtype, as the package's `.to(model.dtype)` does;
        # quantized models keep float32 embeddings/convs, so their first float parameter says it.
        self._features_dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        self.dtype = self.dtype or str(self._features_dtype).removeprefix("torch.")

    def prompt(self, language: str, context: str | None = None) -> str:
        return prompt(self.processor, language, self.context if context is None else context)

    def transcribe(self, audios: list, language: str = "en", sampling_rate: int = 16000,
                   context: str | None = None, long_audio: str = "chunk") -> list[str]:
        """audios: B float32 mono arrays -> B texts as the package returns them.

        context: text for the system turn (names, domain words); long_audio: `chunk` cuts audio
        past max_audio_seconds at quiet points and joins the texts (the package's way), `error`
        refuses it.
        """
        import numpy as np
        import torch
        from qwen_asr.inference.utils import (SAMPLE_RATE, normalize_audio_input, parse_asr_output,
                                              split_audio_into_chunks)

        name = language_name(language)
        # The package's own input path: mono, resampled to 16 kHz, rescaled only if outside [-1, 1].
        wavs = [normalize_audio_input((np.asarray(a, dtype=np.float32), int(sampling_rate))) for a in audios]
        longest = max(len(w) for w in wavs) / SAMPLE_RATE
        if long_audio == "error" and longest > self.max_audio_seconds:
            raise DistillError(f"audio of {longest:.1f} s exceeds Qwen3-ASR's {self.max_audio_seconds:.0f} s "
                               "limit and long_audio is 'error'", "set long_audio: chunk (task YAML or "
                               "--long-audio chunk) or cut the audio")
        pieces = [(i, chunk) for i, wav in enumerate(wavs)
                  for chunk, _ in split_audio_into_chunks(wav, SAMPLE_RATE, self.max_audio_seconds)]
        text = self.prompt(name, context)
        inputs = self.processor(text=[text] * len(pieces), audio=[c for _, c in pieces],
                                return_tensors="pt", padding=True)
        inputs = inputs.to(self.device).to(self._features_dtype)  # casts float tensors only
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      num_beams=1, eos_token_id=stop_ids(self.processor))
        new_tokens = out.sequences[:, inputs["input_ids"].shape[1]:]
        raw = self.processor.batch_decode(new_tokens, skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False)
        texts = [""] * len(wavs)
        for (i, _), piece in zip(pieces, raw):
            texts[i] += parse_asr_output(piece, user_language=name)[1]
        return texts


# ------------------------------------------------------------------------ forward for losses
def audio_embeddings(thinker, features: list, encoder_states: bool = False):
    """features: B tensors [128, T_b] -> ([sum of audio tokens, decoder width], the encoder's last
    layer output [sum of audio tokens, d_model] after its norm, or None), utterance by utterance as
    the package does (its encoder does not batch, to keep precision)."""
    import torch

    tower = thinker.audio_tower
    seen: list = []
    hook = tower.ln_post.register_forward_hook(lambda m, i, o: seen.append(o)) if encoder_states else None
    try:
        out = [tower(f, feature_lens=torch.tensor([f.shape[-1]], device=f.device)).last_hidden_state
               for f in features]
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(out), (torch.cat(seen) if encoder_states else None)


def thinker_states(thinker, input_ids, attention_mask, audio_embeds, hidden: bool = False):
    """What `thinker.forward` computes, minus the [B, S, V] logits: (final hidden [B, S, H] after
    the norm, per-layer hidden states or None). audio_embeds fill the audio placeholder tokens."""
    embeds = thinker.get_input_embeddings()(input_ids)
    slots = (input_ids == thinker.config.audio_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(slots, audio_embeds.to(embeds.dtype))
    position_ids, _ = thinker.get_rope_index(attention_mask)
    out = thinker.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False, output_hidden_states=hidden)
    return out.last_hidden_state, (out.hidden_states if hidden else None)


def num_decoder_layers(model) -> int:
    return model.config.thinker_config.text_config.num_hidden_layers


def decoder_width(model) -> int:
    return model.config.thinker_config.text_config.hidden_size


def encoder_width(model) -> int:
    return model.config.thinker_config.audio_config.d_model


def layer_map_student(teacher, layers: list[int]):
    """Student = the teacher with only decoder `layers` (encoder, embeddings, head copied)."""
    import copy

    tb = classes()
    config = copy.deepcopy(teacher.config)
    config.thinker_config.text_config.num_hidden_layers = len(layers)
    student = tb.Qwen3ASRForConditionalGeneration(config).to(next(teacher.parameters()).dtype)
    prefix = "thinker.model.layers."
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in layers:
                state[f"{prefix}{layers.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"layer copy mismatch: missing {missing}, unexpected {unexpected}")
    return student.eval()
