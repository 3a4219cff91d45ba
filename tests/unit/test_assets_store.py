"""Cache, pinning, install/verify bookkeeping and user errors, with fake assets (no network)."""

from __future__ import annotations

import errno
import hashlib
import json

import pytest

import distill.assets as assets
from distill.assets import commands, fetch, store
from distill.assets.fetch import Source
from distill.assets.registry import AssetSpec
from distill.errors import DistillError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cached_source(cache, content: bytes, name: str = "pkg-1.0-py3-none-any.whl") -> Source:
    folder = cache / "downloads" / "pypi"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    return Source("pypi", "pkg", "1.0", name, hashlib.sha256(content).hexdigest())


def test_cache_dir_follows_env(cache):
    assert assets.cache_dir() == cache


def test_unknown_asset_lists_valid_ids(cache):
    with pytest.raises(DistillError) as err:
        assets.asset_path("whisper-bse")
    assert "whisper-base" in err.value.fix and "mmlu" in err.value.fix


def test_missing_asset_says_how_to_install(cache):
    with pytest.raises(DistillError) as err:
        assets.asset_path("mmlu")
    assert err.value.fix == "distill assets install mmlu"


def test_cached_file_with_right_hash_needs_no_network(cache, monkeypatch):
    source = _cached_source(cache, b"wheel bytes")
    monkeypatch.setattr(fetch, "_pip_download", lambda *a: pytest.fail("must not download"))
    assert fetch.fetch(source).read_bytes() == b"wheel bytes"


def test_checksum_mismatch_deletes_file_and_errors(cache):
    source = _cached_source(cache, b"tampered")
    bad = Source(source.registry, source.package, source.version, source.filename, "0" * 64)
    with pytest.raises(DistillError, match="checksum mismatch"):
        fetch.fetch(bad)
    assert not (cache / "downloads" / "pypi" / source.filename).exists()


def test_failed_download_names_the_package(cache, monkeypatch):
    import subprocess

    class Done:
        returncode, stderr = 1, "ERROR: Could not find a version that satisfies the requirement"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(DistillError) as err:
        fetch.fetch(Source("pypi", "nopkg", "9.9", "nopkg-9.9.whl", "0" * 64))
    assert "nopkg==9.9" in err.value.problem and "offline cache" in err.value.fix


def test_unpinned_debian_package_is_refused():
    with pytest.raises(DistillError, match="no pinned version"):
        fetch.deb("not-a-pinned-package")


def _fake_asset(monkeypatch, source: Source, build) -> str:
    spec = AssetSpec("fake", "dataset", (source,), "MIT", "a fake asset", build)
    monkeypatch.setitem(assets.ASSETS, "fake", spec)
    return "fake"


def test_install_writes_record_last_and_is_idempotent(cache, monkeypatch):
    source = _cached_source(cache, b"payload")
    calls = []

    def build(out, files):
        calls.append(files["pkg"])
        (out / "data.txt").write_text(files["pkg"].read_text())
        assert not (out / "asset.json").exists()  # the record must not exist while building
        return {"rows": 1}

    asset_id = _fake_asset(monkeypatch, source, build)
    assert store.install_one(asset_id) is True
    assert store.install_one(asset_id) is False and len(calls) == 1
    record = json.loads((assets.asset_path(asset_id) / "asset.json").read_text())
    assert record["facts"] == {"rows": 1} and record["sources"][0]["sha256"] == source.sha256
    assert record["files"] == {"data.txt": hashlib.sha256(b"payload").hexdigest()}
    assert store.verify_one(asset_id)[0]
    # datasets' own map/shuffle caches appear beside the data; they are not asset content
    (assets.asset_path(asset_id) / "cache-0123abcd.arrow").write_bytes(b"derived")
    assert store.verify_one(asset_id)[0]
    (assets.asset_path(asset_id) / "extra.txt").write_text("?")
    ok, message = store.verify_one(asset_id)
    assert not ok and "unexpected" in message
    (assets.asset_path(asset_id) / "extra.txt").unlink()
    (assets.asset_path(asset_id) / "data.txt").write_text("changed")
    ok, message = store.verify_one(asset_id)
    assert not ok and "changed" in message


def test_disk_full_leaves_nothing_marked_installed(cache, monkeypatch):
    source = _cached_source(cache, b"payload")

    def build(out, files):
        (out / "half.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    asset_id = _fake_asset(monkeypatch, source, build)
    with pytest.raises(DistillError, match="disk full"):
        store.install_one(asset_id)
    assert not assets.is_installed(asset_id)
    assert not assets.asset_dir(asset_id).exists()


def test_unfinished_dir_is_rebuilt(cache, monkeypatch):
    source = _cached_source(cache, b"payload")
    asset_id = _fake_asset(monkeypatch, source, lambda out, files: (out / "ok").write_text("1") and None)
    leftover = assets.asset_dir(asset_id)
    leftover.mkdir(parents=True)
    (leftover / "stale").write_text("from a killed run")
    store.install_one(asset_id)
    assert sorted(p.name for p in leftover.iterdir()) == ["asset.json", "ok"]


def test_install_rejects_typos_before_work(cache):
    with pytest.raises(DistillError, match="unknown asset"):
        commands.install(["mmlu", "mmlux"])
    with pytest.raises(DistillError):
        commands.install([])


def test_list_table_has_every_asset(cache):
    table = commands.list_table()
    for asset_id in assets.ASSETS:
        assert asset_id in table
    assert table.splitlines()[0].split() == ["id", "kind", "source", "licence", "size", "installed"]


def test_registry_is_pinned_and_light():
    import subprocess
    import sys

    for spec in assets.ASSETS.values():
        assert spec.kind in ("model", "dataset", "tokenizer")
        for source in spec.sources:
            assert len(source.sha256) == 64 and source.version and source.filename
        for required in spec.requires:
            assert required in assets.ASSETS
    code = "import sys, distill.assets; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_tts_sources_match_what_the_tts_builder_reads():
    from distill.assets import tts

    for lang in ("en", "cmn"):
        debian = {s.package for s in assets.ASSETS[f"tts-{lang}"].sources if s.registry == "debian"}
        assert debian == set(tts.PACKAGES_BY_LANG[lang])
    assert {s.package for s in assets.ASSETS["tts-cmn"].sources if s.registry == "pypi"} == {"pypinyin"}


def test_bumped_builder_revision_rebuilds_instead_of_serving_stale_data(cache, monkeypatch):
    import dataclasses

    source = _cached_source(cache, b"payload")
    builds = []

    def build(out, files):
        builds.append(1)
        (out / "data.txt").write_text(f"build {len(builds)}")

    asset_id = _fake_asset(monkeypatch, source, build)
    assert store.install_one(asset_id) is True
    monkeypatch.setitem(assets.ASSETS, asset_id, dataclasses.replace(assets.ASSETS[asset_id], revision=2))
    assert not assets.is_installed(asset_id)
    with pytest.raises(DistillError, match="older builder .revision 1, now 2"):
        assets.asset_path(asset_id)
    assert store.install_one(asset_id) is True and len(builds) == 2
    assert (assets.asset_path(asset_id) / "data.txt").read_text() == "build 2"
