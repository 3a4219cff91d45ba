"""Builders for the evaluation tests: tiny random HF models and tokenizers, written to tmp dirs.

(No tests here; the name only keeps the file with the evaluation tests.)
"""

from __future__ import annotations

from pathlib import Path

LETTERS = ("A", "B", "C", "D")


def letter_tokenizer():
    """Byte-level BPE whose only merges are ' A'..' D': MMLU letters become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    space = chars[ord(" ")]
    for i, letter in enumerate(LETTERS):
        vocab[space + letter] = 256 + i
    vocab["<|endoftext|>"] = 260
    merges = [(space, letter) for letter in LETTERS]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", model_max_length=1 << 20)


def tiny_llama(out: Path, tokenizer="letters", seed: int = 0) -> Path:
    """A 2-layer random Llama saved as a plain HF directory (no manifest)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.models import byte_tokenizer

    tok = letter_tokenizer() if tokenizer == "letters" else byte_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than init's 0.02 std, so choices are not near-ties
        model.lm_head.weight.mul_(20)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)


def mmlu_rows(n: int, subjects=("abstract_algebra", "high_school_biology"), offset: int = 0):
    """MMLU-shaped rows (the asset contract) with varied lengths."""
    rows = []
    for i in range(n):
        subject = subjects[i % len(subjects)]
        words = " ".join(f"w{j}" for j in range((i * 7) % 23 + 1))
        rows.append({"id": f"{subject}-{i + offset}", "subject": subject,
                     "question": f"  Question {i + offset} about {words}?  ",
                     "choices": [f"option {k} {words[: k * 3]}" for k in range(4)],
                     "answer": (i * 3) % 4})
    return rows
