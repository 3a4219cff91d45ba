"""Build tiny tts-en / tts-cmn sets from the Debian packages extracted in the asset cache."""

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def cached_roots(lang: str) -> dict[str, Path]:
    """Extraction roots already in `<cache>/debian/<name>_<version>`; skip when any is missing."""
    from distill.assets import cache_dir
    from distill.assets.tts import PACKAGES_BY_LANG

    roots, missing = {}, []
    for name in PACKAGES_BY_LANG[lang]:
        found = sorted((cache_dir() / "debian").glob(f"{name}_*"))
        if found:
            roots[name] = found[-1]
        else:
            missing.append(name)
    if missing:
        pytest.skip(f"Debian roots for tts-{lang} not in {cache_dir() / 'debian'}: {', '.join(missing)} "
                    f"(install with `distill assets install tts-{lang}`)")
    return roots


@pytest.fixture(scope="module")
def en_builds(tmp_path_factory):
    from distill.assets.tts import build

    roots = cached_roots("en")
    out = {}
    # Two builds with one seed; that other seeds give other plans is a unit test (no engines).
    for name, seed in [("a", 0), ("b", 0)]:
        out[name] = tmp_path_factory.mktemp(f"tts-en-{name}")
        build(out[name], "en", roots, seed, n=6)
    return out


def load(out: Path):
    import datasets

    from distill.assets import DATA_DIR

    return datasets.load_from_disk(str(out / DATA_DIR))


def test_en_wavs_are_16k_mono_pcm16_with_matching_durations(en_builds):
    import soundfile as sf

    data = load(en_builds["a"])
    assert set(data) == {"train", "dev", "test"}
    rows = [r for split in data.values() for r in split]
    assert sum(r["noise"] is None for r in rows) == 6
    assert sum(r["noise"] is not None for r in rows) == 2 * len([r for r in data["test"] if r["noise"] is None])
    for r in rows:
        info = sf.info(r["audio_path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.duration > 0.5 and abs(info.duration - r["duration"]) < 1e-3
        audio, _ = sf.read(r["audio_path"])
        assert np.abs(audio).max() > 0.01  # not silence
        assert r["sample_rate"] == 16000 and r["telephone"] is False
        assert r["source"] in {"tts-festival", "tts-flite", "tts-espeak"} and r["speaker"] == r["voice"]
    # Noisy copies are the clean utterance plus noise at (about) the stated SNR.
    clean = {r["id"]: r for r in data["test"] if r["noise"] is None}
    for r in (r for r in data["test"] if r["noise"] is not None):
        base = clean[r["id"].rsplit("-", 2)[0]]
        assert r["text"] == base["text"] and r["voice"] == base["voice"]
        x, _ = sf.read(base["audio_path"])
        y, _ = sf.read(r["audio_path"])
        scale = np.dot(x, y) / np.dot(x, x)  # the writer may scale the mix down to avoid clipping
        snr = 10 * np.log10(np.sum((scale * x) ** 2) / np.sum((y - scale * x) ** 2))
        assert abs(snr - r["snr_db"]) < 0.5, (r["id"], snr)


def test_en_same_seed_same_bytes(en_builds):
    a, b = (load(en_builds[k]) for k in "ab")
    for split in a:
        assert a[split]["text"] == b[split]["text"] and a[split]["voice"] == b[split]["voice"]
        for pa, pb in zip(a[split]["audio_path"], b[split]["audio_path"]):
            assert Path(pa).read_bytes() == Path(pb).read_bytes(), pa


def test_cmn_build(tmp_path):
    import soundfile as sf

    from distill.assets.tts import build

    info = build(tmp_path, "cmn", cached_roots("cmn"), seed=0, n=4)
    data = load(tmp_path)
    assert list(data) == ["test"] and len(data["test"]) == 4 == info["splits"]["test"]["utterances"]
    for r in data["test"]:
        assert sf.info(r["audio_path"]).samplerate == 16000 and r["duration"] > 0.5
        assert r["pinyin"] and all(ch >= "\u4e00" for ch in r["text"] if ch not in "，。？！；、")
