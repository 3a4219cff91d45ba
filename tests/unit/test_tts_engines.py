"""Engine plumbing that needs no engine: library paths, festival's merged tree, job grouping."""

from pathlib import Path

from distill.assets.tts import Planned
from distill.assets.tts_engines import FESTIVAL_BATCH, VOICES_EN, festival_libdir, library_env, make_jobs


def test_library_env_lists_extracted_lib_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/already/there")
    a = tmp_path / "libpulse0"
    (a / "usr/lib/x86_64-linux-gnu/pulseaudio").mkdir(parents=True)
    b = tmp_path / "libgsm1"
    (b / "lib/x86_64-linux-gnu").mkdir(parents=True)
    c = tmp_path / "fortunes"  # data only: contributes nothing
    (c / "usr/share").mkdir(parents=True)
    parts = library_env({"libpulse0": a, "libgsm1": b, "fortunes": c})["LD_LIBRARY_PATH"].split(":")
    assert set(parts) == {str(a / "usr/lib/x86_64-linux-gnu"), str(a / "usr/lib/x86_64-linux-gnu/pulseaudio"),
                          str(b / "lib/x86_64-linux-gnu"), "/already/there"}
    assert parts[-1] == "/already/there"  # extracted libraries win over inherited ones


def test_festival_libdir_merges_package_trees(tmp_path):
    trees = {
        "festival": "usr/share/festival/init.scm",
        "festlex-cmu": "usr/share/festival/dicts/cmu/cmulex.scm",
        "festvox-us-slt-hts": "usr/share/festival/voices/us/slt/festvox/slt.scm",
        "festvox-kallpc16k": "usr/share/festival/voices/english/kal/festvox/kal.scm",
    }
    roots = []
    for name, rel in trees.items():
        path = tmp_path / name / rel
        path.parent.mkdir(parents=True)
        path.write_text(name)
        roots.append(tmp_path / name)
    merged = festival_libdir(roots, tmp_path / "merged")
    for name, rel in trees.items():
        assert (merged / Path(rel).relative_to("usr/share/festival")).read_text() == name


def test_make_jobs_batches_festival_and_runs_festival_first(tmp_path):
    voices = {v.id: v for v in VOICES_EN}
    plan = [Planned(f"u{i}", "test", "kjv", f"Text number {i} here.", "festival-slt-hts") for i in range(FESTIVAL_BATCH + 3)]
    plan += [Planned("e0", "test", "kjv", "Some words to say.", "espeak-en-029+m6")]
    jobs = make_jobs(plan, voices, engines=None, audio_dir=tmp_path)
    assert [len(j.items) for j in jobs] == [FESTIVAL_BATCH, 3, 1]
    assert [j.voice.engine for j in jobs] == ["festival", "festival", "espeak"]
    assert [uid for j in jobs for uid, _ in j.items] == [p.id for p in plan]
