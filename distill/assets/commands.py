"""Library side of `distill assets list|install|verify|path` (the CLI only parses arguments)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from distill.assets import ASSETS, asset_path, is_installed, spec
from distill.errors import DistillError

logger = logging.getLogger(__name__)


def _human(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def list_table() -> str:
    """One row per registry entry: id, kind, source package+version, licence, size, installed?"""
    from distill.assets.store import read_record

    rows = [("id", "kind", "source", "licence", "size", "installed")]
    for asset_id, entry in ASSETS.items():
        first = entry.sources[0]
        source = f"{first.registry}:{first.package}={first.version}"
        if len(entry.sources) > 1:
            source += f" (+{len(entry.sources) - 1})"
        installed = is_installed(asset_id)
        size = _human(read_record(asset_id).get("size_bytes")) if installed else "-"
        licence = entry.licence if len(entry.licence) <= 28 else entry.licence[:27] + "…"
        rows.append((asset_id, entry.kind, source, licence, size, "yes" if installed else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def install(ids: list[str], all_: bool = False) -> None:
    """Install the named assets (or all but the on-demand ones); idempotent: installed ones are skipped."""
    from tqdm import tqdm

    from distill.assets.store import install_one

    if all_ and ids:
        raise DistillError("give asset ids or --all, not both", "drop the ids or drop --all")
    if not all_ and not ids:
        raise DistillError("no asset ids given", f"name some ({', '.join(ASSETS)}) or pass --all")
    targets = [a for a, entry in ASSETS.items() if not entry.on_demand] if all_ else ids
    for asset_id in targets:
        spec(asset_id)  # reject a typo before downloading anything
    from distill.assets.store import check_cache_writable

    check_cache_writable()
    built = []
    bar = tqdm(targets, desc="assets", unit="asset")
    for asset_id in bar:
        bar.set_postfix_str(asset_id)
        start = time.perf_counter()
        if install_one(asset_id):
            built.append(asset_id)
            logger.info("installed %s in %.1f s", asset_id, time.perf_counter() - start)
    print(f"installed {len(built)} asset(s){': ' + ', '.join(built) if built else ''}; "
          f"{len(targets) - len(built)} already present")


def verify(ids: list[str] | None = None) -> bool:
    """Re-hash installed assets; prints one status line each; True when every checked one is ok."""
    from distill.assets.store import verify_one

    targets = ids or [a for a in ASSETS if is_installed(a)]
    if not targets:
        print("no assets installed")
        return True
    ok_all = True
    for asset_id in targets:
        spec(asset_id)
        ok, message = verify_one(asset_id)
        ok_all &= ok
        print(f"{'OK  ' if ok else 'FAIL'} {asset_id}: {message}")
    return ok_all


def path(asset_id: str) -> Path:
    return asset_path(asset_id)
