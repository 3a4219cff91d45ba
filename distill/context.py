"""RunContext: everything a stage may use, passed explicitly (no module-level state)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.artifacts import Artifact
from distill.errors import DistillError
from distill.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    run_dir: Path
    run_id: str
    recipe: Recipe
    recipe_sha256: str
    device: str = "cpu"
    stage_name: str = ""
    outputs: dict[str, Artifact] = field(default_factory=dict)  # finished stages, in order

    @property
    def seed(self) -> int:
        return self.recipe.seed

    def artifact_dir(self, name: str | None = None) -> Path:
        return self.run_dir / "artifacts" / (name or self.stage_name)

    def checkpoint_dir(self, name: str | None = None) -> Path:
        return self.run_dir / "checkpoints" / (name or self.stage_name)

    def artifact_id(self, name: str | None = None) -> str:
        return f"{self.run_id}/{name or self.stage_name}"

    def previous(self) -> Artifact | None:
        """The artifact of the stage before the current one (None for the first stage)."""
        return list(self.outputs.values())[-1] if self.outputs else None

    def stage_output(self, name: str) -> Artifact:
        if name not in self.outputs:
            raise DistillError(f"stage '{name}' has no output yet",
                               f"name an earlier stage: {', '.join(self.outputs) or '(none finished)'}")
        return self.outputs[name]

    def log_metrics(self, step: int, **metrics: float) -> None:
        """Append one JSON line to metrics.jsonl (stage, step, wall time, metrics)."""
        row = {"stage": self.stage_name, "step": step, "time": round(time.time(), 3), **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
