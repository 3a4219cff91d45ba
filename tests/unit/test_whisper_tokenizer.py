"""The BPE merge Whisper's multilingual HF files lack: found, restored in place, saved with exports."""

import json

import pytest

from distill import whisper_tokenizer as wt

# 'Ġt' (id 8) has no merge making it, as 'Ġt' (256) in whisper-base's tokenizer.json
VOCAB = {"a": 0, "b": 1, "c": 2, "t": 3, "h": 4, "e": 5, "Ġ": 6, "ab": 7, "Ġt": 8, "Ġth": 9, "Ġthe": 10,
         "abc": 11, "<|endoftext|>": 12}
MERGES = [("a", "b"), ("Ġt", "h"), ("Ġth", "e"), ("ab", "c")]


def _files(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    return str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")


def test_missing_merge_is_the_lowest_id_split_and_goes_in_rank_order():
    extra = wt.missing_merges(VOCAB, MERGES)
    assert extra == [("Ġ", "t")]  # specials and single characters need none
    assert wt.with_merges(VOCAB, MERGES, extra) == [("a", "b"), ("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("ab", "c")]


@pytest.mark.parametrize("fast", [True, False])
def test_repair_encodes_as_the_vocabulary_ranks_say_and_is_idempotent(tmp_path, fast):
    from transformers import WhisperTokenizer, WhisperTokenizerFast

    vocab_file, merges_file = _files(tmp_path)
    tok = (WhisperTokenizerFast if fast else WhisperTokenizer)(vocab_file=vocab_file, merges_file=merges_file)
    assert tok(" the", add_special_tokens=False).input_ids == [6, 3, 4, 5]  # 'Ġ' + 't' + 'h' + 'e'
    assert tok(" abc", add_special_tokens=False).input_ids == [6, 11]
    assert wt.repair(tok) == 1
    assert tok(" the", add_special_tokens=False).input_ids == [10]
    assert tok(" abc", add_special_tokens=False).input_ids == [6, 11]  # other words as before
    assert tok.decode([10]) == " the"
    assert wt.repair(tok) == 0


def test_repaired_fast_tokenizer_saves_the_merge(tmp_path):
    from transformers import WhisperTokenizerFast

    vocab_file, merges_file = _files(tmp_path)
    tok = WhisperTokenizerFast(vocab_file=vocab_file, merges_file=merges_file)
    wt.repair(tok)
    tok.save_pretrained(tmp_path / "out")
    again = WhisperTokenizerFast.from_pretrained(tmp_path / "out")
    assert again(" the", add_special_tokens=False).input_ids == [10]
    assert wt.repair(again) == 0


def test_other_tokenizers_are_left_alone(tmp_path):
    from transformers import GPT2TokenizerFast

    vocab_file, merges_file = _files(tmp_path)
    tok = GPT2TokenizerFast(vocab_file=vocab_file, merges_file=merges_file)
    assert wt.repair(tok) == 0
    assert tok(" the").input_ids == [6, 3, 4, 5]
