"""Stage registry: kind -> "module:function". Each stage is `run(spec, ctx) -> Artifact`.

Imported lazily so `distill ls` can list kinds without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from distill.errors import DistillError

STAGES: dict[str, str] = {
    "distill": "distill.stages.distill:run",
    "distill-asr": "distill.stages.distill_asr:run",
    "train": "distill.stages.train:run",
    "lora": "distill.stages.lora:run",
    "prune": "distill.stages.prune:run",
    "quantize": "distill.stages.quantize:run",
    "export": "distill.stages.export:run",
}


def get(kind: str) -> Callable:
    module_name, _, func = STAGES[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise DistillError(f"stage kind '{kind}' is not available in this version of distill",
                           "remove the stage from the recipe; available: distill") from None
    return getattr(module, func)
