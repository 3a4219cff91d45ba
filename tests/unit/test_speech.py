"""ASR distillation pieces: the Whisper student's three levers (decoder cut, encoder cut, shorter
window), label padding, WER filter, empty-label rate, bad audio."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill import speech
from distill.errors import DistillError


def tiny_whisper(decoder_layers: int = 4, encoder_layers: int = 2, seconds: int = 2):
    """A random Whisper whose window is `seconds` long (50 encoder positions a second, as Whisper)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=300, num_mel_bins=16, encoder_layers=encoder_layers,
                           decoder_layers=decoder_layers,
                           d_model=32, encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=50 * seconds,
                           max_target_positions=32, pad_token_id=0, decoder_start_token_id=1,
                           eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config).eval()


def test_student_keeps_encoder_and_first_last_decoder_layers():
    teacher = tiny_whisper(4)
    student, facts = speech.whisper_student(teacher, 2)
    keep = facts["decoder_layer_map"]
    assert keep == [0, 3]
    assert student.config.decoder_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for key in t:
        if key.startswith("model.encoder.") or key.startswith("model.decoder.embed"):
            assert torch.equal(t[key], s[key]), key
    for new, old in enumerate(keep):
        for name in ("self_attn.q_proj.weight", "encoder_attn.k_proj.weight", "fc2.weight"):
            assert torch.equal(s[f"model.decoder.layers.{new}.{name}"], t[f"model.decoder.layers.{old}.{name}"])


def test_full_depth_full_window_student_is_the_teacher():
    from distill import losses

    teacher = tiny_whisper(3)
    student, facts = speech.whisper_student(teacher)  # every lever left at the teacher's value
    assert facts["decoder_layer_map"] == [0, 1, 2] and facts["encoder_frames"] == 100
    feats = torch.randn(2, 16, 200)
    dec = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, -100, -100]])
    with torch.no_grad():
        a = teacher(input_features=feats, decoder_input_ids=dec).logits
        b = student(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(a, b)
    assert losses.kd_loss(b, a, labels, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    top_ids, top_logp = losses.top_k_logprobs(a, 300)  # the cache's form, every token kept
    assert losses.sparse_kd_loss(b, top_ids, top_logp, labels).item() == pytest.approx(0.0, abs=1e-5)


def test_encoder_cut_keeps_first_and_last_encoder_layers():
    teacher = tiny_whisper(2, encoder_layers=4)
    student, facts = speech.whisper_student(teacher, encoder_layers=2)
    assert facts["encoder_layer_map"] == [0, 3] and student.config.encoder_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([0, 3]):
        for name in ("self_attn.k_proj.weight", "fc1.weight", "final_layer_norm.bias"):
            assert torch.equal(s[f"model.encoder.layers.{new}.{name}"], t[f"model.encoder.layers.{old}.{name}"])
    assert torch.equal(s["model.encoder.layer_norm.weight"], t["model.encoder.layer_norm.weight"])


def test_window_cut_slices_the_teachers_positional_table_and_saves_hf_native(tmp_path):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    teacher = tiny_whisper(2, seconds=2)
    student, facts = speech.whisper_student(teacher, window_seconds=1)
    assert facts["encoder_frames"] == 50 and student.config.max_source_positions == 50
    table = teacher.model.encoder.embed_positions.weight
    assert torch.equal(student.model.encoder.embed_positions.weight, table[:50])
    with torch.no_grad():  # the student runs on 1-s features (100 mel frames), the teacher would refuse them
        student(input_features=torch.randn(1, 16, 100), decoder_input_ids=torch.tensor([[1, 5]]))
    fe = WhisperFeatureExtractor(feature_size=16, chunk_length=2)
    processor = SimpleNamespace(feature_extractor=fe)
    cut = speech.student_processor(processor, 1).feature_extractor
    assert fe.chunk_length == 2  # the teacher's processor is left alone
    student.save_pretrained(tmp_path)
    cut.save_pretrained(tmp_path)
    again = WhisperFeatureExtractor.from_pretrained(tmp_path)  # plain transformers, no custom code
    assert (again.chunk_length, again.n_samples, again.nb_max_frames) == (1, 16000, 100)
    assert again([torch.zeros(24000).numpy()], sampling_rate=16000, return_tensors="pt").input_features.shape[-1] == 100
    loaded = WhisperForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.encoder.embed_positions.weight, table[:50])


@pytest.mark.parametrize("kwargs, message", [
    ({"decoder_layers": 3}, "decoder_layers=3 exceeds the teacher's 2"),
    ({"encoder_layers": 3}, "encoder_layers=3 exceeds the teacher's 2"),
    ({"window_seconds": 3}, "window_seconds=3 exceeds the teacher's 2 s window"),
])
def test_a_lever_that_grows_the_teacher_is_an_error(kwargs, message):
    with pytest.raises(DistillError, match=message):
        speech.whisper_student(tiny_whisper(2), **kwargs)


def test_validate_rejects_levers_beyond_the_teacher(tmp_path):
    """`distill validate` reads the teacher's config.json (no torch) and names the bad lever."""
    from distill import gate
    from distill.recipe import load as load_recipe

    tiny_whisper(2).save_pretrained(tmp_path / "teacher")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: r
stages:
  - kind: distill-asr
    teacher: {tmp_path / 'teacher'}
    student: {{window_seconds: 5}}
    data: {{source: x.jsonl}}
""")
    with pytest.raises(DistillError, match="stages.0 .*window_seconds=5 exceeds the teacher's 2 s"):
        gate.check_recipe(load_recipe(recipe, []))
    gate.check_recipe(load_recipe(recipe, ["stages.0.student.window_seconds=1"]))
    with pytest.raises(DistillError, match="decoder_layers=4 exceeds the teacher's 2"):
        gate.check_recipe(load_recipe(recipe, ["stages.0.student.window_seconds=1",
                                               "stages.0.student.decoder_layers=4"]))


def test_decode_skips_and_counts_bad_audio_and_resamples(tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "ok.wav", np.full(16000, 0.1, dtype=np.float32), 16000)
    sf.write(tmp_path / "8k.wav", np.sin(np.arange(8000) / 5).astype(np.float32) * 0.5, 8000)
    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not a wave")
    utts = [speech.Utterance(n, str(tmp_path / f"{n}.wav"), "words") for n in ("ok", "8k", "silent", "broken")]
    kept, counts = speech.decode(utts, 30.0)
    assert [u.id for u in kept] == ["ok", "8k", "silent"]
    assert counts == {"decode_error": 1, "too_long": 0, "resampled": 1, "silent": 1}
    assert kept[1].duration == pytest.approx(1.0, abs=1e-3)  # 8,000 samples at 8 kHz = 1 s at 16 kHz
    with pytest.raises(DistillError, match="no training utterance could be decoded"):
        speech.decode(utts[3:], 30.0)


@pytest.mark.parametrize("returned_prompt", [True, False])
def test_pseudo_labels_keep_the_first_word_and_carry_the_forced_prefix(monkeypatch, returned_prompt):
    """generate() returns the decoder prompt with input features but not with encoder states: the
    labels are prefix + text + EOS either way (as Whisper: special tokens sit above EOS)."""
    teacher = tiny_whisper(2)
    teacher.config.decoder_start_token_id, teacher.generation_config.eos_token_id = 251, 250
    prompt = [251, 252, 253] if returned_prompt else []  # <|sot|> <|en|> <|transcribe|>, say
    out = torch.tensor([prompt + [40, 41, 250, 250], prompt + [42, 250, 250, 250]])
    monkeypatch.setattr(teacher, "generate", lambda **kw: out)
    labels = speech.pseudo_label(teacher, torch.zeros(2, 100, 32), None, prefix=[252, 253])
    assert labels == [[252, 253, 40, 41, 250], [252, 253, 42, 250]]


def test_empty_rate_counts_empty_labels_for_spoken_references():
    assert speech.empty_rate(["", " hi", "", ""], ["a b", "hi", "", "c"]) == (2, 3)


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


def test_clips_longer_than_a_cut_window_are_kept_out_of_training():
    # A 12-s clip reaches a 10-s student truncated while its label holds every word.
    utts = [speech.Utterance(f"u{i}", "x.wav", "t", duration=d) for i, d in enumerate([3.0, 10.0, 12.5])]
    assert speech.fits_window(utts, 10) == [True, True, False]
    assert speech.fits_window(utts, None) == [True, True, True]  # the teacher's window: all fit


def test_a_student_loaded_as_is_keeps_its_own_window_for_the_fit_check(tmp_path):
    # init: model loads an earlier stage's cut-window student: its window comes from its config,
    # not from the recipe's window_seconds (left unset), or long clips would train truncated.
    from transformers import WhisperForConditionalGeneration

    teacher = tiny_whisper(2, seconds=2)
    student, _ = speech.whisper_student(teacher, window_seconds=1)
    student.save_pretrained(tmp_path)
    loaded = WhisperForConditionalGeneration.from_pretrained(tmp_path)
    assert speech.student_window_seconds(loaded.config, teacher.config) == 1
    assert speech.student_window_seconds(teacher.config, teacher.config) is None


def test_pack_concatenates_consecutive_clips_up_to_the_limit(tmp_path):
    import numpy as np
    import soundfile as sf

    durations = [2.0, 3.0, 4.0, 6.0, 1.0]
    utts = []
    for i, d in enumerate(durations):  # clip i holds the constant value i+1: the packed audio shows the order
        path = tmp_path / f"u{i}.wav"
        sf.write(str(path), np.full(int(d * 16000), (i + 1) / 10, dtype=np.float32), 16000, subtype="FLOAT")
        utts.append(speech.Utterance(f"u{i}", str(path), f" word{i} ", duration=d))
    packed = speech.pack(utts, 9.0, tmp_path / "packed")
    # 2 + 0.3 + 3 = 5.3; + 0.3 + 4 = 9.6 > 9 -> new clip; 4 + 0.3 + 6 > 9 -> 6 alone? no: 6 + 0.3 + 1 = 7.3
    assert [p.id for p in packed] == ["u0+u1", "u2", "u3+u4"]
    assert packed[1] is utts[2]  # a clip packed alone is passed through, not rewritten
    assert packed[0].text == "word0 word1" and abs(packed[0].duration - 5.3) < 1e-9
    wave, sr = speech.load_wave(packed[0].audio_path)
    assert sr == 16000 and len(wave) == int(5.3 * 16000)
    assert np.allclose(wave[:32000], 0.1) and np.allclose(wave[32000:36800], 0) and np.allclose(wave[36800:], 0.2)
    again = speech.pack(utts, 9.0, tmp_path / "packed")  # a resumed run packs alike, files already there
    assert [(p.id, p.audio_path, p.text) for p in again] == [(p.id, p.audio_path, p.text) for p in packed]


def test_pack_seconds_beyond_the_window_or_outside_distill_asr_is_refused(tmp_path):
    from distill.recipe import load as load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("""name: r
stages:
  - kind: distill-asr
    teacher: asset:whisper-tiny.en
    student: {window_seconds: 10}
    data: {source: x.jsonl, pack_seconds: 9}
""")
    load_recipe(recipe, [])
    with pytest.raises(DistillError, match="pack_seconds 12 exceeds the student's 10-s window"):
        load_recipe(recipe, ["stages.0.data.pack_seconds=12"])
    recipe.write_text("""name: r
stages:
  - kind: lora
    model: asset:whisper-tiny.en
    speech: {source: x.jsonl, pack_seconds: 9}
""")
    with pytest.raises(DistillError, match="a LoRA stage trains on the clips as they are"):
        load_recipe(recipe, [])
