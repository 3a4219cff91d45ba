"""What a MODEL argument refers to: artifact dir, asset, plain HF dir or hub id -> ModelRef.

Resolution reads only small JSON files, so a wrong argument fails before any weights load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from distill.errors import DistillError

logger = logging.getLogger(__name__)


@dataclass
class ModelRef:
    source: str  # local directory or hub id that the adapter loads
    artifact_id: str
    kind: str
    adapter: str
    lineage: list[str] = field(default_factory=list)
    recipe_sha256: str | None = None
    run_id: str | None = None
    params: int | None = None
    size_bytes: int | None = None
    manifest: object | None = None  # distill.artifacts.Artifact when there is one
    extra: dict = field(default_factory=dict)


def infer_adapter(path: Path) -> str:
    """Adapter key for a directory without manifest, from the files HF/optimum/peft write."""
    if (path / "adapter_config.json").is_file():
        return "peft-adapter"
    if any(path.glob("*.onnx")):
        return "onnx"
    if (path / "model.bin").is_file():  # CTranslate2 (its config.json has no model_type)
        return "ct2"
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise DistillError(f"'{path}' has neither manifest.json nor config.json: not an artifact or "
                           "a HF model directory", "point at a finished artifact, an HF model "
                           "directory, asset:<id>, or a hub id")
    cfg = json.loads(cfg_file.read_text())
    if (cfg.get("quantization_config") or {}).get("quant_method") == "bitsandbytes":
        return "bnb"
    return _adapter_for_model_type(cfg.get("model_type"))


def _adapter_for_model_type(model_type: str | None) -> str:
    if model_type == "whisper":
        return "hf-whisper"
    if model_type == "qwen3_asr":
        return "qwen3-asr"
    return "hf-causal-lm"


def _from_dir(path: Path, artifact_id: str | None = None) -> ModelRef:
    from distill import artifacts

    if artifacts.is_complete(path):
        art = artifacts.load(path)
        adapter = art.adapter or art.kind  # checked against the registry where it is dispatched
        return ModelRef(source=str(path), artifact_id=art.artifact_id, kind=art.kind, adapter=adapter,
                        lineage=list(art.lineage), recipe_sha256=art.recipe_sha256, run_id=art.run_id,
                        params=art.params, size_bytes=art.size_bytes or artifacts.dir_size(path),
                        manifest=art, extra=dict(art.extra))
    adapter = infer_adapter(path)
    return ModelRef(source=str(path), artifact_id=artifact_id or f"local/{path.resolve().name}",
                    kind=adapter, adapter=adapter, size_bytes=artifacts.dir_size(path))


def resolve_model(model: str) -> ModelRef:
    """`asset:<id>` | artifact directory | plain HF directory | hub id -> ModelRef."""
    if model.startswith("asset:"):
        from distill.assets import asset_path

        asset_id = model.removeprefix("asset:")
        return _from_dir(Path(asset_path(asset_id)), artifact_id=f"asset/{asset_id}")
    path = Path(model).expanduser()
    if path.is_dir():
        return _from_dir(path)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise DistillError(f"model '{model}' is not a directory", "pass an artifact or HF model "
                           "directory, asset:<id>, or a hub id like org/name")
    try:  # a hub id: only its config.json is fetched to pick the adapter, read as a plain dict
        # because AutoConfig rejects model types transformers lacks (qwen3_asr before v5)
        from transformers import PretrainedConfig

        cfg, _ = PretrainedConfig.get_config_dict(model)
    except OSError as exc:
        raise DistillError(f"model '{model}' is neither a local directory nor a reachable hub id "
                           f"({str(exc).splitlines()[0]})", "check the path, or use asset:<id>")
    adapter = _adapter_for_model_type(cfg.get("model_type"))
    return ModelRef(source=model, artifact_id=f"hub/{model}", kind=adapter, adapter=adapter)


def count_params(model) -> int | None:
    """distill.models.count_params, or None for a runtime that exposes no parameters (ORT, CT2)."""
    from distill import models

    try:
        return models.count_params(model)
    except (AttributeError, TypeError):
        return None
