"""Multiple-choice tasks scored by log-likelihood, prompt-for-prompt identical to lm-eval.

Prompt = description + k exemplars (text + target_delimiter + gold choice + fewshot_delimiter,
the first k of the same group, in order) + text; each choice's continuation is target_delimiter +
choice, tokenised the way lm-eval's HF backend does it: encode(context + continuation) minus
encode(context), tokenizer defaults for special tokens. When every continuation is one token, one
forward pass over the context yields all choices' log-likelihoods at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from tqdm import tqdm

from distill.errors import DistillError
from distill.evaluation import metrics
from distill.evaluation.data import item_id, load_source
from distill.evaluation.tasks import EVAL_DIR, MultipleChoiceTask

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _jinja():
    # Sandboxed: task YAML is data and may come from users; lm-eval renders the same way
    # (StrictUndefined, trailing newlines kept).
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


def render(template: str, row: dict) -> str:
    if "{{" not in template and "{%" not in template:
        return template
    return _jinja().from_string(template).render(**row)


@dataclass
class Request:
    item_id: str
    group: str
    context: str
    continuations: list[str]
    gold: int


def build_requests(spec: MultipleChoiceTask, rows: list[dict], exemplars: list[dict]) -> list[Request]:
    """One Request per item: the full prompt text and the choice continuations."""
    pools: dict[str, list[dict]] = {}
    for ex in exemplars:
        pools.setdefault(str(ex.get(spec.group_field, "")) if spec.group_field else "", []).append(ex)
    requests = []
    short_groups = set()
    for i, row in enumerate(rows):
        group = str(row.get(spec.group_field, "")) if spec.group_field else ""
        shots = pools.get(group, [])[: spec.num_fewshot]
        if len(shots) < spec.num_fewshot:
            short_groups.add(group)
        parts = [render(spec.description, row)]
        for ex in shots:
            choices = [render(c, ex) for c in spec.doc_to_choice]
            parts.append(render(spec.doc_to_text, ex) + spec.target_delimiter
                         + choices[int(ex[spec.doc_to_target])] + spec.fewshot_delimiter)
        parts.append(render(spec.doc_to_text, row))
        context = "".join(parts)
        continuations = [spec.target_delimiter + render(c, row) for c in spec.doc_to_choice]
        # lm-eval moves trailing context whitespace onto the continuation before encoding.
        n_sp = len(context) - len(context.rstrip())
        if n_sp:
            continuations = [context[-n_sp:] + c for c in continuations]
            context = context[:-n_sp]
        requests.append(Request(item_id(row, spec, i), group, context, continuations,
                                int(row[spec.doc_to_target])))
    if short_groups:
        logger.warning("task %s: %d group(s) have fewer than %d exemplars (%s): using what exists",
                       spec.name, len(short_groups), spec.num_fewshot, ", ".join(sorted(short_groups)[:5]))
    return requests


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts)["input_ids"]


def score_requests(lm, requests: list[Request], batch_size: int = 8, desc: str = "mc") -> list[list[float]]:
    """[n][n_choices] log-likelihoods, in request order."""
    tok = lm.tokenizer
    ctx_enc = _encode(tok, [r.context for r in requests])
    whole_enc = _encode(tok, [r.context + c for r in requests for c in r.continuations])
    limit = lm.max_length
    fast, slow = [], []  # (request index, ids, continuation token lists)
    k = 0
    for i, r in enumerate(requests):
        conts = [whole_enc[k + j][len(ctx_enc[i]):] for j in range(len(r.continuations))]
        k += len(r.continuations)
        if any(len(c) == 0 for c in conts):
            raise DistillError(f"item {r.item_id}: a choice tokenises to nothing", "check doc_to_choice")
        if all(len(c) == 1 for c in conts):
            fast.append((i, ctx_enc[i], conts, r.group))
        else:
            slow.append((i, ctx_enc[i], conts))
    out: list[list[float] | None] = [None] * len(requests)
    if fast:
        _score_fast(lm, fast, out, batch_size, limit, desc)
    if slow:
        logger.info("%s: %d item(s) have multi-token choices: scoring each choice separately", desc, len(slow))
        _score_slow(lm, slow, out, batch_size, limit, desc)
    return out  # type: ignore[return-value]


def _batches(items: list, batch_size: int, key):
    # Longest first: similar lengths share a batch (little padding) and an OOM shows at once.
    items = sorted(items, key=key, reverse=True)
    return [items[i: i + batch_size] for i in range(0, len(items), batch_size)]


MIN_SHARED_PREFIX = 32  # tokens; below this a cached prefix saves less than it costs


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix every sequence shares (always leaving one token each)."""
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _score_shared_prefix(lm, items, out, batch_size, limit, desc) -> list:
    """Score groups whose prompts share a long token prefix (few-shot exemplars) with one prefix
    pass per group; returns the items left for plain scoring."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(item[3], []).append(item)
    rest = []
    bar = tqdm(total=len(items), desc=f"{desc} (shared prefix)", unit="item", leave=False)
    for members in groups.values():
        n = common_prefix_len([ids for _, ids, _, _ in members]) if len(members) > 1 else 0
        if n < MIN_SHARED_PREFIX or any(len(ids) > limit for _, ids, _, _ in members):
            rest.extend(members)
            continue
        cache = lm.prefix_cache(members[0][1][:n])
        for batch in _batches(members, batch_size, key=lambda t: len(t[1])):
            logprobs = lm.prefixed_last_logprobs(cache, n, [ids[n:] for _, ids, _, _ in batch])
            for row, (i, _, conts, _) in enumerate(batch):
                out[i] = [float(logprobs[row, c[0]]) for c in conts]
            bar.update(len(batch))
    bar.close()
    return rest


def _score_fast(lm, items, out, batch_size, limit, desc):
    if getattr(lm, "can_share_prefix", False):
        items = _score_shared_prefix(lm, items, out, batch_size, limit, desc)
    batches = _batches(items, batch_size, key=lambda t: len(t[1]))
    for batch in tqdm(batches, desc=f"{desc} (1 pass/item)", unit="batch", leave=False):
        logprobs = lm.last_logprobs([ids[-limit:] for _, ids, _, _ in batch])
        for row, (i, _, conts, _) in enumerate(batch):
            out[i] = [float(logprobs[row, c[0]]) for c in conts]


def _score_slow(lm, items, out, batch_size, limit, desc):
    flat = [(i, j, (ids + c)[-(limit + 1):], len(c)) for i, ids, conts in items for j, c in enumerate(conts)]
    for i, _, conts in items:
        out[i] = [0.0] * len(conts)
    for batch in tqdm(_batches(flat, batch_size, key=lambda t: len(t[2])), desc=f"{desc} (per choice)",
                      unit="batch", leave=False):
        token_lps = lm.token_logprobs([seq for _, _, seq, _ in batch])
        for (i, j, _, n_cont), lps in zip(batch, token_lps):
            out[i][j] = float(lps[-n_cont:].sum())


def run(spec: MultipleChoiceTask, lm, rows: list[dict], batch_size: int, eval_dir=EVAL_DIR):
    """Score a multiple-choice task -> (metric dicts, per-sample rows)."""
    exemplars: list[dict] = []
    if spec.num_fewshot > 0:
        if not spec.fewshot_dataset:
            raise DistillError(f"task '{spec.name}' asks for {spec.num_fewshot} shots but names no "
                               "fewshot_dataset", "set fewshot_dataset in the task YAML")
        exemplars = load_source(spec.fewshot_dataset, spec.fewshot_split, eval_dir)
    requests = build_requests(spec, rows, exemplars)
    lls = score_requests(lm, requests, batch_size, desc=spec.name)
    gold = [r.gold for r in requests]
    groups = [r.group for r in requests]
    stats = metrics.choice_accuracy(lls, gold, groups)
    samples = [{"id": r.item_id, "group": r.group, "gold": r.gold, "pred": metrics.argmax_first(ll),
                "correct": metrics.argmax_first(ll) == r.gold, "loglikelihoods": ll}
               for r, ll in zip(requests, lls)]
    found = []
    for name in spec.metrics:
        if name not in ("acc", "acc_macro"):
            raise DistillError(f"task '{spec.name}': unknown metric '{name}'", "use acc or acc_macro")
        found.append({"metric": name, "value": stats[name], "stderr": stats[f"{name}_stderr"],
                      "n": stats["n"], "higher_is_better": True,
                      "extra": {"n_groups": stats["n_groups"], "num_fewshot": spec.num_fewshot}})
    return found, samples
