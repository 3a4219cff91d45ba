"""The speech engines behind tts-en / tts-cmn, run from Debian packages extracted with `dpkg -x`.

Each engine writes WAV at its own rate (flite 16 kHz, espeak-ng 22.05 kHz, festival HTS 48 kHz);
`_finish` resamples to 16 kHz mono PCM16 with soxr, so every file in a data set has one format.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill.errors import DistillError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def library_env(deb_roots: dict[str, Path]) -> dict[str, str]:
    """Environment that makes binaries extracted with `dpkg -x` find their extracted libraries."""
    dirs: list[str] = []
    for root in sorted({Path(r) for r in deb_roots.values()}):
        for pattern in ("usr/lib/*-linux-gnu", "lib/*-linux-gnu", "usr/lib/*-linux-gnu/pulseaudio"):
            for d in sorted(root.glob(pattern)):
                if d.is_dir() and str(d) not in dirs:
                    dirs.append(str(d))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    return env


@dataclass(frozen=True)
class Voice:
    """A voice id, the engine and engine-specific name, the split it belongs to, and `person`:
    the recorded speaker (or espeak accent) it shares with other voices, kept within one split."""

    id: str
    engine: str  # festival | flite | espeak
    name: str  # festival voice function, flite -voice name, espeak -v name
    split: str
    person: str


def _espeak(accent: str, variant: str, split: str) -> Voice:
    return Voice(f"espeak-{accent}+{variant}", "espeak", f"{accent}+{variant}", split, f"espeak-{accent}")


# slt (festival HTS and flite) is one recorded woman, kal (festival diphone, flite) one man: each
# person sits in one split. espeak accents and variants (formant/pitch presets) never straddle
# splits either. festival has only two voices, so it is in train (kal) and test (slt), not dev.
VOICES_EN: tuple[Voice, ...] = (
    Voice("festival-kal-diphone", "festival", "voice_kal_diphone", "train", "kal"),
    Voice("flite-kal", "flite", "kal16", "train", "kal"),
    Voice("flite-awb", "flite", "awb", "train", "awb"),
    _espeak("en-us", "m1", "train"), _espeak("en-us", "f2", "train"),
    _espeak("en-gb", "m3", "train"), _espeak("en-gb", "f4", "train"),
    _espeak("en-gb-x-rp", "m2", "train"), _espeak("en-gb-x-rp", "f1", "train"),
    _espeak("en-gb-x-gbclan", "m4", "train"), _espeak("en-us-nyc", "f2", "train"),
    Voice("flite-rms", "flite", "rms", "dev", "rms"),
    _espeak("en-gb-x-gbcwmd", "m5", "dev"), _espeak("en-gb-x-gbcwmd", "f3", "dev"),
    Voice("festival-slt-hts", "festival", "voice_cmu_us_slt_arctic_hts", "test", "slt"),
    Voice("flite-slt", "flite", "slt", "test", "slt"),
    _espeak("en-gb-scotland", "m7", "test"), _espeak("en-gb-scotland", "f5", "test"),
    _espeak("en-029", "m6", "test"), _espeak("en-029", "f5", "test"),
)
VOICES_CMN: tuple[Voice, ...] = tuple(
    Voice(f"espeak-cmn-latn-pinyin+{v}", "espeak", f"cmn-latn-pinyin+{v}", "test", f"espeak-cmn+{v}")
    for v in ("m3", "f2", "m1", "f4")
)

FESTIVAL_DATA_PACKAGES = ("festival", "festlex-cmu", "festlex-poslex", "festvox-us-slt-hts", "festvox-kallpc16k")
FESTIVAL_BATCH = 20  # utterances per festival process: amortises voice loading, still parallel


@dataclass
class Engines:
    """Paths to the extracted engine binaries and their data, plus the environment to run them."""

    env: dict[str, str]
    espeak: Path
    espeak_data: Path  # the folder holding espeak-ng-data/
    festival: Path | None = None
    festival_lib: Path | None = None  # merged share/festival tree (symlinks)
    flite: Path | None = None
    sox: Path | None = None
    binaries: list[Path] = field(default_factory=list)

    @classmethod
    def from_roots(cls, roots: dict[str, Path], env: dict[str, str], tmp: Path, lang: str) -> "Engines":
        data = next(iter(sorted(Path(roots["espeak-ng-data"]).glob("usr/lib/*/espeak-ng-data"))), None)
        if data is None:
            raise DistillError("espeak-ng-data has no usr/lib/*/espeak-ng-data folder",
                               "reinstall Debian package espeak-ng-data")
        eng = cls(env=env, espeak=Path(roots["espeak-ng"]) / "usr/bin/espeak-ng", espeak_data=data.parent)
        if lang == "en":
            eng.festival = Path(roots["festival"]) / "usr/bin/festival"
            eng.festival_lib = festival_libdir([Path(roots[p]) for p in FESTIVAL_DATA_PACKAGES], tmp / "festival")
            eng.flite = Path(roots["flite"]) / "usr/bin/flite"
            eng.sox = Path(roots["sox"]) / "usr/bin/sox"
        eng.binaries = [b for b in (eng.espeak, eng.festival, eng.flite, eng.sox) if b is not None]
        return eng

    def check_runtime(self) -> None:
        """Every binary exists and all its shared libraries resolve (ldd), else one clear error."""
        if shutil.which("ldd") is None:
            logger.warning("ldd not found: cannot check the engines' shared libraries before running them")
        for binary in self.binaries:
            if not binary.is_file():
                raise DistillError(f"engine binary {binary} is missing", "reinstall the tts asset's Debian packages")
            if shutil.which("ldd") is None:
                continue
            out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=self.env).stdout
            missing = sorted(set(re.findall(r"^\s*(\S+) => not found", out, flags=re.M)))
            if missing:
                raise DistillError(
                    f"{binary.name} cannot load {', '.join(missing)}",
                    "install the Debian packages providing them (apt-get install, or add them to "
                    "distill.assets.tts.DEBIAN_PACKAGES)")


def festival_libdir(roots: list[Path], dest: Path) -> Path:
    """One share/festival tree made of symlinks to the trees of festival, its lexicons and voices,
    which live in separate extracted packages; festival's --libdir wants them in one place."""
    for root in roots:
        tree = root / "usr/share/festival"
        for path in sorted(tree.rglob("*")):
            if path.is_dir():
                continue
            link = dest / path.relative_to(tree)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path)
    return dest


@dataclass
class Job:
    """One engine process: a list of (utterance id, text to speak) for one voice."""

    engine: Engines
    voice: Voice
    items: list[tuple[str, str]]
    audio_dir: Path


def make_jobs(plan, voices: dict, engines: Engines, audio_dir: Path) -> list[Job]:
    """Group the plan into engine jobs: festival in batches per voice, others one per utterance.
    Mandarin rows speak their pinyin; everything else speaks its text."""
    jobs: list[Job] = []
    festival: dict[str, list[tuple[str, str]]] = {}
    for p in plan:
        voice = voices[p.voice]
        spoken = p.pinyin if p.pinyin is not None else p.text
        if voice.engine == "festival":
            festival.setdefault(voice.id, []).append((p.id, spoken))
        else:
            jobs.append(Job(engines, voice, [(p.id, spoken)], audio_dir))
    for voice_id, items in sorted(festival.items()):
        for i in range(0, len(items), FESTIVAL_BATCH):
            jobs.append(Job(engines, voices[voice_id], items[i : i + FESTIVAL_BATCH], audio_dir))
    # Slow festival batches first so they overlap with the many short flite/espeak calls.
    jobs.sort(key=lambda j: j.voice.engine != "festival")
    return jobs


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise DistillError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-400:]}",
                           "check the extracted Debian packages of the tts asset")


def run_job(job: Job) -> dict[str, float]:
    """Synthesise a job's utterances into audio_dir/<id>.wav at 16 kHz; id -> duration (s)."""
    raw_dir = job.audio_dir / ".raw"
    raw_dir.mkdir(exist_ok=True)
    eng, voice = job.engine, job.voice
    raws = {uid: raw_dir / f"{uid}.wav" for uid, _ in job.items}
    if voice.engine == "festival":
        script = raw_dir / f"{job.items[0][0]}.scm"
        lines = [f"({voice.name})"]
        for uid, text in job.items:
            if '"' in text + str(raws[uid]) or "\\" in text + str(raws[uid]):
                raise ValueError(f"text or output path of {uid} cannot go inside a Scheme string")
            lines.append(f'(utt.save.wave (SynthText "{text}") "{raws[uid]}" \'riff)')
        script.write_text("\n".join(lines) + "\n")
        _run([str(eng.festival), "--libdir", str(eng.festival_lib), "--datadir", str(eng.festival_lib),
              "-b", str(script)], eng.env, f"festival {voice.id}")
        script.unlink()
    else:
        for uid, text in job.items:
            if voice.engine == "flite":
                cmd = [str(eng.flite), "-voice", voice.name, "-t", text, "-o", str(raws[uid])]
            else:
                cmd = [str(eng.espeak), f"--path={eng.espeak_data}", "-v", voice.name, "-w", str(raws[uid]), text]
            _run(cmd, eng.env, f"{voice.engine} {voice.id} on {uid}")
    return {uid: _finish(raws[uid], job.audio_dir / f"{uid}.wav") for uid in raws}


def _finish(raw: Path, out: Path) -> float:
    """Engine WAV -> 16 kHz mono PCM16 at `out`; returns the duration in seconds."""
    import librosa
    import soundfile as sf

    from distill.assets.noise import to_pcm16

    if not raw.is_file():
        raise DistillError(f"the engine wrote no audio for {raw.stem}", "check the tts asset's Debian packages")
    audio, rate = sf.read(raw, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    if len(audio) == 0 or not np.any(audio):
        raise DistillError(f"the engine wrote silence for {raw.stem}", "check the tts asset's Debian packages")
    sf.write(out, to_pcm16(audio), SAMPLE_RATE, subtype="PCM_16")
    raw.unlink()
    return len(audio) / SAMPLE_RATE
