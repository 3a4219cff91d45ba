"""Shared fixtures. Unit tests build tiny models in-process; integration tests use installed assets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Path:
    return ROOT


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300):
    """Run `python -m distill ARGS` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With DISTILL_TEST_CPU=<file.jsonl>: one line per test with its CPU seconds (setup + call +
    teardown, this process and its finished subprocesses) and wall seconds. On a shared machine
    wall time measures the neighbours; CPU time says which tests are heavy (how `slow` markers are
    chosen: docs/architecture.md)."""
    path = os.environ.get("DISTILL_TEST_CPU")
    if not path:
        yield
        return
    import json
    import time

    cpu, wall = _cpu_seconds(), time.perf_counter()
    yield
    row = {"test": item.nodeid, "cpu_s": round(_cpu_seconds() - cpu, 2),
           "wall_s": round(time.perf_counter() - wall, 2), "loadavg": os.getloadavg()[0]}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
