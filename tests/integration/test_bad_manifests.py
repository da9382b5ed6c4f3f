"""Bad manifests don't block recovery: `list` marks them, `--latest` falls back with a warning."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest
from conftest import fingerprint, run_cli

from lifeboat import naming

BAD = {
    "five": b"5",
    "null": b"null",
    "empty object": b"{}",
    "truncated": b'{"database": "app", "type": "dai',
    "wrong types": json.dumps(
        {
            "database": "x",
            "type": "daily",
            "format": "plain",
            "compression": "gzip",
            "size": "12",
            "sha256": None,
            "file": "f",
        }
    ).encode(),
}


def plant_damaged(backup_dir, good, count: int) -> list[str]:
    """Copies of the good backup named as newer ones, each with a damaged manifest."""
    parsed = naming.parse(good.name)
    planted = []
    for seconds, body in enumerate(list(BAD.values())[:count], start=1):
        name = naming.BackupName(
            parsed.created + timedelta(seconds=seconds), 0, parsed.label, "daily", parsed.ext
        )
        path = backup_dir / name.path
        shutil.copy(good, path)
        (backup_dir / (name.path + naming.MANIFEST_SUFFIX)).write_bytes(body)
        planted.append(str(path))
    return planted


@pytest.fixture
def one_good_backup(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    [good] = [p for p in (backup_dir / "daily").iterdir() if p.name.endswith(".sql.gz")]
    return env, good


def test_list_marks_damaged_manifests(one_good_backup, backup_dir):
    env, good = one_good_backup
    planted = plant_damaged(backup_dir, good, len(BAD))
    proc = run_cli(["list", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {row["path"]: row for row in json.loads(proc.stdout)}
    assert rows[str(good)]["state"] == "complete"
    for path in planted:
        assert rows[path]["state"] == "damaged", rows[path]
        assert rows[path]["error"].startswith(f"Failed to read manifest {path}")
    text = run_cli(["list"], env)
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stdout.count("damaged") >= 2 * len(BAD)  # a STATE cell and a reason each
    assert "not a JSON object" in text.stdout and "not valid JSON" in text.stdout


def test_latest_falls_back_to_the_newest_good_backup(one_good_backup, app_db, backup_dir):
    env, good = one_good_backup
    expected = fingerprint(app_db)
    planted = plant_damaged(backup_dir, good, len(BAD))
    app_db.sql("DELETE FROM plots")
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"restored from {good}" in proc.stdout
    assert fingerprint(app_db) == expected
    for path in planted:  # every newer damaged one is named, with the reason
        assert f"Skipped a newer backup: {path} has a damaged manifest" in proc.stdout


def test_only_damaged_backups_is_a_clear_refusal(one_good_backup, app_db, backup_dir):
    env, good = one_good_backup
    (backup_dir / "daily" / (good.name + naming.MANIFEST_SUFFIX)).write_bytes(b"null")
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 1
    assert "No complete daily/weekly/monthly backup" in proc.stdout + proc.stderr
    assert f"{good} has a damaged manifest" in proc.stdout
    assert "damaged manifest" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert fingerprint(app_db) == before
