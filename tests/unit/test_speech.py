"""ASR distillation pieces: Whisper student init by decoder layer map, label padding, WER filter."""

from __future__ import annotations

import pytest
import torch

from distill import speech
from distill.errors import DistillError


def tiny_whisper(decoder_layers: int = 4):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=300, num_mel_bins=16, encoder_layers=2, decoder_layers=decoder_layers,
                           d_model=32, encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=20,
                           max_target_positions=32, pad_token_id=0, decoder_start_token_id=1,
                           eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config).eval()


def test_student_keeps_encoder_and_first_last_decoder_layers():
    teacher = tiny_whisper(4)
    student, keep = speech.whisper_student(teacher, 2)
    assert keep == [0, 3]
    assert student.config.decoder_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for key in t:
        if key.startswith("model.encoder.") or key.startswith("model.decoder.embed"):
            assert torch.equal(t[key], s[key]), key
    for new, old in enumerate(keep):
        for name in ("self_attn.q_proj.weight", "encoder_attn.k_proj.weight", "fc2.weight"):
            assert torch.equal(s[f"model.decoder.layers.{new}.{name}"], t[f"model.decoder.layers.{old}.{name}"])


def test_full_depth_student_computes_the_teacher():
    teacher = tiny_whisper(3)
    student, keep = speech.whisper_student(teacher, 3)
    assert keep == [0, 1, 2]
    feats = torch.randn(2, 16, 40)
    dec = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    with torch.no_grad():
        a = teacher(input_features=feats, decoder_input_ids=dec).logits
        b = student.eval()(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(a, b)


def test_student_deeper_than_teacher_is_an_error():
    with pytest.raises(DistillError, match="exceeds the teacher's 2"):
        speech.whisper_student(tiny_whisper(2), 3)


def test_pad_labels_marks_padding_ignored():
    out = speech.pad_labels([[5, 6, 2], [7, 2]])
    assert out.tolist() == [[5, 6, 2], [7, 2, -100]]


def test_wer_filter_against_hand_counted_pairs():
    refs = ["the cat sat on the mat", "hello world", "red green blue yellow", "   "]
    hyps = ["the cat sat on the mat", "hello there world", "red green", "anything"]
    # WERs: 0/6, 1/2 (one insertion), 2/4 (two deletions); an empty reference is never kept
    assert speech.wer_filter(hyps, refs, 0.1) == [True, False, False, False]
    assert speech.wer_filter(hyps, refs, 0.5) == [True, True, True, False]
    assert speech.wer_filter(hyps, refs, None) == [True, True, True, False]
