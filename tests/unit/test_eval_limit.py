"""--limit takes evenly spaced items, so a limited run still covers every group of the task."""

from distill.evaluation.data import spread


def test_spread_covers_every_group_evenly():
    rows = [{"subject": s, "i": i} for s in range(57) for i in range(20)]  # mmlu-mini's shape
    picked = spread(rows, 285)
    assert len(picked) == 285
    counts = {}
    for row in picked:
        counts[row["subject"]] = counts.get(row["subject"], 0) + 1
    assert set(counts.values()) == {5} and len(counts) == 57


def test_spread_is_identity_when_limit_covers_all():
    rows = list(range(10))
    assert spread(rows, 10) == rows and spread(rows, 50) == rows
    assert spread(rows, 1) == [0]
    assert len(set(spread(rows, 7))) == 7
