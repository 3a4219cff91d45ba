"""Provenance: what is needed to reproduce a run or a number (git, versions, seeds, machine)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("distill", "torch", "transformers", "accelerate", "peft", "bitsandbytes", "optimum",
            "optimum-onnx", "onnxruntime", "datasets", "jiwer", "numpy", "pydantic")
OUTPUT_DIRS = ("results/", "bench/results/")  # written by evaluations and benches


def git_state(cwd: Path | None = None) -> dict:
    """{'sha': ..., 'dirty': bool} of the source checkout, or nulls outside git.

    Dirty: a file changed or added outside the output directories (results/, bench/results/).
    Records, samples and bench outputs are what this tool writes, not changes to what produced
    them: counted, every evaluation after the first in a series would call the tree dirty."""
    cwd = cwd or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout

    try:
        # Porcelain lines are "XY path": X may be a space, so the output is never stripped.
        changes = [line for line in git("status", "--porcelain", "--untracked-files=all").splitlines() if line]
        dirty = any(not line[3:].startswith(OUTPUT_DIRS) for line in changes)
        return {"sha": git("rev-parse", "HEAD").strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """The CPU's model name: platform.processor() says only "x86_64" on Linux, and speed depends on
    the model (records and benches are compared only within one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "device": device}
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def seeds(seed: int) -> dict[str, int]:
    """Every seed in use. One recipe seed drives all of them, recorded separately for clarity."""
    return {"python": seed, "numpy": seed, "torch": seed, "data": seed}


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
