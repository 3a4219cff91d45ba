"""Text data for LM training: read a corpus, tokenize once, pack into fixed-length blocks.

The order of blocks is a pure function of (seed, epoch), so the batch at any step can be rebuilt
from the step number alone: that is what makes resume exact without saving iterator state.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import DistillError

if TYPE_CHECKING:
    import torch

    from distill.recipe import TextData

logger = logging.getLogger(__name__)


def read_texts(source: str, split: str) -> list[str]:
    """Documents from `asset:<id>`, a .txt file (blank-line separated), .jsonl ("text"), or a dir."""
    if source.startswith("asset:"):
        from distill.assets import load_dataset

        ds = load_dataset(source.removeprefix("asset:"), split=split)
        return list(ds["text"])
    path = Path(source).expanduser()
    if not path.exists():
        raise DistillError(f"data source '{source}' not found",
                           "give a .txt/.jsonl file, a directory of .txt, or asset:<id>")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    texts: list[str] = []
    for file in files:
        if file.suffix == ".jsonl":
            for n, line in enumerate(file.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        texts.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise DistillError(f"{file}:{n} is not a JSON object with a 'text' field",
                                           'write one {"text": ...} object per line') from None
        else:
            texts.extend(p.strip() for p in file.read_text(errors="replace").split("\n\n") if p.strip())
    if not texts:
        raise DistillError(f"data source '{source}' holds no text", "point at a non-empty corpus")
    return texts


def tokenize(texts: list[str], tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """One 1-D LongTensor: documents joined with EOS so blocks may span document boundaries."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_tokens and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


@dataclass
class Blocks:
    """Token blocks of shape [n, seq_len] with a deterministic, seed-driven order."""

    tokens: torch.Tensor  # [n_blocks, seq_len]
    seed: int

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, position: int, batch_size: int) -> list[int]:
        """Block indices at stream positions `position` .. `position+batch_size-1`."""
        import torch

        n = len(self)
        perms: dict[int, torch.Tensor] = {}
        rows = []
        for p in range(position, position + batch_size):
            epoch, offset = divmod(p, n)
            if epoch not in perms:
                gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                perms[epoch] = torch.randperm(n, generator=gen)
            rows.append(int(perms[epoch][offset]))
        return rows

    def batch(self, position: int, batch_size: int) -> torch.Tensor:
        """Rows number `position` .. `position+batch_size-1` of the endless shuffled stream."""
        return self.tokens[self.rows(position, batch_size)]


def pack(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    n = tokens.numel() // seq_len
    if n == 0:
        raise DistillError(f"corpus has {tokens.numel()} tokens, fewer than one block of {seq_len}",
                           "use more text or a smaller seq_len")
    return tokens[: n * seq_len].view(n, seq_len)


def text_blocks(spec: TextData, tokenizer, seed: int) -> tuple[Blocks, torch.Tensor | None]:
    """(training blocks, held-out blocks or None) for a TextData spec."""
    heldout = None
    if spec.source.startswith("asset:"):
        train_ids = tokenize(read_texts(spec.source, spec.split), tokenizer, spec.max_tokens)
        try:
            held_ids = tokenize(read_texts(spec.source, "heldout"), tokenizer, 64 * spec.seq_len)
            heldout = pack(held_ids, spec.seq_len)
        except DistillError:
            heldout = None
        train = pack(train_ids, spec.seq_len)
    else:
        all_blocks = pack(tokenize(read_texts(spec.source, spec.split), tokenizer, spec.max_tokens),
                          spec.seq_len)
        n_held = int(len(all_blocks) * spec.heldout_fraction)
        if n_held and len(all_blocks) - n_held >= 1:
            train, heldout = all_blocks[:-n_held], all_blocks[-n_held:]
        else:
            train = all_blocks
    logger.info("data: %d training blocks x %d tokens (%s held-out blocks)", len(train), spec.seq_len,
                0 if heldout is None else len(heldout))
    return Blocks(train, seed), heldout
