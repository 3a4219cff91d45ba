"""The CLI: fast paths import no torch; bad input gives one line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli


def no_heavy_imports(code: str) -> None:
    check = (f"import sys\n{code}\n"
             "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
             "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_help_imports_no_torch():
    no_heavy_imports("from distill.cli import main\n"
                     "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")


def test_validate_imports_no_torch():
    no_heavy_imports("from distill.cli import main\n"
                     "assert main(['validate', 'recipes/quickstart.yaml']) == 0")


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("run", "validate", "eval", "report", "assets", "ls", "plan"):
        assert command in out.stdout


def test_validate_ok():
    out = run_cli("validate", "recipes/_tiny/pipeline.yaml")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok:")


BAD = [
    (["validate", "recipes/nope.yaml"], "not found"),
    (["validate", "recipes/_tiny/pipeline.yaml", "sede=1"], "unknown key 'sede'"),
    (["validate", "recipes/_tiny/pipeline.yaml", "stages.0.train.steps=lots"], "stages.0.train.steps"),
    (["validate", "recipes/_tiny/pipeline.yaml", "stages=[]"], "stages` is empty"),
    (["validate", "recipes/_tiny/pipeline.yaml", "stages.0.kind=prun"], "unknown stage kind"),
    (["validate", "recipes/_tiny/pipeline.yaml", "justakey"], "bad override"),
    (["validate", "recipes/_tiny/pipeline.yaml", "stages.0.data.source=missing.txt"], "does not exist"),
    (["validate", "recipes/_tiny/pipeline.yaml", "stages.0.teacher={source: ./no/such/model}"],
     "does not exist"),
    (["run", "--resume", "recipes"], "not a run directory"),
    (["run"], "no recipe given"),
    (["run", "recipes/_tiny/pipeline.yaml", "stages.0.train.steps=0", "output_dir=TMP"], "greater than 0"),
    (["run", "recipes/_tiny/pipeline.yaml", "stages.0.student.model.source=asset:nope", "output_dir=TMP"],
     "exactly one of"),
    (["run", "recipes/_tiny/pipeline.yaml", "stages.0.teacher={source: asset:whisper-bse}", "output_dir=TMP"],
     "unknown asset 'whisper-bse'"),
]


@pytest.mark.parametrize(("args", "needle"), BAD)
def test_bad_input_is_one_clear_line(args, needle, tmp_path):
    out = run_cli(*[a.replace("TMP", str(tmp_path)) for a in args])
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert needle in lines[0]
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir()), "bad input must write nothing"


def test_unknown_top_level_key_in_file(tmp_path):
    text = (ROOT / "recipes/_tiny/pipeline.yaml").read_text() + "\nlearning_rate: 0.1\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = run_cli("validate", str(bad))
    assert out.returncode == 2
    assert "unknown key 'learning_rate'" in out.stderr and "Traceback" not in out.stderr
