"""Whisper's tokenizer as the model was trained: the BPE merge its HF files lack, restored.

Whisper's vocabulary is tiktoken's: a text token's id is its merge rank, so every multi-byte token
is made by exactly one merge. The HF-format tokenizer of the multilingual models (whisper-base's,
as shipped in its CTranslate2 package) has 49,999 merges and lacks the first one, 'Ġ' + 't' -> 'Ġt'
(id 256). Without it ' the', ' to', ' that' and every other word starting with ' t' encode as
'Ġ' + 'the', ..., sequences the model never emitted: whisper-base's per-token cross-entropy on 64
asterisk-en train references is 1.63 nats with those labels and 0.47 with its own tokenization (33
of the 64 transcripts encode differently). Training on reference transcripts (LoRA, reference
labels) would first have to teach the model a new spelling of common words, and a `context` prompt
would reach it in a form it never saw. Decoding ids to text needs no merges and is unaffected.

`whisper_processor` loads a processor with the merge restored; exports save the repaired files.
English-only Whisper vocabularies (GPT-2's) are complete, and nothing changes there.
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


def missing_merges(vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Merges for the text tokens no merge makes: for each, its split into two vocabulary tokens
    with the lowest ids (the ranks tiktoken merged first). Added/special tokens have no split."""
    made = {a + b for a, b in merges}
    found = []
    for token in vocab:
        if len(token) > 1 and token not in made:
            splits = [(token[:k], token[k:]) for k in range(1, len(token))
                      if token[:k] in vocab and token[k:] in vocab]
            if splits:
                found.append(min(splits, key=lambda ab: max(vocab[ab[0]], vocab[ab[1]])))
    return found


def with_merges(vocab: dict[str, int], merges: list[tuple[str, str]],
                extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`merges` with each extra merge inserted before the first merge making a later token id."""
    out = list(merges)
    for a, b in sorted(extra, key=lambda ab: vocab[ab[0] + ab[1]]):
        rank = vocab[a + b]
        at = next((i for i, (x, y) in enumerate(out) if vocab.get(x + y, -1) > rank), len(out))
        out.insert(at, (a, b))
    return out


def repair(tokenizer) -> int:
    """Restore, in place, the merges a Whisper tokenizer (fast or slow) lacks; -> how many."""
    if not type(tokenizer).__name__.startswith("Whisper"):
        return 0
    if hasattr(tokenizer, "backend_tokenizer"):  # fast: rebuild the Rust tokenizer from its JSON
        from tokenizers import Tokenizer

        state = json.loads(tokenizer.backend_tokenizer.to_str())
        model = state["model"]
        if model.get("type") != "BPE":
            return 0
        as_str = bool(model["merges"]) and isinstance(model["merges"][0], str)
        merges = [tuple(m.split(" ", 1)) if as_str else tuple(m) for m in model["merges"]]
        extra = missing_merges(model["vocab"], merges)
        if extra:
            full = with_merges(model["vocab"], merges, extra)
            model["merges"] = [" ".join(m) if as_str else list(m) for m in full]
            tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))
    else:  # slow: the ranks dict and its per-word cache
        ranked = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
        extra = missing_merges(tokenizer.encoder, ranked)
        if extra:
            full = with_merges(tokenizer.encoder, ranked, extra)
            tokenizer.bpe_ranks = {m: i for i, m in enumerate(full)}
            tokenizer.cache = {}
    if extra:
        logger.info("tokenizer: restored %d BPE merge(s) its files lack (%s): text now encodes as "
                    "Whisper was trained", len(extra), ", ".join(f"'{a}' + '{b}'" for a, b in extra[:3]))
    return len(extra)


def whisper_processor(path):
    """`WhisperProcessor.from_pretrained(path)` with its tokenizer repaired (see the module doc)."""
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(path)
    repair(processor.tokenizer)
    return processor
