"""Audio longer than a cut-window Whisper's window: cut at pauses, decode the pieces as clips.

Whisper's own long-form rule (decode a window with timestamps, continue from the last complete
segment's end) needs timestamp tokens the model predicts well for its window. A student with a
shorter window was distilled on transcripts without timestamps, so it cannot drive that rule, and
fixed-length chunks cut words in half, which sends a small decoder into loops at the cut. So the
audio is cut where it is quietest near the end of each window (the lowest smoothed frame energy in
its last `SEARCH_SHARE`), every piece is decoded like a short clip (batched), and the texts are
joined. Pure functions, shared by the PyTorch and CTranslate2 adapters.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

WHISPER_WINDOW_S = 30  # Whisper's native window; a model with it keeps Whisper's own long-form rule
SEARCH_SHARE = 0.4  # look for the pause in the last 40 % of the window (4 s of a 10-s window)
FRAME_S, SMOOTH_FRAMES = 0.02, 10  # 20-ms energy frames, smoothed over 200 ms (a short pause)


def pause_bounds(audio: np.ndarray, window: int, sampling_rate: int = 16000) -> list[tuple[int, int]]:
    """[start, end) sample ranges of at most `window` samples that tile `audio`, each cut (but the
    last) at the quietest point of its last SEARCH_SHARE."""
    n, frame = len(audio), max(1, int(FRAME_S * sampling_rate))
    bounds, start = [], 0
    while n - start > window:
        lo = start + int(window * (1 - SEARCH_SHARE))
        region = np.asarray(audio[lo: start + window], dtype=np.float64)
        frames = len(region) // frame
        if frames == 0:
            cut = start + window
        else:
            energy = (region[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
            k = min(SMOOTH_FRAMES, frames)
            smooth = np.convolve(energy, np.ones(k) / k, mode="same")
            cut = lo + int(np.argmin(smooth)) * frame + frame // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, n))
    return bounds


def join(texts: list[str]) -> str:
    return " ".join(t.strip() for t in texts if t.strip())


def transcribe_in_pieces(audios: list, window: int, decode: Callable[[list], list[str]],
                         sampling_rate: int = 16000) -> list[str]:
    """Each audio cut at pauses into pieces of at most `window` samples; every piece of every
    audio decoded in one `decode(pieces) -> texts` call; each audio's texts joined."""
    spans = [pause_bounds(a, window, sampling_rate) for a in audios]
    texts = iter(decode([a[s:e] for a, bounds in zip(audios, spans) for s, e in bounds]))
    return [join([next(texts) for _ in bounds]) for bounds in spans]
