"""`distill ls`: what the workbench offers (stage kinds and their fields, losses, suites, assets)."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel

from distill import recipe


def describe_fields(model: type[BaseModel], indent: str = "    ") -> list[str]:
    """One line per field: name, default and the field's description."""
    lines = []
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=False)!r}"
        if field.default_factory is not None:
            default = "section"
        lines.append(f"{indent}{name:<18} {default:<22} {field.description or ''}".rstrip())
    return lines


def stages_section() -> list[str]:
    out = ["stage kinds (recipe `stages:` items):"]
    for cls in get_args(get_args(recipe.Stage)[0]):
        kind = get_args(cls.model_fields["kind"].annotation)[0]
        out.append(f"  {kind}")
        out += describe_fields(cls)
    out.append("  losses (distill.loss.kind): " + ", ".join(get_args(recipe.LossSpec.model_fields["kind"].annotation)))
    return out


def suites_section() -> list[str]:
    try:
        from distill.evaluation.tasks import list_suites
    except ImportError:
        return ["evaluation suites: (evaluation package not available)"]
    out = ["evaluation suites (distill eval --suite S):"]
    for suite, tasks in list_suites().items():
        out.append(f"  {suite:<12} {', '.join(tasks)}")
    return out


def assets_section() -> list[str]:
    try:
        from distill.assets import ASSETS
    except ImportError:
        return ["assets: (asset package not available)"]
    out = ["offline assets (asset:<id>; `distill assets list` shows install state):"]
    for asset_id, spec in ASSETS.items():
        out.append(f"  {asset_id:<24} {getattr(spec, 'kind', ''):<10} {getattr(spec, 'description', '')}")
    return out


def everything() -> str:
    return "\n".join(stages_section() + [""] + suites_section() + [""] + assets_section())
