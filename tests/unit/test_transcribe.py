"""`distill transcribe`: text and JSON from any speech model the harness loads; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from distill import cli, ct2
from test_ct2 import audio_clips, tiny_whisper_dir
from test_eval_tiny import tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("transcribe")
    hf = tiny_whisper_dir(root / "whisper", 50)  # 1-s window
    out = root / "whisper-ct2"
    out.mkdir()
    ct2.convert(hf, out, "hf-whisper", "float32")
    clips = audio_clips()
    paths = []
    for i, clip in enumerate(clips + [np.tile(clips[0], 3)]):  # the last one is 2.25 s: long-form
        paths.append(root / f"clip{i}.wav")
        sf.write(paths[-1], clip, 16000)
    return {"hf": hf, "ct2": out, "llama": tiny_llama(root / "llama"), "audio": [str(p) for p in paths]}


def _run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["transcribe", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_and_json_from_torch_and_ct2_agree(models, capsys):
    code, text, err = _run(capsys, models["ct2"], *models["audio"], "--threads", "1")
    assert code == 0 and "ctranslate2" in err and "RTFx" in err
    assert all(text.count(p + ": ") == 1 for p in models["audio"])  # random weights: any bytes, even newlines
    code, out, _ = _run(capsys, models["hf"], *models["audio"], "--json", "--threads", "1")
    result = json.loads(out)
    assert code == 0 and result["backend"] == "torch-eager" and result["threads"] == 1
    assert [f["audio"] for f in result["files"]] == models["audio"]
    for f in result["files"]:
        assert f["audio_s"] > 0 and f["compute_s"] > 0 and f["rtfx"] == pytest.approx(f["audio_s"] / f["compute_s"], rel=0.01)
    assert result["files"][2]["audio_s"] == pytest.approx(2.25)  # longer than the 1-s window, transcribed whole
    # the same greedy text from the PyTorch model and its float32 CT2 export (short clips)
    _, out, _ = _run(capsys, models["ct2"], *models["audio"][:2], "--json", "--threads", "1")
    assert [f["text"] for f in json.loads(out)["files"]] == [f["text"] for f in result["files"][:2]]


def test_context_goes_to_the_model(models, capsys):
    _, plain, _ = _run(capsys, models["ct2"], models["audio"][0], "--json")
    code, prompted, _ = _run(capsys, models["ct2"], models["audio"][0], "--json", "--context", "Elinor Dashwood")
    assert code == 0 and json.loads(prompted)["context"] == "Elinor Dashwood"
    assert json.loads(prompted)["files"][0]["text"] != json.loads(plain)["files"][0]["text"]


@pytest.mark.parametrize("case, message", [
    ("text-model", "not a speech recognizer"),
    ("missing-audio", "does not exist"),
    ("not-audio", "cannot decode audio"),
    ("language", "cannot transcribe language 'de'"),
])
def test_bad_input_is_one_error_line(models, capsys, tmp_path, case, message):
    model, audio, extra = models["ct2"], models["audio"][0], []
    if case == "text-model":
        model = models["llama"]
    elif case == "missing-audio":
        audio = tmp_path / "nope.wav"
    elif case == "not-audio":
        audio = tmp_path / "notes.wav"
        audio.write_text("not audio")
    else:
        extra = ["--language", "de"]  # an English-only model
    code, out, err = _run(capsys, model, audio, *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_transcribe_help_does_not_import_torch():
    code = ("import sys\nfrom distill import cli\ntry:\n    cli.main(['transcribe', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False False"

