"""The tts-en/tts-cmn plans: seeded, and splits disjoint by text and by voice."""

from collections import Counter

import pytest

from distill.assets.tts import PACKAGES_BY_LANG, DEBIAN_PACKAGES, plan_cmn, plan_en, split_sizes, to_pinyin
from distill.assets.tts_engines import VOICES_CMN, VOICES_EN
from distill.assets.tts_text import number_to_words as words
from distill.assets.tts_text import spoken_words


def fake_pools(size=300):
    # Distinct sentences per source; the fortune pool repeats one Bible sentence to exercise dedup.
    pools = {
        "kjv": [f"And the king went forth unto the city number {words(i)}." for i in range(size)],
        "pydocs": [f"The module returns a value for call {words(i)} quickly." for i in range(size)],
        "fortunes": [f"A wise person once said thing {words(i)} out loud." for i in range(size)],
    }
    pools["fortunes"][0] = pools["kjv"][0]
    return pools


def by_split(plan):
    out = {}
    for p in plan:
        out.setdefault(p.split, []).append(p)
    return out


def test_splits_disjoint_by_text_voice_and_person():
    plan = plan_en(fake_pools(), 200, seed=0)
    splits = by_split(plan)
    assert {s: len(v) for s, v in splits.items()} == split_sizes(200)
    voices = {v.id: v for v in VOICES_EN}
    texts = {s: {tuple(spoken_words(p.text)) for p in rows} for s, rows in splits.items()}
    used = {s: {p.voice for p in rows} for s, rows in splits.items()}
    persons = {s: {voices[v].person for v in vs} for s, vs in used.items()}
    accents_variants = {s: {voices[v].name.split("+")[-1] for v in vs if voices[v].engine == "espeak"}
                        for s, vs in used.items()}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not texts[a] & texts[b]
        assert not used[a] & used[b]
        assert not persons[a] & persons[b]
        assert not accents_variants[a] & accents_variants[b]
    assert len({p.text for p in plan}) == len(plan)  # every sentence spoken once
    assert all(voices[p.voice].split == p.split for p in plan)


def test_voice_table_keeps_each_person_in_one_split():
    split_of = {}
    for voice in VOICES_EN:
        assert split_of.setdefault(voice.person, voice.split) == voice.split, voice
    ids = [v.id for v in VOICES_EN + VOICES_CMN]
    assert len(ids) == len(set(ids))


def test_test_split_balances_engines_and_sources():
    plan = plan_en(fake_pools(), 300, seed=3)
    test = [p for p in plan if p.split == "test"]
    engines = Counter(p.voice.split("-")[0] for p in test)
    assert set(engines) == {"festival", "flite", "espeak"}
    assert max(engines.values()) - min(engines.values()) <= 1
    sources = Counter(p.source for p in plan)
    assert max(sources.values()) - min(sources.values()) <= 1


def test_plan_is_a_function_of_the_seed():
    pools = fake_pools()
    a, b, c = plan_en(pools, 60, seed=5), plan_en(pools, 60, seed=5), plan_en(pools, 60, seed=6)
    assert a == b
    assert [(p.text, p.voice) for p in a] != [(p.text, p.voice) for p in c]


def test_too_few_sentences_is_a_user_error():
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="usable sentences"):
        plan_en({"kjv": ["One two three four."]}, 5, seed=0)


def test_to_pinyin_known_line():
    pytest.importorskip("pypinyin", reason="pypinyin (tts-cmn) is not installed")
    # 王维《送别》: xia4 ma3 yin3 jun1 jiu3, wen4 jun1 he2 suo3 zhi1 (standard readings).
    assert to_pinyin("下马饮君酒，问君何所之。") == "xia4 ma3 yin3 jun1 jiu3, wen4 jun1 he2 suo3 zhi1."
    assert to_pinyin("下马abc") is None


def test_plan_cmn_seeded_and_all_test():
    pytest.importorskip("pypinyin", reason="pypinyin (tts-cmn) is not installed")
    lines = ["下马饮君酒，问君何所之。", "君言不得意，归卧南山陲。", "床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]
    a = plan_cmn(lines, 3, seed=1)
    assert a == plan_cmn(lines, 3, seed=1)
    assert {p.split for p in a} == {"test"} and len({p.text for p in a}) == 3
    assert all(p.pinyin and p.text in lines for p in a)


def test_package_lists():
    assert set(PACKAGES_BY_LANG["cmn"]) <= set(DEBIAN_PACKAGES)
    assert len(DEBIAN_PACKAGES) == len(set(DEBIAN_PACKAGES))
    assert "fortunes-zh" in PACKAGES_BY_LANG["cmn"] and "festival" in PACKAGES_BY_LANG["en"]
