"""A built wheel carries the evaluation specs (eval/ -> distill/eval_specs) and `distill eval` finds
them outside the checkout; the explicit package list in pyproject.toml misses no subpackage."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

from tests.conftest import ROOT


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {p for p in find_packages(ROOT, include=["distill*"]) if "eval_specs" not in p}
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the venv's setuptools builds it, nothing is downloaded.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, cwd=out)
    (whl,) = out.glob("distill-*.whl")
    return whl


def test_wheel_ships_every_task_suite_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("tasks", "suites", "data"):
        for f in (ROOT / "eval" / folder).iterdir():
            if f.suffix in (".yaml", ".txt", ".json", ".jsonl", ".md"):
                assert f"distill/eval_specs/{folder}/{f.name}" in names


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(site dir holding the installed wheel, a working dir outside the checkout, env using them)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    work = tmp_path_factory.mktemp("elsewhere")  # no eval/ here or above: specs come from the package
    return site, work, {**os.environ, "PYTHONPATH": str(site)}


def _python(code: str, installed) -> subprocess.CompletedProcess:
    site, work, env = installed
    prefix = f"import distill\nassert distill.__file__.startswith({str(site)!r}), distill.__file__\n"
    return subprocess.run([sys.executable, "-c", prefix + code], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)


def test_installed_wheel_finds_every_suite_task_and_data_file(installed):
    site = installed[0]
    out = _python("from distill.evaluation import data, metrics, tasks\n"
                  "print(tasks.EVAL_DIR)\n"
                  "for suite in tasks.list_suites():\n"
                  "    for name in tasks.load_suite(suite).tasks:\n"
                  "        tasks.load_task(name)\n"
                  "assert data.task_rows(tasks.load_task('smoke-ppl'))\n"  # a file: dataset
                  "assert metrics.SPELLING_FILE.is_file()\n"
                  "assert 'asr-en' in tasks.list_suites()\n", installed)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == str(site / "distill" / "eval_specs")


@pytest.mark.slow  # a fresh interpreter imports torch + transformers and runs the smoke suite
def test_installed_wheel_runs_distill_eval_outside_the_checkout(installed, tmp_path):
    from test_eval_tiny import tiny_llama

    model = tiny_llama(tmp_path / "tiny-byte", tokenizer="bytes")
    out = _python("import sys\nfrom distill.cli import main\n"
                  f"sys.exit(main(['eval', {str(model)!r}, '--suite', 'smoke', '--results-dir', 'res']))\n",
                  installed)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (installed[1] / "res" / "local__tiny-byte.json").is_file()
