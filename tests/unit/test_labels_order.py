"""Labels, generated names, ordering and manifest validation: the pure rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from lifeboat import manifest, naming, retention, status
from lifeboat.errors import VerificationFailed
from lifeboat.restore import names
from lifeboat.store import Entry

NOW = datetime(2025, 1, 15, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "pair",
    [("my-db", "my_db"), ("база", "данные"), ("a b", "a/b"), ("ünï", "uni"), ("x.", "x")],
)
def test_labels_are_unique_per_name(pair):
    first, second = (naming.safe_label(name) for name in pair)
    assert first != second
    for label in (first, second):  # a label parses back out of a file name
        bname = naming.build(label, "daily", NOW, ".sql.gz")
        assert naming.parse(bname.name).label == label


def test_safe_names_keep_their_label():
    for name in ("plotzed", "my_db", "shop.v2", "A1"):
        assert naming.safe_label(name) == name


def test_generated_names_of_long_look_alikes_differ_and_fit():
    first, second = "p" * 50 + "a" * 13, "p" * 50 + "b" * 13
    for make in (names.scratch_name, names.replaced_name):
        a, b = make(first, NOW), make(second, NOW)
        assert a != b and len(a.encode()) <= 63 and len(b.encode()) <= 63
    # Leftover detection matches only this database's leftovers.
    assert not names.leftover(first, names.REPLACED_TAG).match(names.replaced_name(second, NOW))
    assert names.leftover(first, names.REPLACED_TAG).match(names.replaced_name(first, NOW))
    # Multi-byte names are cut on a character boundary, never mid-character.
    long_cyrillic = "\u0431" * 31  # 62 bytes
    scratch = names.scratch_name(long_cyrillic, NOW)
    assert len(scratch.encode()) <= 63
    assert scratch.startswith("\u0431" * 10 + "_")  # 20 bytes: ten whole letters


def test_short_names_stay_readable():
    assert names.scratch_name("shop", NOW) == "shop__lifeboat_restore_20250115120000"


def test_retention_counts_the_sequence_as_newer():
    same = NOW - timedelta(hours=1)
    older = retention.Candidate("k/x-pre-restore-backup-00.sql.gz", "x", "pre-restore", same, True)
    later = retention.Candidate(
        "k/x-pre-restore-backup-00-1.sql.gz", "x", "pre-restore", same, True, seq=1
    )
    doomed = retention.plan([later, older], {"pre-restore": 1}, NOW)
    assert doomed == [older]


def entry(created: datetime) -> Entry:
    bname = naming.build("app", "daily", created, ".sql.gz")
    return Entry("local", bname.path, bname, 1000, True, f"/b/{bname.path}")


def test_future_dated_backup_is_its_own_state():
    sane, future = entry(NOW - timedelta(hours=2)), entry(NOW + timedelta(days=2))
    row = status.evaluate("app", "daily", sane, {"local": True}, {}, 26, NOW, future)
    assert row["state"] == "FUTURE" and row["future"] == future.name.name
    assert row["age"] == "2h00m"  # the sane one's age, not a negative one
    assert "in the future" in row["reason"]
    # A failure still wins: it is the more urgent news.
    failed = {"last_failure_at": "2025-01-15T11:00:00Z", "last_error": "boom"}
    row = status.evaluate("app", "daily", sane, {"local": True}, failed, 26, NOW, future)
    assert row["state"] == "FAILED"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"5", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b"{}", "lacks database"),
        (b'{"database": "a"', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (
            b'{"database": "d", "type": "daily", "format": "plain", "compression": "gzip",'
            b' "size": true, "sha256": "x", "file": "f"}',
            "size is bool, not int",
        ),
        (
            b'{"database": "d", "type": "daily", "format": "plain", "compression": "gzip",'
            b' "size": 1, "sha256": "x", "file": "f", "tables": [1]}',
            "tables is list, not dict",
        ),
    ],
)
def test_damaged_manifests_are_refused_with_the_file_and_the_fault(body, why):
    with pytest.raises(VerificationFailed) as caught:
        manifest.loads(body, "/b/daily/x.manifest.json")
    assert caught.value.message.startswith("Failed to read manifest /b/daily/x.manifest.json: ")
    assert why in caught.value.message
