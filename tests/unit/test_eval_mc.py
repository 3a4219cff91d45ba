"""Multiple-choice scoring: prompts rendered by lm-eval itself, and the one-pass fast path
against per-choice scoring of the full sequence."""

from __future__ import annotations

import json

import pytest
import torch

from distill.evaluation import mc
from distill.evaluation.adapters import load_hf_causal_lm
from distill.evaluation.tasks import load_task
from test_eval_tiny import mmlu_rows, tiny_llama


def _lm_eval_task(tmp_path, spec, test_rows, dev_rows, subject):
    """lm-eval's own ConfigurableTask over the same rows, one subject (as its per-subject tasks)."""
    task_mod = pytest.importorskip("lm_eval.api.task")
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in test_rows))
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in dev_rows))
    cfg = {"task": f"mmlu_{subject}", "dataset_path": "json",
           "dataset_kwargs": {"data_files": {"test": str(tmp_path / "test.jsonl"),
                                             "dev": str(tmp_path / "dev.jsonl")}},
           "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
           "output_type": "multiple_choice",
           # Literal copies of lm-eval 0.4.13 tasks/mmlu/default/_default_template_yaml + subject yaml
           "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. "
                          "{{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
           "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
           "description": f"The following are multiple choice questions (with answers) about "
                          f"{' '.join(subject.split('_'))}.\n\n",
           "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    return task_mod.ConfigurableTask(config=cfg)


@pytest.mark.parametrize("shots", [0, 5])
def test_prompts_equal_lm_eval_rendering(tmp_path, shots):
    subject = "high_school_biology"
    test_rows = [r for r in mmlu_rows(12) if r["subject"] == subject]
    dev_all = mmlu_rows(20, offset=100)
    dev_rows = [r for r in dev_all if r["subject"] == subject]
    spec = load_task("mmlu-mini-5shot").model_copy(update={"num_fewshot": shots})
    ours = mc.build_requests(spec, test_rows, dev_all)  # ours picks the subject's exemplars itself
    task = _lm_eval_task(tmp_path, spec, test_rows, dev_rows, subject)
    for req, doc in zip(ours, task.test_docs()):
        ctx = task.fewshot_context(doc, num_fewshot=shots)
        instances = task.construct_requests(doc, ctx)
        assert [(req.context, c) for c in req.continuations] == [i.arguments for i in instances]
        assert req.gold == doc["answer"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_hf_causal_lm(str(tiny_llama(tmp_path_factory.mktemp("llama"))))


def test_one_pass_scoring_equals_per_choice_full_sequence(lm):
    spec = load_task("mmlu-mini-0shot")
    reqs = mc.build_requests(spec, mmlu_rows(10), [])
    fast = mc.score_requests(lm, reqs, batch_size=4)
    tok = lm.tokenizer
    for r, lls in zip(reqs, fast):
        for c, ll in zip(r.continuations, lls):
            # Independent reference: one unpadded forward per (context, choice), log_softmax.
            ctx = tok(r.context)["input_ids"]
            whole = tok(r.context + c)["input_ids"]
            assert len(whole) == len(ctx) + 1  # the letters really are single tokens here
            with torch.no_grad():
                logits = lm.model(torch.tensor([whole])).logits[0]
            ref = torch.log_softmax(logits[-2], -1)[whole[-1]].item()
            assert ll == pytest.approx(ref, abs=1e-4)


def test_batching_and_padding_do_not_change_choices(lm):
    reqs = mc.build_requests(load_task("mmlu-mini-0shot"), mmlu_rows(12), [])
    one = mc.score_requests(lm, reqs, batch_size=1)
    many = mc.score_requests(lm, reqs, batch_size=5)
    assert [max(range(4), key=ll.__getitem__) for ll in one] == \
           [max(range(4), key=ll.__getitem__) for ll in many]
    for a, b in zip(one, many):
        assert a == pytest.approx(b, abs=1e-4)


def test_multi_token_choices_fall_back_to_per_choice(tmp_path):
    lm = load_hf_causal_lm(str(tiny_llama(tmp_path / "byte", tokenizer="bytes")))
    reqs = mc.build_requests(load_task("mmlu-mini-0shot"), mmlu_rows(3), [])
    lls = mc.score_requests(lm, reqs, batch_size=2)
    tok = lm.tokenizer
    r = reqs[0]
    whole = tok(r.context + r.continuations[2])["input_ids"]
    n_ctx = len(tok(r.context)["input_ids"])
    assert len(whole) - n_ctx == 2  # " C" is two byte tokens
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([whole])).logits[0], -1)
    ref = sum(logp[t - 1, whole[t]].item() for t in range(n_ctx, len(whole)))
    assert lls[0][2] == pytest.approx(ref, abs=1e-4)


def test_shared_fewshot_prefix_scores_like_full_prompts(lm, monkeypatch):
    rows = mmlu_rows(12)
    reqs = mc.build_requests(load_task("mmlu-mini-5shot"), rows, mmlu_rows(40, offset=100))
    ids = [lm.tokenizer(r.context)["input_ids"] for r in reqs]
    by_group: dict = {}
    for r, seq in zip(reqs, ids):
        by_group.setdefault(r.group, []).append(seq)
    shared = [mc.common_prefix_len(g) for g in by_group.values() if len(g) > 1]
    assert shared and max(shared) >= mc.MIN_SHARED_PREFIX  # the exemplars really are shared
    assert lm.can_share_prefix
    cached = mc.score_requests(lm, reqs, batch_size=3)
    monkeypatch.setattr(mc, "MIN_SHARED_PREFIX", 10**9)  # force plain full-prompt scoring
    full = mc.score_requests(lm, reqs, batch_size=3)
    for a, b in zip(cached, full):
        assert a == pytest.approx(b, abs=1e-4)
        assert max(range(4), key=a.__getitem__) == max(range(4), key=b.__getitem__)


def test_common_prefix_len():
    assert mc.common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert mc.common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # always leaves a token to score
    assert mc.common_prefix_len([[7], [7]]) == 0
