"""Pure parts of restore: names, requests, setting values, plan text."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lifeboat import restore
from lifeboat.errors import ConfigError, RestoreRefused

NOW = datetime(2025, 1, 15, 14, 30, 0, tzinfo=timezone.utc)


def test_scratch_and_replaced_names_fit_postgres_limit_and_match_leftovers():
    for db in ("plotzed", "x" * 63, "ü" * 31, "Mixed Case-db"):
        for make, tag in (
            (restore.scratch_name, restore.SCRATCH_TAG),
            (restore.replaced_name, restore.REPLACED_TAG),
        ):
            name = make(db, NOW)
            assert len(name.encode()) <= 63
            assert name.endswith(tag + "20250115143000")
            assert restore.names.leftover(db, tag).match(name)
    assert restore.scratch_name("plotzed", NOW) == "plotzed__lifeboat_restore_20250115143000"


def test_leftover_pattern_does_not_touch_other_databases():
    pattern = restore.names.leftover("app", restore.SCRATCH_TAG)
    assert not pattern.match("app2__lifeboat_restore_20250115143000")
    assert not pattern.match("app__lifeboat_restore_")
    assert not pattern.match("app__lifeboat_replaced_20250115143000")
    assert not pattern.match("app")


@pytest.mark.parametrize(
    "kwargs", [{}, {"latest": True, "file": "x"}, {"file": "x", "from_s3": "s3://b/k"}]
)
def test_request_needs_exactly_one_source(kwargs):
    with pytest.raises(ConfigError, match="exactly one source"):
        restore.Request(**kwargs).check()


def test_request_checks_type_and_target_name():
    with pytest.raises(ConfigError, match="Unknown backup type"):
        restore.Request(latest=True, backup_type="hourly").check()
    with pytest.raises(ConfigError, match="Invalid target database"):
        restore.Request(latest=True, target_db="x" * 64).check()
    restore.Request(latest=True, backup_type="pre-restore", target_db="plotzed_test").check()


def test_list_settings_are_quoted_item_by_item():
    assert (
        restore.scratch.list_value('"$user", public, "My Schema"')
        == "'$user', 'public', 'My Schema'"
    )
    assert restore.scratch.list_value("audit") == "'audit'"


def test_run_refuses_without_confirm_before_touching_anything():
    class NoSettings:  # run must not even look at the settings
        targets = ()

    with pytest.raises(RestoreRefused, match="needs confirmation") as err:
        restore.run(NoSettings(), restore.Request(latest=True))
    assert "--confirm" in err.value.hint and "confirm=true" in err.value.hint


def test_s3_url_must_be_an_s3_url():
    with pytest.raises(ConfigError, match="not an S3 URL"):
        restore.source.s3_source(None, "https://bucket/key")


def test_file_source_refuses_missing_and_partial(tmp_path):
    with pytest.raises(RestoreRefused, match="does not exist"):
        restore.file_source(str(tmp_path / "nope.sql.gz"))
    partial = tmp_path / "db-daily-backup-2025-01-15T14-30-00.sql.gz.partial"
    partial.write_bytes(b"x")
    with pytest.raises(RestoreRefused, match="unfinished"):
        restore.file_source(str(partial))
    named = tmp_path / "db-daily-backup-2025-01-15T14-30-00.sql.gz"
    named.write_bytes(b"x")
    with pytest.raises(RestoreRefused, match="no manifest"):
        restore.file_source(str(named))


def test_describe_plan_says_what_would_happen():
    item = {
        "database": "plotzed",
        "ok": True,
        "exists": True,
        "source": {
            "location": "/b/daily/f.sql.gz",
            "format": "plain",
            "compression": "gzip",
            "size": 2048,
            "created": "2025-01-15T02:00:00+00:00",
            "age": "12 h",
            "manifest": True,
            "sha256": "ab" * 32,
        },
        "checks": ["size and sha256 match the manifest"],
        "replaces": "plotzed (40.0 MiB, owner app)",
        "keep_replaced_as": "",
        "pre_restore_backup": "/b/pre-restore/p.sql.gz",
        "scratch": "plotzed__lifeboat_restore_20250115143000",
    }
    text = "\n".join(restore.describe_plan(item))
    assert "would restore /b/daily/f.sql.gz" in text and "12 h ago" in text
    assert "would replace: plotzed (40.0 MiB, owner app), then drop it" in text
    assert "pre-restore backup: /b/pre-restore/p.sql.gz" in text
    failed = dict(item, ok=False, error="No backup.", hint="Take one.")
    assert restore.describe_plan(failed) == ["plotzed: cannot restore: No backup. Take one."]
