"""Stage lookup: a stage kind's schema class in `distill.recipe` names its runner
("module:function"); this module imports it on demand. Each stage is `run(spec, ctx) -> Artifact`.

Imported lazily so `distill ls` and `distill validate` list kinds without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from distill.recipe import STAGE_BY_KIND

# kind -> "module:function", derived from the schema: one home for a stage kind.
STAGES: dict[str, str] = {kind: cls.runner for kind, cls in STAGE_BY_KIND.items()}


def get(kind: str) -> Callable:
    module_name, _, func = STAGES[kind].partition(":")
    return getattr(importlib.import_module(module_name), func)
