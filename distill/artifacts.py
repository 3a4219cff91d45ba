"""Artifacts: one directory per stage output, complete only once `manifest.json` exists.

An artifact directory holds HF-loadable files (safetensors weights, config, tokenizer; or ONNX
files) and a `manifest.json` that is written LAST, through a temp file and an atomic rename. So a
run killed mid-write never leaves a directory that looks complete: readers check the manifest.

Manifest fields (schema_version 1):
  artifact_id     stable id, e.g. "<run_id>/<stage_name>" or "asset/<asset id>"
  kind            what the weights are: an ArtifactKind value (below)
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
from enum import StrEnum
from pathlib import Path

from distill.errors import DistillError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class ArtifactKind(StrEnum):
    """What an artifact's files are. A StrEnum: manifests keep the plain string, and every
    Artifact is checked against this list when it is made or read (a typo fails at once)."""

    HF_CAUSAL_LM = "hf-causal-lm"
    HF_WHISPER = "hf-whisper"
    QWEN3_ASR = "qwen3-asr"
    PEFT_ADAPTER = "peft-adapter"
    BNB = "bnb"
    TORCH_DYNAMIC_QUANT = "torch-dynamic-quant"
    ONNX = "onnx"
    CT2 = "ct2"


def artifact_kind(value: str, where: str = "artifact") -> ArtifactKind:
    try:
        return ArtifactKind(value)
    except ValueError:
        raise DistillError(f"{where}: unknown artifact kind '{value}'",
                           f"use one of {', '.join(k.value for k in ArtifactKind)}") from None


# HF config `model_type` -> the kind of a plain model directory of that type (else a causal LM).
SPEECH_KINDS = {"whisper": ArtifactKind.HF_WHISPER, "qwen3_asr": ArtifactKind.QWEN3_ASR}


def kind_for_model_type(model_type: str | None) -> ArtifactKind:
    return SPEECH_KINDS.get(model_type or "", ArtifactKind.HF_CAUSAL_LM)


@dataclass
class Artifact:
    """An artifact on disk: its directory plus the manifest fields."""

    path: Path
    artifact_id: str
    kind: ArtifactKind  # a plain string is accepted and checked (__post_init__)
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

    def __post_init__(self):
        self.kind = artifact_kind(self.kind, f"artifact '{self.artifact_id}'")

    def manifest(self) -> dict:
        data = asdict(self)
        data.pop("path")
        data["kind"] = str(self.kind)
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
    try:
        data = json.loads((path / MANIFEST).read_text())
        known = {k for k in Artifact.__dataclass_fields__ if k != "path"}
        return Artifact(path=path, **{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # valid JSON, not a manifest
        raise DistillError(f"'{path / MANIFEST}' is damaged ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120]})",
                           "re-create the artifact (distill run --resume after deleting the manifest), "
                           "or restore the file") from None


def safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be loaded (empty, truncated, not safetensors), or None.

    Reads the header only: 8-byte little-endian length, JSON of tensor offsets; the data must end
    exactly where the last tensor does. Catches a copy cut short before any loader sees it."""
    import struct

    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "empty" if size == 0 else f"only {size} bytes"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 << 20:
                return "not a safetensors file (bad header length)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"not a safetensors file ({type(exc).__name__})"
    if not isinstance(header, dict):
        return "not a safetensors file (header is not a table)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "not a safetensors file (bad tensor table)"
    if 8 + n + end != size:
        return f"truncated or padded: {size} bytes on disk, the header describes {8 + n + end}"
    return None


def prepare_dir(path: Path) -> Path:
    """A fresh, empty directory for an artifact about to be written (clears an unfinished one)."""
    path = Path(path)
    if is_complete(path):
        raise DistillError(f"artifact '{path}' is already complete", "use a new run directory")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
