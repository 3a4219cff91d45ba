"""Text cleaning for TTS: what is left is plain words the engines read literally."""

import re

import pytest

from distill.assets.tts_text import (
    MAX_WORDS, MIN_WORDS, _rst_paragraphs, clean_all, clean_sentence, number_to_words, spoken_words,
    split_sentences, tang_lines,
)

MESSY = [
    "In 1991, Guido released version 0 of Python & it grew.",
    "He paid 25 dollars -- and left at 3 o'clock.",
    "The well-known \u201cquick\u201d fox (a red one) jumped over the dog...",
    "Then said Jesus, \u2018Follow me,\u2019 and they followed.",
    "And the LORD spake unto Moses, saying, Speak unto the children of Israel.",
    "It costs 3.5 dollars, or 1,000 cents in all, they said.",
    "Mr. Smith went to Washington on a rainy day.",
    "The NASA probe reached Mars after seven months.",
    "Install it with pip, then import PyPI helpers quickly.",
    "Use x to denote the unknown in every equation.",
    "See e.g. the tutorial for more examples today.",
    "Version 3rd edition is out now for everyone.",
    "Send 50% of the money to the other account now.",
    "Too short.",
    " ".join(["word"] * 25) + ".",
    "Lo, I am with you alway, even unto the end of the world. Amen.",
]


def test_cleaned_text_has_only_words_and_pause_punctuation():
    kept = [t for t in (clean_sentence(s) for s in MESSY) if t is not None]
    assert len(kept) >= 6  # the rewritable ones survive
    for text in kept:
        assert re.fullmatch(r"[A-Za-z' ,.;:!?]+", text), text
        assert not re.search(r"\d", text)
        words = text.split()
        assert MIN_WORDS <= len(spoken_words(text)) <= MAX_WORDS
        # Every whitespace token is one spoken word plus optional trailing punctuation, so the
        # transcript's words are exactly the words handed to the engine.
        assert [w.rstrip(",.;:!?").lower() for w in words] == spoken_words(text)
        assert text[-1] in ".!?"


@pytest.mark.parametrize("raw,expected", [
    ("In 1991, Guido released version 0 of Python & it grew.",
     "In one thousand nine hundred ninety one, Guido released version zero of Python and it grew."),
    ("He paid 25 dollars -- and left at 3 o'clock.", "He paid twenty five dollars, and left at three o'clock."),
    ("The well-known \u201cquick\u201d fox (a red one) jumped over the dog...",
     "The well known quick fox a red one jumped over the dog."),
    ("Then said Jesus, \u2018Follow me,\u2019 and they followed.", "Then said Jesus, Follow me, and they followed."),
    ("And the LORD spake unto Moses, saying, Speak unto the children of Israel.",
     "And the Lord spake unto Moses, saying, Speak unto the children of Israel."),
    ("A: A towel, a pillow and a dream.", "A towel, a pillow and a dream."),
])
def test_rewrites(raw, expected):
    assert clean_sentence(raw) == expected


@pytest.mark.parametrize("raw", [
    "It costs 3.5 dollars, or 1,000 cents in all, they said.",  # decimals and separators
    "Mr. Smith went to Washington on a rainy day.",  # abbreviation
    "The NASA probe reached Mars after seven months.",  # acronym
    "Install it with pip, then import PyPI helpers quickly.",  # CamelCase identifier
    "Use x to denote the unknown in every equation.",  # single letter
    "See e.g. the tutorial for more examples today.",  # dotted abbreviation
    "Version 3rd edition is out now for everyone.",  # ordinal
    "Send 50% of the money to the other account now.",  # symbol
    "Too short.",
    " ".join(["word"] * 25) + ".",
    "Reedy, Serhiy Storchaka, Eryk Sun, Chad Whitacre, Graham Wideman.",  # name list
    "Hezro the Carmelite, Naarai the son of Ezbai.",
])
def test_drops_what_engines_read_their_own_way(raw):
    assert clean_sentence(raw) is None


def test_number_words_match_an_independent_normaliser():
    # Whisper's English number normaliser turns spelled numbers back into digits.
    from transformers.models.whisper.english_normalizer import EnglishNumberNormalizer

    back = EnglishNumberNormalizer()
    for n in [0, 7, 13, 20, 45, 100, 101, 119, 999, 1000, 1001, 1991, 2024, 12345, 99999, 250000, 999999]:
        assert back(number_to_words(n)) == str(n), n
    with pytest.raises(ValueError):
        number_to_words(1_000_000)


def test_clean_all_dedups_by_spoken_words_and_sorts():
    pool = clean_all(["The cat sat on the mat.", "the cat sat, on the mat!", "A dog ran in the park."])
    assert len(pool) == 2 and pool == sorted(pool)


def test_split_sentences():
    assert split_sentences("One two three four. Five six seven eight? \u201cNine ten\u201d") == [
        "One two three four.", "Five six seven eight?", "\u201cNine ten\u201d"]


def test_rst_paragraphs_skip_code_directives_and_headings():
    rst = (
        "Title here\n==========\n\n.. note::\n   Indented note text.\n\n"
        "First prose line\ncontinues here.\n\n   >>> code()\n\nSecond paragraph.\n"
    )
    assert _rst_paragraphs(rst) == ["First prose line continues here.", "Second paragraph."]


def test_tang_lines_strip_titles_authors_and_colours(tmp_path):
    folder = tmp_path / "usr/share/games/fortunes"
    folder.mkdir(parents=True)
    (folder / "tang300").write_text(
        "\x1b[32m《送别》\x1b[m\n\x1b[33m作者：王维\x1b[m\n下马饮君酒，问君何所之。\n君言不得意，归卧南山陲。\n君不见，\n%\n"
        "\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光，疑是地上霜。\n", encoding="utf-8")
    assert tang_lines(tmp_path) == sorted(["下马饮君酒，问君何所之。", "君言不得意，归卧南山陲。", "床前明月光，疑是地上霜。"])
