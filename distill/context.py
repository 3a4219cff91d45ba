"""RunContext: everything a stage may use, passed explicitly (no module-level state).

Data parallel (`torchrun` / `accelerate launch`, WORLD_SIZE > 1): every process runs the same
training stages, but the run directory belongs to rank 0. Other ranks write their copy of a
stage's artifact into a private scratch directory the runner throws away (see `artifact_dir`), so
stage code needs no rank checks; `procs.main_first()` is for the rare file a stage shares between
ranks (the offline teacher cache).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from distill.artifacts import Artifact
from distill.errors import DistillError
from distill.recipe import Recipe

logger = logging.getLogger(__name__)

# Ranks > 0 wait in a barrier while rank 0 works alone (filling a teacher cache, quantizing before a
# LoRA stage, saving weights), which can outlast torch's 30-minute default. A crashed rank does not
# leave the others waiting this long: torchrun stops every process as soon as one fails.
RANK0_WAIT = timedelta(hours=12)


@dataclass(frozen=True)
class Processes:
    """This process among the data-parallel processes of one run; rank 0 of 1 when not launched."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def broadcast(self, obj):
        """Rank 0's `obj` (picklable), returned on every rank."""
        if self.world_size == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block, then the others do: e.g. rank 0 writes a cache, the others find it done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def join_processes() -> Processes:
    """Join the process group when started by torchrun / accelerate launch (WORLD_SIZE > 1).

    Uses accelerate's PartialState, the same process group the training loop's Accelerator joins
    later, so the run's barriers and DDP's gradient all-reduce share one group.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=RANK0_WAIT)
    return Processes(rank=state.process_index, world_size=state.num_processes,
                     local_rank=max(0, state.local_process_index))


@dataclass
class RunContext:
    run_dir: Path
    run_id: str
    recipe: Recipe
    recipe_sha256: str
    device: str = "cpu"
    stage_name: str = ""
    outputs: dict[str, Artifact] = field(default_factory=dict)  # finished stages, in order
    procs: Processes = field(default_factory=Processes)
    scratch_dir: Path | None = None  # ranks > 0: where their discarded copies of artifacts go

    def __post_init__(self):
        if not self.procs.is_main and self.scratch_dir is None:
            raise ValueError("a RunContext on rank > 0 needs a scratch_dir for its discarded artifacts")

    @property
    def seed(self) -> int:
        return self.recipe.seed

    def artifact_dir(self, name: str | None = None) -> Path:
        """Where THIS process writes a stage's artifact: the run's directory on rank 0, a private
        scratch directory on other ranks (their copy is thrown away; rank 0's is the artifact)."""
        root = self.run_dir if self.procs.is_main else self.scratch_dir
        return root / "artifacts" / (name or self.stage_name)

    def run_artifact_dir(self, name: str | None = None) -> Path:
        """The run's artifact of a stage, as every rank reads it (rank 0 writes it)."""
        return self.run_dir / "artifacts" / (name or self.stage_name)

    def checkpoint_dir(self, name: str | None = None) -> Path:
        """Rank 0 writes checkpoints; every rank resumes from them."""
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
        """Append one JSON line to metrics.jsonl (stage, step, wall time, metrics); rank 0 only,
        so a step is one line however many processes train."""
        if not self.procs.is_main:
            return
        row = {"stage": self.stage_name, "step": step, "time": round(time.time(), 3), **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
