"""Noise mixing: the SNR measured on the output equals the SNR asked for."""

import numpy as np
import pytest

from distill.assets.noise import mix, to_pcm16
from distill.errors import DistillError


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    # Written out here rather than imported, so the test does not check the module against itself.
    clean = clean.astype(np.float64)
    noise = noisy.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))


def speechlike(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bursts of a harmonic tone with pauses: power varies over time like speech does."""
    t = np.arange(n) / 16000
    envelope = (np.sin(2 * np.pi * 2.5 * t) > 0).astype(float) * rng.uniform(0.2, 0.6)
    return envelope * (np.sin(2 * np.pi * 180 * t) + 0.4 * np.sin(2 * np.pi * 540 * t))


@pytest.mark.parametrize("snr", [-5.0, 0.0, 3.5, 10.0, 20.0])
@pytest.mark.parametrize("noise_len", [4000, 16000 * 5])  # shorter (tiled) and longer than clean
def test_mix_hits_requested_snr(snr, noise_len):
    rng = np.random.default_rng(0)
    clean = speechlike(rng, 16000 * 2)
    noise = rng.standard_normal(noise_len) * 3.0
    noisy = mix(clean, noise, snr, np.random.default_rng(1))
    assert noisy.shape == clean.shape
    assert abs(measured_snr(clean, noisy) - snr) < 0.1


@pytest.mark.parametrize("snr", [0.0, 10.0])
def test_snr_survives_int16_writing(snr):
    """Writing PCM16 scales an over-full-scale mix as a whole, which must keep the SNR."""
    rng = np.random.default_rng(2)
    clean = speechlike(rng, 16000 * 3) * 1.5  # loud enough that the mix exceeds full scale
    noisy = mix(clean, rng.standard_normal(16000 * 10), snr, rng)
    pcm = to_pcm16(noisy)
    assert pcm.dtype == np.int16 and np.max(np.abs(pcm)) <= 32767
    scale = np.max(np.abs(noisy)) / 0.99 if np.max(np.abs(noisy)) > 0.99 else 1.0
    ref = np.round(clean / scale * 32767)  # the clean part as it sits inside the written file
    assert abs(measured_snr(ref, pcm.astype(np.float64)) - snr) < 0.1


def test_mix_is_a_stretch_of_the_noise_and_seeded():
    rng = np.random.default_rng(3)
    clean = speechlike(rng, 8000)
    noise = rng.standard_normal(50000)
    a = mix(clean, noise, 5.0, np.random.default_rng(7))
    b = mix(clean, noise, 5.0, np.random.default_rng(7))
    c = mix(clean, noise, 5.0, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    added = a - clean
    # The added signal is one contiguous, scaled stretch of the noise: find it by correlation.
    starts = [s for s in range(len(noise) - len(clean) + 1) if abs(noise[s] * added[1] - noise[s + 1] * added[0]) < 1e-9]
    assert any(np.allclose(added / (added[0] / noise[s]), noise[s : s + len(clean)]) for s in starts)


def test_mix_rejects_silence():
    with pytest.raises(DistillError, match="silent"):
        mix(np.zeros(100), np.ones(200), 10.0, np.random.default_rng(0))
    with pytest.raises(DistillError, match="silent"):
        mix(np.ones(100), np.zeros(200), 10.0, np.random.default_rng(0))
