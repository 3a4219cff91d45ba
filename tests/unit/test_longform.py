"""Long audio through a cut-window model: pieces cut at pauses."""

import numpy as np

from distill.evaluation.longform import join, pause_bounds

SR = 16000


def _speech(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, int(seconds * SR)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def test_pieces_tile_the_audio_within_the_window():
    audio = _speech(47.3, 0)
    bounds = pause_bounds(audio, 10 * SR)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # no gap, no overlap
    assert all(0 < e - s <= 10 * SR for s, e in bounds)
    assert pause_bounds(_speech(9.0, 1), 10 * SR) == [(0, 9 * SR)]


def test_cuts_land_in_the_pause_near_the_end_of_the_window():
    # words 0-7.5 s, a 0.5-s pause, words 8-14 s, a pause at 14-14.4 s, words to 22 s
    audio = np.concatenate([_speech(7.5, 1), _silence(0.5), _speech(6.0, 2), _silence(0.4), _speech(7.6, 3)])
    bounds = pause_bounds(audio, 10 * SR)
    cuts = [e / SR for _, e in bounds[:-1]]
    assert len(cuts) == 2
    assert 7.5 <= cuts[0] <= 8.0  # inside the first pause, not at the 10-s edge
    assert 14.0 <= cuts[1] <= 14.4  # the second window starts at the first cut: 8 + 10 = 18 s at most


def test_join_skips_empty_pieces():
    assert join([" one two", "", " three ", "  "]) == "one two three"
