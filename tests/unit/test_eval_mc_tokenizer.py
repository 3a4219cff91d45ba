"""The MMLU tokenizer convention: the harness encodes prompts and choices with the tokenizer's own
special-token default, as lm-eval 0.4.13's HF backend does with `add_bos_token` unset. So a
tokenizer that prepends BOS gets BOS in both, one that does not (SmolLM2, as its GGUF declares)
gets it in neither, and the log-likelihoods agree item by item."""

from __future__ import annotations

import pytest

from distill.evaluation import mc
from distill.evaluation.adapters import CausalLM
from distill.evaluation.tasks import load_task
from test_eval_tiny import letter_tokenizer, mmlu_rows


def _tokenizer(bos: bool):
    tok = letter_tokenizer()
    if not bos:
        return tok
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = tok.backend_tokenizer
    backend.add_special_tokens(["<s>"])
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", model_max_length=1 << 20)


def _model(vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # choices far from ties, so argmax comparisons are meaningful
    return model


@pytest.mark.slow  # importing lm-eval alone takes ~20 s on a busy 2-core machine
@pytest.mark.parametrize("bos", [False, True], ids=["no-bos (SmolLM2)", "bos-by-default"])
def test_harness_and_lm_eval_encode_and_score_mmlu_identically(bos):
    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface", reason="lm-eval (dev extra) not installed")
    from lm_eval.api.instance import Instance

    tok = _tokenizer(bos)
    assert (tok("Question").input_ids[0] == tok.bos_token_id) == bos
    model = _model(len(tok))
    spec = load_task("mmlu-mini-5shot")
    rows, dev = mmlu_rows(6), mmlu_rows(10, offset=100)
    requests = mc.build_requests(spec, rows, dev)
    ours = mc.score_requests(CausalLM(model, tok, backend="torch-eager", dtype="float32"), requests, batch_size=4)

    hflm = lm_eval_hf.HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    for r in requests:  # the same token ids: context, and continuation = encode(ctx + cont) - encode(ctx)
        for cont in r.continuations:
            ctx_ids, cont_ids = hflm._encode_pair(r.context, cont)
            whole = tok(r.context + cont).input_ids
            assert ctx_ids == tok(r.context).input_ids and cont_ids == whole[len(ctx_ids):]
            assert (ctx_ids[0] == tok.bos_token_id) == bos
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, c), idx=j)
                 for r in requests for j, c in enumerate(r.continuations)]
    theirs = [ll for ll, _ in hflm.loglikelihood(instances, disable_tqdm=True)]
    flat = [ll for item in ours for ll in item]
    assert flat == pytest.approx(theirs, abs=2e-4)
