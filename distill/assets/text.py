"""Text corpora for LM distillation: KJV Bible, Python docs, fortunes, Chinese fortunes/poems.

Each row is one natural unit (a Bible chapter, a run of doc paragraphs, one fortune/poem) with
columns id, text, source. The train/heldout split is decided by a hash of the text, so it is
deterministic, identical wherever a text appears (text-en reuses each corpus' split), and a
duplicated text can never sit on both sides.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from distill.errors import DistillError

logger = logging.getLogger(__name__)

KJV_VERSES = 31_102
HELDOUT_EVERY = 20  # 1 in 20 texts (5 %) is held out
CHUNK_WORDS = 256  # doc paragraphs are merged up to this many words: long enough for LM context

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_OVERSTRIKE = re.compile(r".\x08")  # "_\bX" / "X\bX" (underline/bold on a teletype) -> "X"


def split_of(text: str) -> str:
    """'heldout' for 1 in HELDOUT_EVERY texts by sha256 of the text, else 'train'."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_EVERY == 0 else "train"


def clean(text: str) -> str:
    return _OVERSTRIKE.sub("", _ANSI.sub("", text)).strip()


def kjv_chapters(bible_root: Path, text_root: Path) -> Iterator[dict]:
    """Run the package's own `bible` reader over the compressed text, one row per chapter."""
    binary = bible_root / "usr/bin/bible"
    # The reader cannot open long data paths, so it runs beside the data file with a short name.
    proc = subprocess.run([str(binary.resolve()), "-f", "-d", "bible.data", "gen1:1-rev22:21"],
                          cwd=text_root / "usr/lib", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise DistillError(f"the KJV reader failed: {proc.stderr.strip()[:200]}",
                           "check that libreadline8 is installed (apt-get install libreadline8)")
    if len(proc.stdout.splitlines()) != KJV_VERSES:
        raise DistillError(f"the KJV reader printed {len(proc.stdout.splitlines())} verses, expected {KJV_VERSES}",
                           "check the bible-kjv pins")
    chapters: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if m:
            chapters.setdefault(f"{m.group(1)}{m.group(2)}", []).append(m.group(4).strip())
    for chapter, verses in chapters.items():
        yield {"id": f"kjv/{chapter}", "text": " ".join(verses), "source": "bible-kjv 4.38"}


def paragraphs_to_chunks(paragraphs: list[str], max_words: int = CHUNK_WORDS) -> list[str]:
    """Greedily merge consecutive paragraphs while the chunk stays within `max_words`."""
    chunks, current, words = [], [], 0
    for para in paragraphs:
        n = len(para.split())
        if current and words + n > max_words:
            chunks.append("\n\n".join(current))
            current, words = [], 0
        current.append(para)
        words += n
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def pydocs_chunks(root: Path) -> Iterator[dict]:
    sources = root / "usr/share/doc/python3.11/html/_sources"
    for path in sorted(sources.rglob("*.txt")):
        rel = path.relative_to(sources).as_posix().removesuffix(".rst.txt").removesuffix(".txt")
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
        for k, chunk in enumerate(paragraphs_to_chunks(paragraphs)):
            yield {"id": f"pydocs/{rel}/{k}", "text": chunk, "source": "python3.11-doc 3.11.2"}


def fortune_file(path: Path, corpus: str, source: str) -> Iterator[dict]:
    """A fortune(6) data file: entries separated by lines holding a single '%'."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    for k, entry in enumerate(re.split(r"\n%\n", raw)):
        text = clean(entry.strip().strip("%"))
        if text:
            yield {"id": f"{corpus}/{path.name}/{k}", "text": text, "source": source}


def _fortune_files(root: Path) -> list[Path]:
    folder = root / "usr/share/games/fortunes"
    # ascii-art is pictures, not language; *.dat are indexes; *.u8 are links to the same files.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
                  and p.suffix not in (".dat", ".u8") and p.name != "ascii-art")


def corpus_rows(corpus: str, files: dict[str, Path]) -> Iterator[dict]:
    if corpus == "kjv":
        yield from kjv_chapters(files["bible-kjv"], files["bible-kjv-text"])
    elif corpus == "pydocs":
        yield from pydocs_chunks(files["python3.11-doc"])
    elif corpus == "fortunes":
        for package in ("fortunes", "fortunes-min"):
            for path in _fortune_files(files[package]):
                yield from fortune_file(path, "fortunes", f"{package} 1.99.1")
    elif corpus == "fortunes-zh":
        for path in _fortune_files(files["fortunes-zh"]):
            yield from fortune_file(path, "fortunes-zh", "fortunes-zh 2.98")
    else:
        raise DistillError(f"unknown corpus '{corpus}'", "use kjv, pydocs, fortunes or fortunes-zh")


def split_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Deduplicate exact texts (first wins) and split by `split_of`."""
    seen, out = set(), {"train": [], "heldout": []}
    for row in rows:
        if row["text"] in seen:
            continue
        seen.add(row["text"])
        out[split_of(row["text"])].append(row)
    return out


def build_corpus(out_dir: Path, files: dict[str, Path], corpora: tuple[str, ...]) -> dict:
    import datasets

    from distill.assets import DATA_DIR

    rows = [row for corpus in corpora for row in corpus_rows(corpus, files)]
    parts = split_rows(rows)
    features = datasets.Features({k: datasets.Value("string") for k in ("id", "text", "source")})
    data = datasets.DatasetDict({k: datasets.Dataset.from_list(v, features=features) for k, v in parts.items()})
    data.save_to_disk(str(out_dir / DATA_DIR))
    words = {k: sum(len(r["text"].split()) for r in v) for k, v in parts.items()}
    return {"rows": {k: len(v) for k, v in parts.items()}, "words": words,
            "characters": {k: sum(len(r["text"]) for r in v) for k, v in parts.items()}}
