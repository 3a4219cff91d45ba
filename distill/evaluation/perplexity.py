"""Held-out perplexity: every token of every document is predicted exactly once.

Each document is tokenised (no special tokens), prefixed with the tokenizer's BOS or EOS so its
first token is predicted too, and cut into disjoint windows of `window` tokens, each conditioned
on the one token before it (lm-eval's rolling loglikelihood with context 1). Perplexity is per
token of the model's own tokenizer, so it is only comparable between models sharing a tokenizer;
bits per byte is comparable across tokenizers. The record names the tokenizer.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from distill.errors import DistillError
from distill.evaluation import metrics
from distill.evaluation.data import item_id
from distill.evaluation.tasks import PerplexityTask

logger = logging.getLogger(__name__)


def windows(tokens: list[int], prefix: int, window: int) -> list[tuple[list[int], int]]:
    """-> [(input ids, number of scored tokens at the end)] covering `tokens` exactly once."""
    out = []
    prev = prefix
    for start in range(0, len(tokens), window):
        chunk = tokens[start: start + window]
        out.append(([prev] + chunk, len(chunk)))
        prev = chunk[-1]
    return out


def tokenizer_name(tok) -> str:
    """Tokenizer class, source (a directory's name only: records carry no machine paths), vocab."""
    from pathlib import Path

    source = getattr(tok, "name_or_path", "") or "in-memory"
    if Path(source).is_absolute():
        source = Path(source).name
    return f"{type(tok).__name__}({source}, vocab={len(tok)})"


def run(spec: PerplexityTask, lm, rows: list[dict], batch_size: int):
    """-> (metric dicts, per-document rows)."""
    tok = lm.tokenizer
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if prefix is None:
        raise DistillError("the tokenizer has neither BOS nor EOS token to start documents with",
                           "save the tokenizer with an eos_token")
    rows = rows[:: spec.stride]
    if spec.max_docs is not None:
        rows = rows[: spec.max_docs]
    window = min(spec.window, lm.max_length - 1)
    texts = [str(r[spec.text_field]) for r in rows]
    encoded = tok(texts, add_special_tokens=False)["input_ids"]
    jobs = []  # (doc index, ids, n scored)
    for d, ids in enumerate(encoded):
        jobs.extend((d, seq, n) for seq, n in windows(ids, prefix, window))
    nll = [0.0] * len(rows)
    jobs.sort(key=lambda j: len(j[1]), reverse=True)
    for start in tqdm(range(0, len(jobs), batch_size), desc=spec.name, unit="batch", leave=False):
        batch = jobs[start: start + batch_size]
        for (d, _, n), lps in zip(batch, lm.token_logprobs([j[1] for j in batch])):
            nll[d] -= float(lps[-n:].sum())
    samples = [{"id": item_id(r, spec, i), "nll": nll[i], "tokens": len(encoded[i]),
                "bytes": len(texts[i].encode("utf-8"))} for i, r in enumerate(rows)]
    stats = metrics.perplexity(sum(nll), sum(s["tokens"] for s in samples), sum(s["bytes"] for s in samples))
    extra = {"tokenizer": tokenizer_name(tok), "n_tokens": stats["n_tokens"], "n_bytes": stats["n_bytes"],
             "window": window, "n_docs": len(rows)}
    found = []
    for name in spec.metrics:
        if name not in ("perplexity", "bits_per_byte"):
            raise DistillError(f"task '{spec.name}': unknown metric '{name}'", "use perplexity or bits_per_byte")
        found.append({"metric": name, "value": stats[name], "stderr": None, "n": stats["n_tokens"],
                      "higher_is_better": False, "extra": extra})
    return found, samples
