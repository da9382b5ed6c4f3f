"""The census groups tables per statement (restore/verification.batches): a large
table alone, small ones by the hundred, every table exactly once, largest first."""

from lifeboat.restore.verification import BATCH_BYTES, BATCH_TABLES, batches

MiB = 1 << 20


def test_large_tables_go_alone_and_small_ones_together():
    sized = [("big", 500 * MiB), ("mid", 70 * MiB)] + [(f"t{i}", 8192) for i in range(250)]
    groups = batches(sized)
    assert groups[:2] == [("big",), ("mid",)]
    assert [len(g) for g in groups[2:]] == [BATCH_TABLES, BATCH_TABLES, 50]
    assert [name for group in groups for name in group] == [name for name, _ in sized]


def test_a_group_stops_at_the_byte_budget():
    sized = [(f"t{i}", 20 * MiB) for i in range(7)]
    groups = batches(sized)
    assert all(sum(20 * MiB for _ in g) <= BATCH_BYTES for g in groups)
    assert [len(g) for g in groups] == [3, 3, 1]


def test_nothing_to_group():
    assert batches([]) == []
