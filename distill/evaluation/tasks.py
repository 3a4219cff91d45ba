"""Tasks and suites as versioned data: YAML files under eval/tasks and eval/suites.

A task names its data, its prompt and its metrics; bumping `version` is how a changed prompt or
filter announces that its numbers are no longer comparable with older records. A suite is a list
of tasks plus the conditions its throughput is measured under. Validation happens here, before any
model or dataset loads, so a typo fails in a second instead of after a model load.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.errors import DistillError, unknown_choice

logger = logging.getLogger(__name__)


def _eval_dir() -> Path:
    """eval/ beside the package in a checkout (editable install); in an installed wheel the same
    files ship as package data, distill/eval_specs (pyproject.toml). evaluate() takes no path so
    that the CLI, the tests and the recipe runner all read the same committed specs."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "eval_specs"
    return installed if installed.is_dir() else package.parent / "eval"


EVAL_DIR = _eval_dir()


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Selection(_Spec):
    """Which rows of a dataset a task uses (applied before --limit)."""

    where: dict[str, Any] = Field(default_factory=dict)  # column == value (null allowed)
    where_not: dict[str, Any] = Field(default_factory=dict)  # column != value
    min_words: int | None = None  # on `text_field`; e.g. drop one-word telephone prompts


class _Task(_Spec):
    """Fields every task type shares: identity, version and which rows it reads."""

    name: str
    version: int
    description_text: str = ""
    dataset: str  # asset:<id> | file:<path relative to eval/>
    split: str | list[str] | None = None
    select: Selection = Field(default_factory=Selection)
    id_field: str = "id"


class MultipleChoiceTask(_Task):
    """lm-eval style multiple choice: score each choice continuation by log-likelihood."""

    type: Literal["multiple_choice"]
    group_field: str | None = "subject"  # macro accuracy + few-shot pools are per group
    # Jinja templates rendered with the row, exactly as lm-eval renders its YAML fields.
    description: str = ""
    doc_to_text: str
    doc_to_choice: list[str]  # continuation texts, target_delimiter prepended
    doc_to_target: str = "answer"  # row field holding the gold index
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    fewshot_dataset: str | None = None
    fewshot_split: str | None = None
    metrics: list[str] = Field(default_factory=lambda: ["acc", "acc_macro"])


class AsrTask(_Task):
    """Speech recognition: transcribe, store raw text, normalise only at scoring time."""

    type: Literal["asr"]
    text_field: str = "text"
    audio_field: str = "audio_path"
    language: str = "en"  # forced for multilingual models
    # Text context: Whisper's prompt (<|startofprev|> tokens) or Qwen3-ASR's system turn; names
    # and domain words the audio contains. Empty = none.
    context: str = ""
    # Audio longer than the model's window/limit: `chunk` = the model's long-form path (Whisper
    # sequential 30-s windows, Qwen3-ASR cuts at quiet points past 20 min), `error` = refuse it.
    long_audio: Literal["chunk", "error"] = "chunk"
    normalizer: Literal["english", "basic", "mandarin"] = "english"  # see metrics.normalize
    metrics: list[Literal["wer", "wer_ortho", "cer"]] = Field(default_factory=lambda: ["wer", "wer_ortho", "cer"])


class PerplexityTask(_Task):
    """Token-level held-out perplexity (+ tokenizer-independent bits per byte)."""

    type: Literal["perplexity"]
    text_field: str = "text"
    window: int = 512  # tokens per scored window; documents longer than this are split
    stride: int = 1  # every stride-th document: a spread over a corpus stored source by source
    max_docs: int | None = None  # cap so the suite stays fast; --limit lowers it further
    metrics: list[str] = Field(default_factory=lambda: ["perplexity", "bits_per_byte"])


TaskSpec = Annotated[Union[MultipleChoiceTask, AsrTask, PerplexityTask], Field(discriminator="type")]


class _TaskFile(_Spec):
    task: TaskSpec


class Headline(_Spec):
    task: str
    metric: str


class ThroughputSpec(_Spec):
    """Conditions a suite's speed numbers are measured under (stored with every number)."""

    kind: Literal["lm", "asr"]
    batch_size: int = 1
    warmup: int = 2  # untimed batches first: allocator, caches and lazy init settle
    n: int = 16  # timed items
    task: str | None = None  # asr: which task's audio to time
    text_file: str | None = None  # lm: prompt text (file under eval/), needs no asset
    prompt_tokens: int = 128
    new_tokens: int = 32


class SuiteSpec(_Spec):
    name: str
    version: int
    description_text: str = ""
    modality: Literal["lm", "asr"]
    tasks: list[str]
    batch_size: int = 8  # scoring batch (length-sorted); --batch-size overrides
    headline: Headline
    throughput: ThroughputSpec | None = None


def _yaml_files(kind: str, eval_dir: Path) -> dict[str, Path]:
    folder = eval_dir / kind
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def list_suites(eval_dir: Path = EVAL_DIR) -> dict[str, list[str]]:
    """Suite name -> its task names, for `distill ls`."""
    return {name: load_suite(name, eval_dir).tasks for name in _yaml_files("suites", eval_dir)}


def list_tasks(eval_dir: Path = EVAL_DIR) -> dict[str, str]:
    """Task name -> one-line description, for `distill ls`."""
    return {name: load_task(name, eval_dir).description_text for name in _yaml_files("tasks", eval_dir)}


def _read(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DistillError(f"{what} file '{path}' is not valid YAML: {exc}", "fix the YAML syntax")
    if not isinstance(data, dict):
        raise DistillError(f"{what} file '{path}' is not a mapping", "see eval/README.md")
    return data


def _validation_error(what: str, path: Path, exc: ValidationError) -> DistillError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return DistillError(f"{what} '{path.name}': {where}: {first['msg']}", "see eval/README.md")


def load_task(name: str, eval_dir: Path = EVAL_DIR):
    files = _yaml_files("tasks", eval_dir)
    if name not in files:
        raise unknown_choice("task", name, files)
    try:
        spec = _TaskFile(**_read(files[name], "task")).task
    except ValidationError as exc:
        raise _validation_error("task", files[name], exc) from None
    if spec.name != name:
        raise DistillError(f"task file '{name}.yaml' declares name '{spec.name}'", "make them equal")
    return spec


def with_options(task, options: dict | None):
    """An ASR task with transcription options (language, context, long_audio) put over its own,
    validated like the YAML (e.g. from `distill eval --context ...`); other tasks unchanged."""
    if not options or task.type != "asr":
        return task
    try:
        return AsrTask.model_validate({**task.model_dump(), **options})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DistillError(f"transcription option {'.'.join(map(str, first['loc']))}: {first['msg']}",
                           "use --long-audio chunk|error, a language code and a text --context") from None


def load_suite(name: str, eval_dir: Path = EVAL_DIR) -> SuiteSpec:
    """A suite by name, or from a YAML path (its tasks still come from eval_dir/tasks)."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) and path.is_file():
        files = {path.stem: path}
        name = path.stem
    else:
        files = _yaml_files("suites", eval_dir)
    if name not in files:
        raise unknown_choice("suite", name, files)
    try:
        suite = SuiteSpec(**_read(files[name], "suite"))
    except ValidationError as exc:
        raise _validation_error("suite", files[name], exc) from None
    known = _yaml_files("tasks", eval_dir)
    for task in suite.tasks:
        if task not in known:
            raise unknown_choice(f"task in suite '{suite.name}'", task, known)
    if suite.headline.task not in suite.tasks:
        raise DistillError(f"suite '{suite.name}' headline task '{suite.headline.task}' is not in "
                           "its task list", "name one of the suite's tasks")
    return suite
