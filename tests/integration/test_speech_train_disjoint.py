"""Speech training data never overlaps an evaluation item: not by id, not by normalised text.

Training sources are the recipes' (asterisk-en train split, tts-en train split, tts-en-train); the
evaluation items are every English ASR task under eval/tasks, read through the harness's own
task_rows (its split and `select:`), with no limit.
"""

from __future__ import annotations

import pytest

from distill.errors import DistillError

pytestmark = pytest.mark.integration

TRAIN_SOURCES = (("asterisk-en", "train"), ("tts-en", "train"), ("tts-en-train", "train"))


def installed(asset_id: str) -> bool:
    from distill.assets import asset_path

    try:
        asset_path(asset_id)
        return True
    except DistillError:
        return False


def eval_items() -> dict[str, list[dict]]:
    from distill.evaluation.data import task_rows
    from distill.evaluation.tasks import list_tasks, load_task

    out = {}
    for name in list_tasks():
        spec = load_task(name)
        if spec.type == "asr" and spec.language == "en" and installed(spec.dataset.removeprefix("asset:")):
            out[name] = task_rows(spec)
    return out


@pytest.mark.skipif(not (installed("asterisk-en") and installed("tts-en")),
                    reason="needs assets asterisk-en and tts-en (make assets)")
def test_speech_training_sources_share_no_id_or_text_with_any_eval_item():
    from distill import speech
    from distill.evaluation.metrics import normalize

    items = eval_items()
    assert {"asterisk-en", "tts-en-clean", "tts-en-noisy"} <= set(items)
    eval_ids = {str(r["id"]) for rows in items.values() for r in rows}
    eval_texts = {normalize(r["text"], "english") for rows in items.values() for r in rows} - {""}
    checked = 0
    for asset_id, split in TRAIN_SOURCES:
        if not installed(asset_id):  # tts-en-train is on demand
            continue
        utts = speech.read_utterances(f"asset:{asset_id}", split, None)
        assert utts, asset_id
        assert not eval_ids & {u.id for u in utts}, asset_id
        shared = eval_texts & {normalize(u.text, "english") for u in utts}
        assert not shared, f"{asset_id} trains on evaluation sentences: {sorted(shared)[:5]}"
        checked += len(utts)
    assert checked > 800  # asterisk train (~430) + tts-en train (420) at least


@pytest.mark.skipif(not installed("asterisk-en"), reason="needs asset asterisk-en")
def test_asterisk_eval_task_reads_only_the_test_split():
    from distill.assets import load_dataset

    rows = load_dataset("asterisk-en").to_list()
    splits = {r["split"] for r in rows}
    assert splits == {"train", "test"}
    by_split = {s: {r["text"] for r in rows if r["split"] == s} for s in splits}
    assert not by_split["train"] & by_split["test"]
    assert {r["id"] for r in eval_items()["asterisk-en"]} <= {r["id"] for r in rows if r["split"] == "test"}
