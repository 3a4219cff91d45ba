"""Every registered stage kind has a runner that imports: a registry entry without code is a stub."""

import importlib
import inspect

import pytest

from distill.stages import STAGES


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_every_registered_stage_runner_imports(kind):
    module_name, sep, func = STAGES[kind].partition(":")
    assert sep and func, f"runner of '{kind}' is not 'module:function': {STAGES[kind]}"
    runner = getattr(importlib.import_module(module_name), func)
    assert callable(runner)
    assert list(inspect.signature(runner).parameters)[:2] == ["spec", "ctx"]
