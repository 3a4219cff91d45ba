"""Real English speech sets: Asterisk prompts (8 kHz telephone) and pocketsphinx test clips.

Every set is stored as 16 kHz mono 16-bit WAV files inside the asset directory plus a
`datasets.Dataset` with columns id, audio_path (absolute), text, duration, sample_rate,
speaker, source, telephone. asterisk-en also has a `split` column (train/test, see
`asterisk_split`): the evaluation task reads test, distillation may train on train. Audio is a path, not a `datasets.Audio` column: datasets' audio
decoding needs torchcodec, which does not load on CPU-only installs; decode with soundfile.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import numpy as np

from distill.errors import DistillError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_ASTERISK = 563

_ASTERISK_WAVS = "usr/share/asterisk/sounds/en_US_f_Allison"
_ASTERISK_TEXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
_POCKETSPHINX = "usr/share/pocketsphinx/test/data"


def parse_asterisk_transcripts(lines: list[str]) -> dict[str, str]:
    """`name: Text.` lines -> {name: what is spoken}.

    Bracketed and parenthesised parts describe sounds or symbols ("dollar [$]", "[this is a
    simple beep tone]", "(simple tone sound plays)") and are not spoken, so they are removed;
    prompts left with no words (tones, monkeys) are dropped. The silence clips are kept with an
    empty reference, which is their correct transcript (scorers skip empty references). Keys
    written as symbols are spoken as words ("press * ... press #" is said "star", "pound").
    """
    out = {}
    for line in lines:
        if line.startswith(";") or ":" not in line:
            continue
        name, raw = (part.strip() for part in line.split(":", 1))
        if re.fullmatch(r"\(\d+ seconds? of silence\)", raw):
            out[name] = ""
            continue
        text = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", raw)
        text = re.sub(r"(?<!\S)\*(?!\S)", "star", text)
        text = re.sub(r"(?<!\S)#(?!\S)", "pound", text)
        text = " ".join(text.split())
        if any(ch.isalnum() for ch in text):
            out[name] = text
    return out


def to_16k_pcm(audio: np.ndarray, sr: int) -> np.ndarray:
    """Mono float audio at any rate -> 16 kHz float32 (soxr high quality, as librosa uses)."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ")
    # Resampling can overshoot full scale by a hair; clip so 16-bit PCM never wraps.
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def spoken_key(text: str) -> str:
    """Lower-case words only: two prompts that say the same words share a key (and a split)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def asterisk_split(text: str, min_test_words: int = 4) -> str:
    """'test' for about half of the prompts with >= `min_test_words` words, chosen by a hash of the
    spoken words (stable across builds, and a prompt repeated under another name lands in the same
    split); 'train' for the rest, including every shorter prompt (the evaluation task skips those)."""
    import hashlib

    key = spoken_key(text)
    if len(key.split()) < min_test_words:
        return "train"
    return "test" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 2 == 0 else "train"


def _write_rows(out_dir: Path, rows: list[dict]) -> dict:
    import datasets

    from distill.assets import DATA_DIR

    features = datasets.Features({
        "id": datasets.Value("string"), "audio_path": datasets.Value("string"),
        "text": datasets.Value("string"), "duration": datasets.Value("float64"),
        "sample_rate": datasets.Value("int64"), "speaker": datasets.Value("string"),
        "source": datasets.Value("string"), "telephone": datasets.Value("bool"),
        **({"split": datasets.Value("string")} if rows and "split" in rows[0] else {}),
    })
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(out_dir / DATA_DIR))
    return {"rows": len(rows), "audio_seconds": round(sum(r["duration"] for r in rows), 2)}


def _convert(src: Path, dst: Path) -> float:
    """Decode, resample to 16 kHz, write 16-bit PCM; returns the duration in seconds."""
    import soundfile as sf

    audio, sr = sf.read(str(src), dtype="float32", always_2d=False)
    audio = to_16k_pcm(audio, sr)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(dst), audio, SAMPLE_RATE, subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


def build_asterisk(out_dir: Path, files: dict[str, Path]) -> dict:
    from tqdm import tqdm

    wav_root = files["asterisk-core-sounds-en-wav"] / _ASTERISK_WAVS
    with gzip.open(files["asterisk-core-sounds-en"] / _ASTERISK_TEXT, "rt", encoding="utf-8") as f:
        transcripts = parse_asterisk_transcripts(f.read().splitlines())
    names = sorted(n for n in transcripts if (wav_root / f"{n}.wav").is_file())
    if len(names) != N_ASTERISK:
        raise DistillError(f"asterisk-en: {len(names)} prompts with audio and text, expected {N_ASTERISK}",
                           "check the asterisk-core-sounds-en pins")
    rows = []
    for name in tqdm(names, desc="asterisk-en 8k->16k", unit="wav"):
        dst = out_dir / "audio" / f"{name}.wav"
        duration = _convert(wav_root / f"{name}.wav", dst)
        rows.append({"id": f"asterisk-en/{name}", "audio_path": str(dst.resolve()), "text": transcripts[name],
                     "duration": duration, "sample_rate": SAMPLE_RATE, "speaker": "en_US_f_Allison",
                     "source": "asterisk-core-sounds-en 1.6.1", "telephone": True,
                     "split": asterisk_split(transcripts[name])})
    return _write_rows(out_dir, rows)


def parse_sphinx_transcription(lines: list[str]) -> dict[str, str]:
    """`<s> words </s> (utt-id)` lines -> {utt-id: words}."""
    out = {}
    for line in lines:
        m = re.match(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^)]+)\)\s*$", line)
        if m:
            out[m.group(2)] = " ".join(m.group(1).split())
    return out


def build_pocketsphinx(out_dir: Path, files: dict[str, Path], subset: str) -> dict:
    root = files["pocketsphinx-testdata"] / _POCKETSPHINX / subset
    text_file = root / ("transcription" if subset == "librivox" else "cards.transcription")
    transcripts = parse_sphinx_transcription(text_file.read_text().splitlines())
    speaker = "librivox-reader" if subset == "librivox" else "cards-speaker"
    rows = []
    for utt, text in sorted(transcripts.items()):
        dst = out_dir / "audio" / f"{utt}.wav"
        duration = _convert(root / f"{utt}.wav", dst)
        rows.append({"id": f"{subset}-5/{utt}", "audio_path": str(dst.resolve()), "text": text,
                     "duration": duration, "sample_rate": SAMPLE_RATE, "speaker": speaker,
                     "source": "pocketsphinx-testdata 0.8+5prealpha+1-15", "telephone": False})
    if len(rows) != 5:
        raise DistillError(f"{subset}-5: found {len(rows)} utterances, expected 5", "check the pin")
    return _write_rows(out_dir, rows)
