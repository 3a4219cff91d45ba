"""Synthetic speech data sets with exact transcripts: `tts-en` (English) and `tts-cmn` (Mandarin).

    build(out_dir, "en", deb_roots, seed=0)   # ~600 utterances + noisy copies of the test split

English text (KJV, Python docs, fortunes; see tts_text.py) is spoken by festival (slt HTS, kal
diphone), flite (kal, awb, rms, slt) and espeak-ng (several accents x voice variants). Mandarin is
Tang-poem lines -> pypinyin TONE3 -> espeak-ng `cmn-latn-pinyin` (its `cmn` voice misreads hanzi).

Splits are disjoint by text AND by voice: every sentence is spoken once, and each voice belongs to
one split. Voices of one recorded person (slt in festival and flite, kal in festival and flite) and
espeak accents and variants never straddle splits, so test measures unseen voices on unseen text.
Everything drawn at random comes from `seed`; the engines are deterministic, so the same seed gives
the same texts, voices and WAV bytes.

The engines come from Debian packages extracted with `dpkg -x` (no root): `deb_roots[name]` is the
root of package `name`. Their libraries are found through LD_LIBRARY_PATH, their data through
command-line flags; nothing installed system-wide is used.

Output layout: `out_dir/audio/<id>.wav` (16 kHz mono PCM16), a `datasets.DatasetDict` saved in
`out_dir/data` (splits train/dev/test for en, test only for cmn; audio as absolute paths, not
decoded), and `out_dir/build_info.json` (counts, durations, voices; also returned by `build`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.assets import tts_engines
from distill.assets.tts_engines import VOICES_CMN, VOICES_EN, Voice, library_env, run_job
from distill.assets.tts_text import spoken_words
from distill.errors import DistillError, unknown_choice

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_N = {"en": 600, "cmn": 48}
SPLIT_SHARES = (("test", 0.2), ("dev", 0.1))  # train takes the rest
NOISE_SNRS_DB = (10.0, 0.0)
TRAIN_SNRS_DB = (15.0, 5.0)  # tts-en-train: one noisy copy per utterance, SNRs alternating
PYPI_PACKAGES: tuple[str, ...] = ("pypinyin==0.55.0",)

# Shared libraries the engines need beyond a python:3.11 (bookworm) image; `check_runtime`
# names any soname still missing, so a slimmer base image fails with a clear message.
_RUNTIME_LIBS = (
    "libasound2", "libpulse0", "libsndfile1", "libasyncns0", "libflac12", "libogg0", "libvorbis0a",
    "libvorbisenc2", "libopus0", "libmpg123-0", "libmp3lame0",
)
_ESPEAK = ("espeak-ng", "libespeak-ng1", "espeak-ng-data", "libpcaudio0", "libsonic0")
_FESTIVAL = ("festival", "libestools2.5", "festlex-cmu", "festlex-poslex", "festvox-us-slt-hts",
             "festvox-kallpc16k")
_FLITE = ("flite", "libflite1")
_SOX = ("sox", "libsox3", "libltdl7", "libgsm1")
_TEXT_EN = ("bible-kjv", "bible-kjv-text", "libreadline8", "python3.11-doc", "fortunes",
            "fortunes-min")
_NOISE = ("asterisk-moh-opsound-wav",)
PACKAGES_BY_LANG: dict[str, tuple[str, ...]] = {
    "en": _RUNTIME_LIBS + _ESPEAK + _FESTIVAL + _FLITE + _SOX + _TEXT_EN + _NOISE,
    "cmn": _RUNTIME_LIBS + _ESPEAK + ("fortunes-zh",),
}
DEBIAN_PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(PACKAGES_BY_LANG["en"] + PACKAGES_BY_LANG["cmn"]))


@dataclass(frozen=True)
class Planned:
    """One utterance to synthesise: what is said, by which voice, in which split."""

    id: str
    split: str
    source: str
    text: str
    voice: str
    pinyin: str | None = None


# --- planning (pure, no engines) --------------------------------------------------------------


def split_sizes(n: int) -> dict[str, int]:
    """Utterances per split; with n >= 3 every split gets at least one."""
    sizes = {name: max(1 if n >= 3 else 0, round(n * share)) for name, share in SPLIT_SHARES}
    sizes["train"] = n - sum(sizes.values())
    if sizes["train"] < 0:
        raise DistillError(f"n={n} is too small for train/dev/test splits", "use n >= 3")
    return sizes


def _draw_texts(pools: dict[str, list[str]], n: int, rng) -> list[tuple[str, str]]:
    """n (source, text) pairs, sources interleaved so every split gets the same mix; a sentence
    whose words repeat an earlier pick (a fortune quoting the Bible) is skipped."""
    order = {src: [pool[i] for i in rng.permutation(len(pool))] for src, pool in sorted(pools.items())}
    cursors = dict.fromkeys(order, 0)
    seen: set[tuple[str, ...]] = set()
    picked: list[tuple[str, str]] = []
    sources = sorted(order)
    while len(picked) < n:
        progressed = False
        for src in sources:
            while cursors[src] < len(order[src]) and len(picked) < n:
                text = order[src][cursors[src]]
                cursors[src] += 1
                key = tuple(spoken_words(text))
                if key not in seen:
                    seen.add(key)
                    picked.append((src, text))
                    progressed = True
                    break
        if not progressed:
            raise DistillError(f"only {len(picked)} usable sentences for n={n}", "ask for fewer utterances")
    return picked


def plan_en(pools: dict[str, list[str]], n: int, seed: int, voices: tuple[Voice, ...] = VOICES_EN) -> list[Planned]:
    """The text/voice/split plan of tts-en: a pure function of the sentence pools and the seed.

    Within a split, rows go round-robin over the engines present there (so each engine gets an
    equal share) and, within an engine, over that split's voices in a seed-shuffled order.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    texts = _draw_texts(pools, n, rng)
    sizes = split_sizes(n)
    plan: list[Planned] = []
    start = 0
    for split in ("test", "dev", "train"):
        engines: dict[str, list[Voice]] = {}
        for voice in voices:
            if voice.split == split:
                engines.setdefault(voice.engine, []).append(voice)
        names = sorted(engines)
        shuffled = {e: [engines[e][i] for i in rng.permutation(len(engines[e]))] for e in names}
        for k in range(sizes[split]):
            engine = names[k % len(names)]
            pool = shuffled[engine]
            voice = pool[(k // len(names)) % len(pool)]
            source, text = texts[start + k]
            plan.append(Planned(f"tts-en-{start + k:05d}", split, source, text, voice.id))
        start += sizes[split]
    return plan


def to_pinyin(hanzi: str) -> str | None:
    """Hanzi line -> TONE3 pinyin with pause punctuation ("xia4 ma3, wen4 jun1."), or None when a
    character has no reading (pypinyin then echoes it and espeak would spell it)."""
    import re

    from pypinyin import Style, lazy_pinyin

    marks = {"，": ",", "。": ".", "？": "?", "！": "!", "；": ";", "、": ","}
    out: list[str] = []
    for item in lazy_pinyin(hanzi, style=Style.TONE3, neutral_tone_with_five=True):
        if re.fullmatch(r"[a-z]+[1-5]", item):
            out.append(item)
        elif item and all(ch in marks for ch in item) and out:
            out[-1] += marks[item[0]]
        else:
            return None
    return " ".join(out) if out else None


def plan_cmn(lines: list[str], n: int, seed: int, voices: tuple[Voice, ...] = VOICES_CMN) -> list[Planned]:
    """tts-cmn plan: n poem lines (seeded), all in the test split, voices round-robin."""
    import numpy as np

    rng = np.random.default_rng(seed)
    plan: list[Planned] = []
    for index in rng.permutation(len(lines)):
        pinyin = to_pinyin(lines[index])
        if pinyin is None:
            continue
        k = len(plan)
        plan.append(Planned(f"tts-cmn-{k:05d}", "test", "tang300", lines[index], voices[k % len(voices)].id, pinyin))
        if len(plan) == n:
            return plan
    raise DistillError(f"only {len(plan)} usable poem lines for n={n}", "ask for fewer utterances")


# --- building ----------------------------------------------------------------------------------


def check_roots(lang: str, deb_roots: dict[str, Path]) -> None:
    """Every package this language needs has an extracted root."""
    missing = [p for p in PACKAGES_BY_LANG[lang] if p not in deb_roots or not Path(deb_roots[p]).is_dir()]
    if missing:
        raise DistillError(f"tts-{lang} needs Debian packages that are not extracted: {', '.join(missing)}",
                           f"run `distill assets install tts-{lang}` (it downloads them with apt-get download)")


def build(out_dir: Path, lang: str, deb_roots: dict[str, Path], seed: int, *, n: int | None = None,
          snrs_db: tuple[float, ...] = NOISE_SNRS_DB, workers: int | None = None) -> dict:
    """Synthesise tts-`lang` into `out_dir` (must not exist or be empty). See the module docstring.

    n: clean utterances (default 600 for en, 48 for cmn); snrs_db: SNRs of the noisy copies of the
    en test split (one noise kind per copy, kinds rotating pink/brown/music); workers: engine
    processes run at once (default: CPU count). Returns the build_info.json summary.
    """
    if lang not in PACKAGES_BY_LANG:
        raise unknown_choice("tts language", lang, PACKAGES_BY_LANG)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DistillError(f"output directory '{out_dir}' is not empty", "pass a new or empty directory")
    deb_roots = {name: Path(root) for name, root in deb_roots.items()}
    check_roots(lang, deb_roots)
    n = DEFAULT_N[lang] if n is None else n
    if seed < 0 or n < 1:
        raise DistillError(f"seed={seed}, n={n}: both must be non-negative and n >= 1", "pass seed >= 0 and n >= 1")
    env = library_env({p: deb_roots[p] for p in PACKAGES_BY_LANG[lang]})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"tts-{lang}-") as tmp:
        tmp = Path(tmp)
        engines = tts_engines.Engines.from_roots(deb_roots, env, tmp, lang)
        engines.check_runtime()
        if lang == "en":
            plan = plan_en(_english_pools(deb_roots, env), n, seed)
        else:
            from distill.assets.tts_text import tang_lines

            _import_pypinyin(deb_roots)
            plan = plan_cmn(tang_lines(deb_roots["fortunes-zh"]), n, seed)
        audio_dir = out_dir / "audio"
        audio_dir.mkdir(parents=True, exist_ok=True)
        voices = {v.id: v for v in (VOICES_EN if lang == "en" else VOICES_CMN)}
        jobs = tts_engines.make_jobs(plan, voices, engines, audio_dir)
        durations = _run_jobs(jobs, workers)
        shutil.rmtree(audio_dir / ".raw", ignore_errors=True)
        rows = [_row(p, audio_dir, durations[p.id], voices[p.voice], lang) for p in plan]
        if lang == "en" and snrs_db:
            from distill.assets.noise import noise_bank, noisy_copies

            bank = noise_bank(engines.sox, deb_roots["asterisk-moh-opsound-wav"], env, tmp)
            rows += noisy_copies([r for r in rows if r["split"] == "test"], bank, snrs_db, seed)
    _save(out_dir, rows, lang)
    return _write_info(out_dir, lang, seed, n, rows, time.perf_counter() - started, snrs_db)


def plan_en_train(pools: dict[str, list[str]], n: int, seed: int, exclude: set[tuple[str, ...]],
                  voices: tuple[Voice, ...] = VOICES_EN, prefix: str = "tts-en-train") -> list[Planned]:
    """n more training utterances: sentences whose spoken words are not in `exclude` (every text of
    tts-en, so none of its test/dev sentences), spoken by train-split voices only."""
    import numpy as np

    pools = {src: [t for t in pool if tuple(spoken_words(t)) not in exclude] for src, pool in pools.items()}
    rng = np.random.default_rng(seed)
    texts = _draw_texts(pools, n, rng)
    engines: dict[str, list[Voice]] = {}
    for voice in voices:
        if voice.split == "train":
            engines.setdefault(voice.engine, []).append(voice)
    names = sorted(engines)
    shuffled = {e: [engines[e][i] for i in rng.permutation(len(engines[e]))] for e in names}
    plan = []
    for k, (source, text) in enumerate(texts):
        engine = names[k % len(names)]
        voice = shuffled[engine][(k // len(names)) % len(shuffled[engine])]
        plan.append(Planned(f"{prefix}-{k:05d}", "train", source, text, voice.id))
    return plan


def build_extra_train(out_dir: Path, deb_roots: dict[str, Path], exclude_texts: list[str], seed: int, n: int,
                      snrs_db: tuple[float, ...] = TRAIN_SNRS_DB, workers: int | None = None) -> dict:
    """`tts-en-train`: n clean training utterances (new sentences, train voices) plus one noise-mixed
    copy of each, SNRs alternating over `snrs_db`; every row in split train."""
    from distill.assets.noise import noise_bank, noisy_copies

    out_dir = Path(out_dir)
    deb_roots = {name: Path(root) for name, root in deb_roots.items()}
    check_roots("en", deb_roots)
    env = library_env({p: deb_roots[p] for p in PACKAGES_BY_LANG["en"]})
    exclude = {tuple(spoken_words(t)) for t in exclude_texts}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tts-en-train-") as tmp:
        tmp = Path(tmp)
        engines = tts_engines.Engines.from_roots(deb_roots, env, tmp, "en")
        engines.check_runtime()
        plan = plan_en_train(_english_pools(deb_roots, env), n, seed, exclude)
        audio_dir = out_dir / "audio"
        audio_dir.mkdir(parents=True, exist_ok=True)
        voices = {v.id: v for v in VOICES_EN}
        durations = _run_jobs(tts_engines.make_jobs(plan, voices, engines, audio_dir), workers)
        shutil.rmtree(audio_dir / ".raw", ignore_errors=True)
        rows = [_row(p, audio_dir, durations[p.id], voices[p.voice], "en") for p in plan]
        bank = noise_bank(engines.sox, deb_roots["asterisk-moh-opsound-wav"], env, tmp)
        for j, snr in enumerate(snrs_db):
            rows += noisy_copies(rows[j:n:len(snrs_db)], bank, (snr,), seed + j)
    _save(out_dir, rows, "en", splits=("train",))  # an empty split would not load back
    return _write_info(out_dir, "en", seed, n, rows, time.perf_counter() - started, snrs_db)


def build_train_asset(out_dir: Path, files: dict[str, Path], n: int) -> dict:
    """Registry builder of `tts-en-train`: sentences of no tts-en split (so none of its test texts)."""
    from distill.assets import load_dataset

    tts_en = load_dataset("tts-en")
    exclude = [t for split in tts_en.values() for t in split["text"]]
    return build_extra_train(out_dir, files, exclude, seed=1, n=n)


def _import_pypinyin(deb_roots: dict[str, Path]) -> None:
    """pypinyin from the environment, else from an unpacked wheel passed as deb_roots["pypinyin"]."""
    import importlib
    import sys

    try:
        importlib.import_module("pypinyin")
        return
    except ImportError:
        if "pypinyin" not in deb_roots:
            raise DistillError("tts-cmn needs pypinyin", f"pip install {PYPI_PACKAGES[0]}") from None
    sys.path.insert(0, str(deb_roots["pypinyin"]))  # a wheel is importable from its unpacked root
    importlib.import_module("pypinyin")


def _english_pools(deb_roots: dict[str, Path], env: dict[str, str]) -> dict[str, list[str]]:
    from distill.assets import tts_text as T

    pools = {
        "kjv": T.clean_all(T.kjv_sentences(deb_roots["bible-kjv"], deb_roots["bible-kjv-text"], env)),
        "pydocs": T.clean_all(T.pydocs_sentences(deb_roots["python3.11-doc"])),
        "fortunes": T.clean_all(T.fortune_sentences([deb_roots["fortunes"], deb_roots["fortunes-min"]])),
    }
    logger.info("sentence pools: %s", {k: len(v) for k, v in pools.items()})
    return pools


def _run_jobs(jobs: list, workers: int | None) -> dict[str, float]:
    """Run engine jobs in parallel (each is a subprocess plus resampling); id -> duration (s)."""
    import os

    from tqdm import tqdm

    durations: dict[str, float] = {}
    total = sum(len(job.items) for job in jobs)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool, \
            tqdm(total=total, desc="synthesising", unit="utt") as bar:
        for result in pool.map(run_job, jobs):
            durations.update(result)
            bar.update(len(result))
    return durations


def _row(p: Planned, audio_dir: Path, duration: float, voice: Voice, lang: str) -> dict:
    row = {
        "id": p.id, "audio_path": str((audio_dir / f"{p.id}.wav").resolve()), "text": p.text,
        "duration": duration, "sample_rate": SAMPLE_RATE, "speaker": p.voice,
        "source": f"tts-{voice.engine}", "telephone": False, "split": p.split, "voice": p.voice,
        "noise": None, "snr_db": None, "text_source": p.source,
    }
    if lang == "cmn":
        row["pinyin"] = p.pinyin
    return row


def _save(out_dir: Path, rows: list[dict], lang: str, splits: tuple[str, ...] = ("train", "dev", "test")) -> None:
    from datasets import Dataset, DatasetDict, Features, Value

    spec = {
        "id": "string", "audio_path": "string", "text": "string", "duration": "float64",
        "sample_rate": "int32", "speaker": "string", "source": "string", "telephone": "bool",
        "split": "string", "voice": "string", "noise": "string", "snr_db": "float64",
        "text_source": "string",
    }
    if lang == "cmn":
        spec["pinyin"] = "string"
    features = Features({k: Value(v) for k, v in spec.items()})
    out = {}
    for split in splits:
        chosen = [r for r in rows if r["split"] == split]
        if chosen or lang == "en":
            out[split] = Dataset.from_dict({k: [r[k] for r in chosen] for k in spec}, features=features)
    from distill.assets import DATA_DIR

    DatasetDict(out).save_to_disk(str(out_dir / DATA_DIR))


def _write_info(out_dir: Path, lang: str, seed: int, n: int, rows: list[dict], seconds: float,
                snrs_db: tuple[float, ...]) -> dict:
    """Counts and durations per split and engine, beside the data, for the data card."""
    from distill.artifacts import write_json_atomic

    summary: dict[str, dict] = {}
    for r in rows:
        key = r["split"] + ("" if r["noise"] is None else "-noisy")
        s = summary.setdefault(key, {"utterances": 0, "seconds": 0.0, "by_source": {}})
        s["utterances"] += 1
        s["seconds"] = round(s["seconds"] + r["duration"], 3)
        s["by_source"][r["source"]] = s["by_source"].get(r["source"], 0) + 1
    info = {
        "asset": f"tts-{lang}", "seed": seed, "n_clean": n, "snrs_db": list(snrs_db),
        "sample_rate": SAMPLE_RATE, "build_seconds": round(seconds, 1), "splits": summary,
        "voices": [asdict(v) for v in (VOICES_EN if lang == "en" else VOICES_CMN)],
    }
    write_json_atomic(out_dir / "build_info.json", info)
    return info
