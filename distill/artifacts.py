"""Artifacts: one directory per stage output, complete only once `manifest.json` exists.

An artifact directory holds HF-loadable files (safetensors weights, config, tokenizer; or ONNX
files) and a `manifest.json` that is written LAST, through a temp file and an atomic rename. So a
run killed mid-write never leaves a directory that looks complete: readers check the manifest.

Manifest fields (schema_version 1):
  artifact_id     stable id, e.g. "<run_id>/<stage_name>" or "asset/<asset id>"
  kind            what the weights are: hf-causal-lm | hf-whisper | qwen3-asr | peft-adapter |
                  bnb | torch-dynamic-quant | onnx
  adapter         which evaluation adapter loads it (evaluation/adapters.py registry key)
  lineage         list of parent artifact ids, nearest first (teacher/base models included)
  stage           the stage spec that produced it (a dict), or null for imported models
  recipe_sha256   sha256 of the resolved recipe text, or null
  run_id          the run that produced it, or null
  size_bytes      bytes on disk of every file except the manifest
  params          parameter count (null when not knowable without loading)
  created         ISO-8601 UTC time
  extra           free-form dict (e.g. quantization settings, vocab map)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from distill.errors import DistillError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


@dataclass
class Artifact:
    """An artifact on disk: its directory plus the manifest fields."""

    path: Path
    artifact_id: str
    kind: str
    adapter: str
    lineage: list[str] = field(default_factory=list)
    stage: dict | None = None
    recipe_sha256: str | None = None
    run_id: str | None = None
    size_bytes: int = 0
    params: int | None = None
    created: str = ""
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def manifest(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data


def dir_size(path: Path) -> int:
    """Bytes on disk of every file under `path`, the manifest excluded."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.name != MANIFEST)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON through a temp file + fsync + rename, so readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finalize(artifact: Artifact) -> Artifact:
    """Measure the directory and write its manifest last. Call after every weight file is saved."""
    artifact.size_bytes = dir_size(artifact.path)
    artifact.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(artifact.path / MANIFEST, artifact.manifest())
    return artifact


def is_complete(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load(path: Path) -> Artifact:
    """Read an artifact directory; a directory without a manifest is not an artifact."""
    path = Path(path)
    if not path.is_dir():
        raise DistillError(f"artifact directory '{path}' does not exist", "check the path")
    if not is_complete(path):
        raise DistillError(
            f"'{path}' has no {MANIFEST}: it is not an artifact, or its stage did not finish",
            "point at a finished stage directory, or finish the run with `distill run --resume`",
        )
    with open(path / MANIFEST) as f:
        data = json.load(f)
    known = {k for k in Artifact.__dataclass_fields__ if k != "path"}
    return Artifact(path=path, **{k: v for k, v in data.items() if k in known})


def prepare_dir(path: Path) -> Path:
    """A fresh, empty directory for an artifact about to be written (clears an unfinished one)."""
    path = Path(path)
    if is_complete(path):
        raise DistillError(f"artifact '{path}' is already complete", "use a new run directory")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
