"""Rows for a task: resolve its dataset, pick splits, apply its selection and --limit.

Datasets come from the asset system (`asset:<id>` -> distill.assets.load_dataset) or from small
committed files under eval/ (`file:<path>`), so the smoke suite needs no installed asset. Rows are
plain dicts in dataset order; --limit takes the first N after selection, as lm-eval does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from distill.errors import DistillError
from distill.evaluation.tasks import EVAL_DIR, Selection

logger = logging.getLogger(__name__)


def _load_asset(asset_id: str):
    from distill.assets import load_dataset

    return load_dataset(asset_id)


def _pick_splits(ds, split, source: str) -> list[dict]:
    """Rows from a Dataset or DatasetDict; `split` may be a name, a list of names, or None."""
    if isinstance(ds, dict):  # DatasetDict is a dict
        names = list(ds.keys())
        if split is None:
            if len(names) != 1:
                raise DistillError(f"dataset '{source}' has splits {names} and the task names none",
                                   "set `split:` in the task YAML")
            wanted = names
        else:
            wanted = [split] if isinstance(split, str) else list(split)
        rows: list[dict] = []
        for name in wanted:
            if name not in names:
                raise DistillError(f"dataset '{source}' has no split '{name}'", f"valid: {names}")
            rows.extend(_rows(ds[name]))
        return rows
    rows = _rows(ds)
    if split is not None and rows and "split" in rows[0]:
        # Speech sets are one Dataset with a `split` column (tts: train/dev/test by row).
        wanted = {split} if isinstance(split, str) else set(split)
        return [r for r in rows if r["split"] in wanted]
    # A single evaluation set: the task's split name is then only documentation.
    return rows


def _rows(ds) -> list[dict]:
    return ds.to_list() if hasattr(ds, "to_list") else [dict(r) for r in ds]


def _load_file(rel: str, eval_dir: Path) -> list[dict]:
    path = (eval_dir / rel).resolve()
    if not path.is_file():
        raise DistillError(f"task data file '{rel}' not found under {eval_dir}", "check `dataset:`")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # A plain text file is one document.
    return [{"id": path.stem, "text": path.read_text(), "source": rel}]


def load_source(source: str, split=None, eval_dir: Path = EVAL_DIR) -> list[dict]:
    if source.startswith("asset:"):
        return _pick_splits(_load_asset(source.removeprefix("asset:")), split, source)
    if source.startswith("file:"):
        return _load_file(source.removeprefix("file:"), eval_dir)
    raise DistillError(f"dataset '{source}' has no scheme", "use asset:<id> or file:<path>")


def select(rows: list[dict], sel: Selection, text_field: str = "text") -> list[dict]:
    for key, value in sel.where.items():
        rows = [r for r in rows if r.get(key) == value]
    for key, value in sel.where_not.items():
        rows = [r for r in rows if r.get(key) != value]
    if sel.min_words:
        rows = [r for r in rows if len(str(r.get(text_field, "")).split()) >= sel.min_words]
    return rows


def spread(rows: list, limit: int) -> list:
    """`limit` rows evenly spaced over the task (deterministic): a limited MMLU run still covers
    every subject, a limited ASR run every speaker/engine, instead of the first few groups."""
    if limit >= len(rows):
        return rows
    return [rows[(i * len(rows)) // limit] for i in range(limit)]


def task_rows(spec, limit: int | None = None, eval_dir: Path = EVAL_DIR) -> list[dict]:
    """The task's rows after selection and limit. Empty sets are an error, not a 0-item metric."""
    rows = load_source(spec.dataset, spec.split, eval_dir)
    rows = select(rows, spec.select, getattr(spec, "text_field", "text"))
    if not rows:
        raise DistillError(f"task '{spec.name}' selects no rows from '{spec.dataset}'",
                           "check the task's split and `select:` filters, or reinstall the asset")
    ids = [str(r.get(spec.id_field, i)) for i, r in enumerate(rows)]
    if len(set(ids)) != len(ids):
        raise DistillError(f"task '{spec.name}': item ids in '{spec.id_field}' are not unique",
                           "use a column with one id per row")
    return limit_rows(rows, limit, spec.name)


def limit_rows(rows: list, limit: int | None, task: str) -> list:
    """`limit` evenly spread rows (all of them when limit is None or covers the task)."""
    if limit is None:
        return rows
    if limit < 1:
        raise DistillError(f"--limit {limit} is not a positive number", "pass --limit N with N >= 1")
    if limit > len(rows):
        logger.warning("--limit %d exceeds the %d items of task %s: using all %d",
                       limit, len(rows), task, len(rows))
    return spread(rows, limit)


def item_id(row: dict, spec, index: int) -> str:
    return str(row.get(spec.id_field, index))
