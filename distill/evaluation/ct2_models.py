"""CTranslate2 models behind the harness's adapter contracts: Whisper (`transcribe`) and causal LMs
(log-probs + generate), so a CT2 export is measured by the same task code as its PyTorch source.

Whisper runs through `ctranslate2.models.Whisper.generate` directly rather than faster-whisper's
`transcribe`: faster-whisper pads every window to 3000 frames, which a shorter-window student
cannot take, and it adds VAD, temperature fallback and its own feature code that the PyTorch
adapter does not have. Here the features come from the same HF feature extractor as the PyTorch
adapter (saved in the export), decoding is greedy with the model's suppress lists, and audio
longer than a 30-s model's window slides the window with Whisper's timestamp rule (openai-whisper's
`transcribe`: cut after the last complete segment); a cut-window student, which never learned
timestamps for its window, decodes pieces cut at pauses instead (distill.evaluation.longform), the
same rule as the PyTorch adapter.

Window buckets (an export's `window_buckets`): CTranslate2's Whisper encoder takes any number of
frames up to its window (the positional table is sliced to fit), so a short clip can be padded to a
short window instead of the model's own: the shortest bucket that leaves `bucket_padding_s` of
padding after the clip. A bucket runs exactly the model cut to that window (the
`window_seconds` lever), and the encoder, most of the cost, shrinks with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.evaluation import longform

SAMPLE_RATE = 16000
MAX_TARGET_POSITIONS = 448  # Whisper's decoder positions: prompt + generated tokens fit in this
SECONDS_PER_TIMESTAMP = 0.02


def whisper_language_token(tokenizer, multilingual: bool, language: str) -> int | None:
    """Token id forcing `language` (code or English name) in a Whisper tokenizer; None for
    English-only models (which take no language token). Unknown languages are a DistillError
    here, before any audio is decoded (transformers would raise a ValueError mid-generate)."""
    if not multilingual:
        if language.lower() not in ("en", "english"):
            raise DistillError(f"this English-only model cannot transcribe language '{language}'",
                               "use a multilingual model, or language en")
        return None
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
    tok_id = tokenizer.convert_tokens_to_ids(f"<|{code}|>")
    if tok_id is None or tok_id in (tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")):
        raise DistillError(f"unknown language '{language}' for this Whisper model",
                           "use a Whisper language code such as en, de, fr, zh, ja")
    return tok_id


def _max_length(prompt_len: int, new_tokens: int) -> int:
    """CT2's Whisper `max_length` for `new_tokens` generated tokens after a prompt.

    CT2 decodes at most min(max_length / 2, max_length - (prompt_len - 1)) tokens
    (src/models/whisper.cc, mirroring openai-whisper's sample_len = n_text_ctx // 2).
    """
    return min(max(2 * new_tokens, new_tokens + prompt_len - 1), MAX_TARGET_POSITIONS)


@dataclass
class CT2Whisper:
    """A CT2 Whisper + the HF processor saved beside it, behind `transcribe` (greedy, batched)."""

    model: Any  # ctranslate2.models.Whisper
    processor: Any  # WhisperProcessor (feature extractor with the model's chunk_length + tokenizer)
    dtype: str  # the compute type CT2 really runs (model.compute_type)
    backend: str = "ctranslate2"
    device: str = "cpu"
    modality: str = "asr"
    multilingual: bool = False
    max_new_tokens: int = 128  # as the PyTorch adapter's short-form path
    window_buckets: tuple[float, ...] = ()  # shorter windows (s) this model also runs, see the module doc
    bucket_padding_s: float = 1.0  # padding a clip keeps after it in a bucket
    _ids: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        tok = self.processor.tokenizer
        names = ("<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>", "<|startofprev|>",
                 "<|endoftext|>")
        self._ids = {n: tok.convert_tokens_to_ids(n) for n in names}
        # Timestamp tokens follow <|notimestamps|> in every Whisper vocabulary (CT2 assumes it too).
        self._ids["ts_begin"] = self._ids["<|notimestamps|>"] + 1

    @property
    def window_samples(self) -> int:
        return int(self.processor.feature_extractor.n_samples)

    @property
    def max_audio_seconds(self) -> float:
        return self.window_samples / SAMPLE_RATE

    def window_for(self, n_samples: int) -> int:
        """Samples a clip of `n_samples` is padded to: the shortest bucket that leaves
        bucket_padding_s after it, else the model's own window."""
        pad = int(self.bucket_padding_s * SAMPLE_RATE)
        for seconds in sorted(self.window_buckets):
            window = int(seconds * SAMPLE_RATE)
            if window < self.window_samples and n_samples + pad <= window:
                return window
        return self.window_samples

    def language_token(self, language: str) -> int | None:
        return whisper_language_token(self.processor.tokenizer, self.multilingual, language)

    def prompt(self, language: str, context: str | None, timestamps: bool) -> list[int]:
        """[<|startofprev|> context] <|startoftranscript|> [<|lang|> <|transcribe|>] [<|notimestamps|>]."""
        ids: list[int] = []
        if context:
            tok = self.processor.tokenizer
            text = tok(" " + context.strip(), add_special_tokens=False).input_ids
            # openai-whisper keeps the last n_text_ctx // 2 - 1 prompt tokens
            ids = [self._ids["<|startofprev|>"], *text[-(MAX_TARGET_POSITIONS // 2 - 1):]]
        ids.append(self._ids["<|startoftranscript|>"])
        lang = self.language_token(language)
        if lang is not None:
            ids += [lang, self._ids["<|transcribe|>"]]
        if not timestamps:
            ids.append(self._ids["<|notimestamps|>"])
        return ids

    def _features(self, audios: list, window: int | None = None):
        import ctranslate2
        import numpy as np

        feats = self.processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="np",
                                                 max_length=window or self.window_samples)
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.input_features, dtype=np.float32))

    def _decode(self, ids: list[int]) -> str:
        text = [t for t in ids if t < self._ids["<|endoftext|>"]]  # no specials, no timestamps
        return self.processor.tokenizer.decode(text, skip_special_tokens=True)

    def transcribe(self, audios: list, language: str = "en", sampling_rate: int = SAMPLE_RATE,
                   context: str | None = None, long_audio: str = "chunk") -> list[str]:
        """audios: B float32 mono arrays at 16 kHz -> B raw texts. `context` is Whisper's prompt
        (previous text / vocabulary), fed as <|startofprev|> tokens before the transcript;
        long_audio: `chunk` slides the window over longer audio, `error` refuses it."""
        if sampling_rate != SAMPLE_RATE:
            raise DistillError(f"audio at {sampling_rate} Hz", "resample to 16 kHz (distill's load_audio does)")
        longest = max(len(a) for a in audios) / SAMPLE_RATE
        if long_audio == "error" and longest > self.max_audio_seconds:
            raise DistillError(f"audio of {longest:.1f} s exceeds this Whisper's {self.max_audio_seconds:g} s "
                               "window and long_audio is 'error'", "set long_audio: chunk or cut the audio")
        if self.max_audio_seconds < longform.WHISPER_WINDOW_S:  # a cut window: pieces cut at pauses
            return longform.transcribe_in_pieces(
                audios, self.window_samples,
                lambda pieces: [self._decode(t) for t in self._short(pieces, language, context)])
        texts: list[str | None] = [None] * len(audios)
        short = [i for i, a in enumerate(audios) if len(a) <= self.window_samples]
        if short:
            for i, ids in zip(short, self._short([audios[i] for i in short], language, context)):
                texts[i] = self._decode(ids)
        for i, audio in enumerate(audios):
            if texts[i] is None:
                texts[i] = self._long_form(audio, language, context)
        return texts  # type: ignore[return-value]

    def _short(self, audios: list, language: str, context: str | None) -> list[list[int]]:
        """Audio within the window, batched per window bucket, no timestamps -> per audio its text tokens."""
        prompt = self.prompt(language, context, timestamps=False)
        eot = self._ids["<|endoftext|>"]
        windows = [self.window_for(len(a)) for a in audios]
        out: list[list[int]] = [[] for _ in audios]
        for window in sorted(set(windows)):
            idx = [i for i, w in enumerate(windows) if w == window]
            results = self.model.generate(self._features([audios[i] for i in idx], window), [prompt] * len(idx),
                                          beam_size=1, max_length=_max_length(len(prompt), self.max_new_tokens))
            for i, r in zip(idx, results):
                out[i] = [t for t in r.sequences_ids[0] if t < eot]
        return out

    def _long_form(self, audio, language: str, context: str | None) -> str:
        """Slide a 30-s window over audio longer than it (Whisper's rule, as faster-whisper): after
        each window, continue from the end timestamp of its last complete segment (the whole
        window when it ends cleanly)."""
        prompt = self.prompt(language, context, timestamps=True)
        max_length = _max_length(len(prompt), MAX_TARGET_POSITIONS // 2)
        ts_begin, samples_per_ts = self._ids["ts_begin"], int(SECONDS_PER_TIMESTAMP * SAMPLE_RATE)
        seek, pieces = 0, []
        while seek < len(audio):
            window = audio[seek: seek + self.window_samples]
            result = self.model.generate(self._features([window]), [prompt], beam_size=1,
                                         max_length=max_length)
            ids = list(result[0].sequences_ids[0])
            is_ts = [t >= ts_begin for t in ids]
            pairs = [i for i in range(1, len(ids)) if is_ts[i] and is_ts[i - 1]]
            single_ending = len(ids) >= 2 and is_ts[-1] and not is_ts[-2]
            advance = len(window)
            if pairs and not single_ending:  # the last segment was cut by the window: redo it
                ids = ids[: pairs[-1]]
                advance = (ids[-1] - ts_begin) * samples_per_ts
            pieces.append(self._decode(ids).strip())
            seek += advance if advance > 0 else len(window)
        return " ".join(p for p in pieces if p)


LOGPROB_BYTES = 256 << 20  # cap on one forward's [b, T, V] float32 log-probs


def _chunks(seqs: list[list[int]], vocab: int) -> list[list[list[int]]]:
    """Consecutive sub-batches whose [b, max len, vocab] float32 output fits LOGPROB_BYTES."""
    out, cur, width = [], [], 0
    for s in seqs:
        w = max(width, len(s))
        if cur and (len(cur) + 1) * w * vocab * 4 > LOGPROB_BYTES:
            out.append(cur)
            cur, w = [], len(s)
        cur.append(s)
        width = w
    return out + ([cur] if cur else [])


@dataclass
class CT2CausalLM:
    """A `ctranslate2.Generator` behind the calls the LM tasks make (see adapters.CausalLM).

    `last_logprobs` is `forward_batch` (log-probs at every position; the last real one is kept) and
    `token_logprobs` is `score_batch` (per-token log-probs of the given sequence, computed inside
    CT2 without returning [B, T, V]). Prefix caching is not offered (can_share_prefix False).
    """

    model: Any  # ctranslate2.Generator
    tokenizer: Any
    dtype: str
    backend: str = "ctranslate2"
    device: str = "cpu"
    modality: str = "lm"
    max_length: int = 2048
    can_share_prefix: bool = False

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    def _tokens(self, seqs: list[list[int]]) -> list[list[str]]:
        return [self.tokenizer.convert_ids_to_tokens(list(s)) for s in seqs]

    def last_logprobs(self, seqs: list[list[int]]):
        """seqs: B token lists -> [B, V] log-probs of the next token after each full sequence.

        CT2's forward returns every position's log-probs ([b, T, V]); sub-batches keep that tensor
        under LOGPROB_BYTES so 5-shot prompts at a 49k vocabulary do not take gigabytes.
        """
        import numpy as np
        import torch

        rows = []
        for chunk in _chunks(seqs, self._vocab_size()):
            out = np.asarray(self.model.forward_batch([list(s) for s in chunk], return_log_probs=True))
            rows.extend(out[i, len(s) - 1] for i, s in enumerate(chunk))
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    def _vocab_size(self) -> int:
        return len(self.tokenizer)

    def token_logprobs(self, seqs: list[list[int]]) -> list:
        """seqs: B token lists -> B tensors [len-1]: log P(seq[t] | seq[:t]) for t >= 1."""
        import torch

        results = self.model.score_batch(self._tokens(seqs), max_input_length=0)
        return [torch.tensor(r.log_probs, dtype=torch.float32) for r in results]

    def generate(self, ids, mask, new_tokens: int):
        """Greedy decode of exactly `new_tokens` tokens (for decode-speed timing); returns the ids."""
        seqs = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        results = self.model.generate_batch(
            self._tokens(seqs), max_length=new_tokens, min_length=new_tokens, beam_size=1, sampling_topk=1,
            include_prompt_in_result=False)
        return [r.sequences_ids[0] for r in results]


def _whisper_processor(path: Path, n_mels: int):
    """The processor saved by the export; for a bare CT2 directory (faster-whisper's layout:
    tokenizer.json, no preprocessor_config.json) Whisper's default 30-s extractor."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    from distill.whisper_tokenizer import repair, whisper_processor

    if (path / "preprocessor_config.json").is_file() and (path / "tokenizer_config.json").is_file():
        return whisper_processor(path)
    if not (path / "tokenizer.json").is_file():
        raise DistillError(f"CTranslate2 Whisper '{path}' has no tokenizer.json",
                           "copy the model's tokenizer.json beside model.bin")
    specials = {t: "<|endoftext|>" for t in ("bos_token", "eos_token", "unk_token", "pad_token")}
    tok = WhisperTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), model_max_length=448, **specials)
    repair(tok)
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tok)


def load_ct2(path: str, device: str = "cpu", manifest=None, compute_type: str | None = None):
    """A CT2 directory -> CT2Whisper or CT2CausalLM. Compute type = `compute_type`, else the export's
    quantization, else CT2's 'default' (the stored type; fp16 runs as float32 on CPU); threads =
    torch's (the harness sets them)."""
    import ctranslate2
    import torch

    from distill import ct2

    where = Path(path)
    arch = ct2.architecture(where, manifest)
    extra = getattr(manifest, "extra", None) or {}
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda"):
        raise DistillError(f"CTranslate2 runs on cpu or cuda, not '{device}'", "use --device cpu")
    kwargs = {"device": kind, "device_index": int(index or 0), "compute_type": compute_type or extra.get("compute_type", "default"),
              "intra_threads": torch.get_num_threads() if kind == "cpu" else 0}
    if arch == "whisper":
        model = ctranslate2.models.Whisper(str(where), **kwargs)
        return CT2Whisper(model=model, processor=_whisper_processor(where, model.n_mels), dtype=model.compute_type,
                          device=device, multilingual=model.is_multilingual,
                          window_buckets=tuple(extra.get("window_buckets") or ()),
                          bucket_padding_s=float(extra.get("bucket_padding_s", 1.0)))
    from transformers import AutoTokenizer

    model = ctranslate2.Generator(str(where), **kwargs)
    max_len = extra.get("max_position_embeddings") or json.loads((where / "config.json").read_text()).get(
        "max_position_embeddings") or 2048
    return CT2CausalLM(model=model, tokenizer=AutoTokenizer.from_pretrained(where), dtype=model.compute_type,
                       device=device, max_length=int(max_len))
