"""Text for synthetic speech: public-domain corpora cut into sentences the engines read literally.

The transcript of a synthetic utterance is only exact if the engine speaks every written word and
nothing else. TTS front ends silently expand digits ("1991" -> "nineteen ninety one"), spell out
acronyms, read abbreviations ("Dr." -> "doctor") and symbols ("&", "%"). So `clean_sentence`
rewrites what it can (small integers to words, "&" to "and", hyphens to spaces) and DROPS every
sentence that still holds anything an engine could read in more than one way. What is left is plain
words plus pause punctuation, and `spoken_words(text)` is then exactly what is said.

Corpora (all from Debian packages extracted with `dpkg -x`, see `tts.DEBIAN_PACKAGES`):
  kjv        King James Bible via the `bible` program of `bible-kjv` (public domain)
  pydocs     reStructuredText sources of the Python 3.11 docs, prose paragraphs only (PSF licence)
  fortunes   the `fortunes`/`fortunes-min` collections, a benign subset of files (BSD)
  tang300    Tang poems from `fortunes-zh`, for Mandarin (public domain poems)
"""

from __future__ import annotations

import logging
import re
import subprocess
import unicodedata
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_WORDS = 4
MAX_WORDS = 20

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

# Tokens engines expand to other words ("Dr." -> "doctor"); a sentence holding one is dropped.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc eg ie cf vol ch ft mt gen col capt prof rev inc ltd co esq lt sgt"
    " approx dept fig op al viz".split()
)
# All-caps words the KJV uses as ordinary words; other all-caps tokens may be spelled out.
_CAPS_AS_WORDS = {"LORD": "Lord", "GOD": "God", "JEHOVAH": "Jehovah", "JAH": "Jah"}
_SINGLE_LETTER_WORDS = frozenset("aAIO")
_COMMON_CAPITALS = frozenset({"I", "O", "Lord", "God"})
_ALLOWED = re.compile(r"^[A-Za-z' ,.;:!?]+$")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")

# Fortune files without crude or stereotyping material; cleaning removes the symbol-heavy rest.
FORTUNE_FILES = (
    "fortunes", "literature", "riddles", "wisdom", "people", "science", "humorists", "platitudes",
    "education", "work", "pets", "food", "sports", "kids", "songs-poems", "pratchett", "goedel",
    "paradoxum", "magic", "tao", "miscellaneous", "art", "computers", "cookie", "love", "medicine",
)


def number_to_words(n: int) -> str:
    """0 <= n < 1,000,000 as plain English words without "and" or hyphens: 1991 -> "one thousand
    nine hundred ninety one". Spelled by us so the engine reads words, not its own digit rules."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_to_words supports 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    rest = n % 1000
    return number_to_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_to_words(rest))


def _expand_number(match: re.Match) -> str:
    return number_to_words(int(match.group(0)))


def spoken_words(text: str) -> list[str]:
    """The words a cleaned sentence makes the engine say, lower-cased, punctuation removed."""
    return [w.lower() for w in _WORD.findall(text)]


def clean_sentence(raw: str) -> str | None:
    """A sentence the engines read literally, or None when it cannot be made so.

    Keeps letters, inner apostrophes, spaces and pause punctuation (, . ; : ! ?); rewrites integers
    below a million, "&", dashes, brackets and quotes; drops digits in other forms, symbols,
    abbreviations, acronyms, single letters other than a/I/O, name lists (over a third of the
    words after the first capitalised), and lengths outside 4-20 words.
    """
    text = unicodedata.normalize("NFKC", raw)
    text = re.sub(r"^\s*[QA]:\s+", "", text)  # riddle labels "Q:"/"A:" are layout, not speech
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = re.sub(r"[\u201c\u201d\"]", " ", text)
    text = re.sub(r"\s*(?:--+|\u2014|\u2013)\s*", ", ", text)  # a dash is a pause, not a word
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)  # well-known -> well known
    text = text.replace("&", " and ")
    text = re.sub(r"[()\[\]{}]", " ", text)
    text = re.sub(r"\.\.\.+|\u2026", ", ", text)
    # Integers with separators or decimals are read inconsistently ("1,000", "3.5"): drop them.
    if re.search(r"\d[,.:]\d|\d[A-Za-z]|[A-Za-z]\d", text):
        return None
    text = re.sub(r"(?<![\d])\d{1,6}(?![\d])", _expand_number, text)
    for caps, word in _CAPS_AS_WORDS.items():
        text = re.sub(rf"\b{caps}\b", word, text)
    # Apostrophes that quote rather than elide ('word', Jesus') are not spoken.
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,.;:!?])[,.;:!?]+", r"\1", text)  # ", ," or ".," left by the rewrites
    text = re.sub(r"^[,.;:!?\s]+", "", text)
    if not text or not _ALLOWED.match(text):
        return None
    for token in text.split():
        bare = token.rstrip(",.;:!?")
        if "." in bare or "!" in bare or "?" in bare or ";" in bare or ":" in bare or "," in bare:
            return None  # e.g. "e.g." or "a.b": punctuation inside a word is read aloud or skipped
        if token.endswith(".") and bare.lower() in _ABBREVIATIONS:
            return None
        if not _WORD.fullmatch(bare):
            return None
        letters = bare.replace("'", "")
        if len(letters) == 1 and letters not in _SINGLE_LETTER_WORDS:
            return None
        if len(letters) >= 2 and letters.isupper():
            return None  # acronyms are spelled out by some engines and read as words by others
        if re.search(r"[a-z][A-Z]", bare):
            return None  # CamelCase identifiers ("PyPI") have no agreed reading
    words = _WORD.findall(text)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    # Lists of names ("Serhiy Storchaka, Eryk Sun, ...") test spelling guesses, not recognition.
    names = sum(w[0].isupper() and w not in _COMMON_CAPITALS for w in words[1:])
    if names > (len(words) - 1) / 3:
        return None
    if text[-1] not in ".!?":
        text = text.rstrip(",;:") + "."
    return text[0].upper() + text[1:]


def split_sentences(paragraph: str) -> list[str]:
    """Split prose at sentence ends (.!? followed by space and a capital or quote)."""
    paragraph = re.sub(r"\s+", " ", paragraph).strip()
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[\"'\u201c(]?[A-Z])", paragraph) if s]


def clean_all(raw_sentences: list[str]) -> list[str]:
    """Cleaned, de-duplicated (by spoken words) sentences, sorted so the pool is file-order free."""
    seen: dict[tuple[str, ...], str] = {}
    for raw in raw_sentences:
        text = clean_sentence(raw)
        if text is not None:
            seen.setdefault(tuple(spoken_words(text)), text)
    return sorted(seen.values())


# --- corpora -----------------------------------------------------------------------------------


def kjv_sentences(bible_root: Path, text_root: Path, env: dict[str, str]) -> list[str]:
    """Every KJV verse, split into sentences, via the package's own `bible` reader."""
    binary = Path(bible_root) / "usr/bin/bible"
    data_dir = Path(text_root) / "usr/lib"
    out = subprocess.run(
        [str(binary), "-p", str(data_dir), "-f", "gen1:1-rev22:21"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=True,
    ).stdout
    sentences = []
    for line in out.splitlines():
        verse = re.sub(r"^\S+\d+:\d+\s+", "", line)  # drop the "Ge1:1" reference
        if verse != line:
            sentences.extend(split_sentences(verse))
    return sentences


def _rst_paragraphs(text: str) -> list[str]:
    """Unindented prose paragraphs of a reST file: no directives, headings, code or tables."""
    paragraphs, current = [], []
    for line in text.splitlines():
        prose = line and not line[0].isspace() and not line.startswith((".. ", "..", "|", "+", ">>>"))
        if prose and re.fullmatch(r"([=*\-~^#\"'`+_])\1+\s*", line):
            prose, current = False, []  # heading underline: the line before was a title
        if prose:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def pydocs_sentences(doc_root: Path) -> list[str]:
    """Prose sentences of the Python docs; any sentence with reST markup (code, roles) is dropped
    because identifiers like `str` have no agreed spoken form."""
    sources = next(Path(doc_root).glob("usr/share/doc/python3*/html/_sources"), None)
    if sources is None:
        raise FileNotFoundError(f"no usr/share/doc/python3*/html/_sources under {doc_root}")
    sentences = []
    for path in sorted(sources.rglob("*.rst.txt")):
        if path.relative_to(sources).parts[0] == "whatsnew":
            continue  # changelogs: mostly issue numbers and contributor names
        for paragraph in _rst_paragraphs(path.read_text(encoding="utf-8", errors="replace")):
            for sentence in split_sentences(paragraph):
                if not re.search(r"[`*_|<>=/\\#@$%^~]|::", sentence):
                    sentences.append(sentence)
    return sentences


def fortune_sentences(roots: list[Path]) -> list[str]:
    """Sentences of the fortune collections in FORTUNE_FILES; attributions ("-- Author") dropped."""
    sentences = []
    for root in roots:
        folder = Path(root) / "usr/share/games/fortunes"
        for name in FORTUNE_FILES:
            path = folder / name
            if not path.is_file():
                continue
            for fortune in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
                lines = [ln for ln in fortune.splitlines() if not ln.strip().startswith(("--", "\u2014"))]
                # Dialogue and verse layouts ("Q:", indented lines) are still split into sentences.
                sentences.extend(split_sentences(" ".join(lines)))
    return sentences


def tang_lines(fortunes_zh_root: Path, min_hanzi: int = 8) -> list[str]:
    """Body lines of the Tang poems in `fortunes-zh` (titles and author lines dropped), each line
    a couplet such as "下马饮君酒，问君何所之。"; lines under `min_hanzi` characters ("君不见，")
    are too short for a stable character error rate."""
    path = Path(fortunes_zh_root) / "usr/share/games/fortunes/tang300"
    text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(encoding="utf-8"))  # ANSI colours
    lines = []
    for poem in text.split("\n%\n"):
        for line in poem.splitlines():
            line = line.strip()
            if (line and not line.startswith(("《", "作者")) and re.fullmatch(r"[\u4e00-\u9fff，。？！；、]+", line)
                    and len(re.findall(r"[\u4e00-\u9fff]", line)) >= min_hanzi):
                lines.append(line)
    return sorted(set(lines))
