"""Noise for synthetic speech: coloured noise from sox, music from asterisk's hold music, mixed at
a requested signal-to-noise ratio.

SNR here is the power ratio over the whole utterance, 10*log10(sum(clean^2) / sum(noise^2)), the
definition used by most noisy-ASR benchmarks; silence inside the clean clip counts toward its
power, so a clip with long pauses sounds a little noisier than one without at the same SNR.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np

from distill.errors import DistillError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NOISE_KINDS = ("pink", "brown", "music")
# Long enough that offsets drawn per utterance rarely repeat a stretch of noise.
SYNTH_SECONDS = 120


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Measured SNR of `noisy` against its clean part: 10*log10(P(clean) / P(noisy - clean))."""
    clean = np.asarray(clean, dtype=np.float64)
    residual = np.asarray(noisy, dtype=np.float64) - clean
    return float(10.0 * np.log10(np.sum(clean**2) / np.sum(residual**2)))


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """clean + scaled noise so that 10*log10(P(clean)/P(scaled noise)) == snr_db.

    clean: (T,) float samples; noise: (M,) float samples at the same rate, any length (a random
    stretch of T samples is taken, tiled first when M < T); rng picks the offset.
    Returns (T,) float64. No clipping or normalisation here: callers that write integer PCM scale
    clean and noise together (which keeps the SNR).
    """
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if clean.ndim != 1 or noise.ndim != 1:
        raise DistillError("mix expects mono 1-D arrays", "downmix to mono before mixing")
    if len(clean) == 0 or len(noise) == 0:
        raise DistillError("mix got an empty clean or noise signal", "pass non-empty audio")
    if len(noise) < len(clean):
        noise = np.tile(noise, -(-len(clean) // len(noise)))
    start = int(rng.integers(0, len(noise) - len(clean) + 1))
    segment = noise[start : start + len(clean)]
    p_clean, p_noise = np.sum(clean**2), np.sum(segment**2)
    if p_clean == 0 or p_noise == 0:
        raise DistillError("mix got a silent clean or noise segment: SNR is undefined",
                           "pass audio with non-zero energy")
    gain = np.sqrt(p_clean / (p_noise * 10.0 ** (snr_db / 10.0)))
    return clean + gain * segment


def synth_noise(sox: Path, kind: str, seconds: float, env: dict[str, str], tmp_dir: Path) -> np.ndarray:
    """`sox -R -n ... synth <seconds> pinknoise|brownnoise` as float32 at 16 kHz. `-R` fixes sox's
    random seed, so the file is identical on every run; variety comes from offsets chosen by seed."""
    import soundfile as sf

    out = Path(tmp_dir) / f"{kind}.wav"
    cmd = [str(sox), "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out),
           "synth", str(seconds), f"{kind}noise"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not out.is_file():
        raise DistillError(f"sox failed to synthesise {kind} noise: {result.stderr.strip()[:300]}",
                           "reinstall the sox Debian packages of this asset")
    audio, _ = sf.read(out, dtype="float32")
    return audio


def load_music(moh_root: Path) -> list[tuple[str, np.ndarray]]:
    """Asterisk music-on-hold tracks (8 kHz) as (name, float32 16 kHz audio), sorted by name."""
    import librosa
    import soundfile as sf

    paths = sorted(Path(moh_root).glob("usr/share/asterisk/moh/*.wav"))
    if not paths:
        raise DistillError(f"no music-on-hold WAVs under {moh_root}",
                           "reinstall Debian package asterisk-moh-opsound-wav")
    tracks = []
    for path in paths:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != SAMPLE_RATE:
            audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
        # Leading/trailing silence would give silent stretches, for which SNR is undefined.
        audio, _ = librosa.effects.trim(audio, top_db=40)
        tracks.append((path.stem, audio.astype(np.float32)))
    return tracks


def noise_bank(sox: Path, moh_root: Path, env: dict[str, str], tmp_dir: Path) -> dict[str, list[np.ndarray]]:
    """Every noise kind -> list of source signals to draw stretches from."""
    bank = {kind: [synth_noise(sox, kind, SYNTH_SECONDS, env, tmp_dir)] for kind in ("pink", "brown")}
    bank["music"] = [audio for _, audio in load_music(moh_root)]
    return bank


def to_pcm16(audio: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Float audio as int16; a mix louder than full scale is scaled down as a whole (no clipping),
    which leaves its SNR unchanged."""
    audio = np.asarray(audio, dtype=np.float64)
    top = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if top > peak:
        audio = audio * (peak / top)
    return np.round(audio * 32767.0).astype(np.int16)


def noisy_copies(rows: list[dict], bank: dict[str, list[np.ndarray]], snrs_db: tuple[float, ...],
                 seed: int) -> list[dict]:
    """Noisy copies of clean rows: one per (row, SNR), noise kinds rotating over NOISE_KINDS so
    each kind gets an equal share; the WAV is written beside the clean one, `id` gets a suffix.
    Randomness (source track, offset) comes from (seed, row index, SNR index), so results do not
    depend on processing order."""
    import soundfile as sf

    copies = []
    for i, row in enumerate(rows):
        clean, rate = sf.read(row["audio_path"], dtype="float64")
        for j, snr in enumerate(snrs_db):
            kind = NOISE_KINDS[(i + j) % len(NOISE_KINDS)]
            rng = np.random.default_rng([seed, i, j])
            sources = bank[kind]
            noisy = mix(clean, sources[int(rng.integers(len(sources)))], snr, rng)
            new_id = f"{row['id']}-{kind}-snr{snr:g}"
            path = Path(row["audio_path"]).with_name(f"{new_id}.wav")
            sf.write(path, to_pcm16(noisy), rate, subtype="PCM_16")
            copies.append({**row, "id": new_id, "audio_path": str(path), "noise": kind, "snr_db": float(snr)})
    return copies
