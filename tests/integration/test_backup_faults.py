"""Backups under hostile conditions: full and read-only disks, a simulated calendar."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import make_db, run_cli

from lifeboat import naming

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def tiny_mount(tmp_path):
    mounts = []

    def mount(options: str):
        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
        mounts.append(target)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)


@needs_root
def test_disk_full_fails_clearly_and_leaves_nothing(pg, tiny_mount, lifeboat_env):
    db = make_db(pg, seed=False)
    # md5 hex compresses about 2:1: roughly 3 MiB of backup for a 1 MiB disk.
    db.sql(
        "CREATE TABLE blob AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h "
        "FROM generate_series(1, 60000) g"
    )
    root = tiny_mount("size=1m,mode=0755")
    proc = run_cli(
        ["backup"], dict(lifeboat_env, DATABASE_URL=db.url, LIFEBOAT_BACKUP_DIR=str(root))
    )
    assert proc.returncode == 1
    assert "disk full" in proc.stdout and "df -h" in proc.stdout
    assert os.listdir(root / "daily") == []


@needs_root
def test_read_only_backup_dir_fails_before_dumping(app_db, tiny_mount, lifeboat_env):
    root = tiny_mount("size=1m,ro")
    proc = run_cli(
        ["backup"],
        dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_BACKUP_DIR=str(root / "backups")),
    )
    assert proc.returncode == 1
    assert "Failed to write to backup directory" in proc.stdout
    assert "Read-only file system" in proc.stdout


@pytest.mark.skipif(not shutil.which("faketime"), reason="faketime (Debian package) not installed")
def test_retention_over_a_simulated_calendar(app_db, backup_dir, lifeboat_env):
    # Fake the wall clock only: timed waits on a faked monotonic clock hang.
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, FAKETIME_DONT_FAKE_MONOTONIC="1")

    def at(moment: str, *args: str):
        return subprocess.run(
            ["faketime", moment, str(lifeboat_env["PATH"].split(":")[0]) + "/lifeboat", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )

    for day in range(1, 11):
        at(f"2025-01-{day:02d} 02:00:00", "backup")
        if day in (1, 8):  # Jan 1 is past the daily window by Jan 10, inside the weekly one
            at(f"2025-01-{day:02d} 03:00:00", "backup", "--type", "weekly")
    at("2025-01-01 04:00:00", "backup", "--type", "monthly")
    # Retention after the last daily run keeps the seven-day window; Jan 3 02:00 sits on
    # its edge (kept unless the run crossed a second boundary).
    daily = sorted(
        naming.parse(p.name).created.day
        for p in (backup_dir / "daily").iterdir()
        if p.name.endswith(".sql.gz")
    )
    assert daily in (list(range(3, 11)), list(range(4, 11)))
    # An hour later the Jan 3 backup has surely left the window.
    at("2025-01-10 03:00:00", "prune")
    daily = sorted(
        naming.parse(p.name).created.day
        for p in (backup_dir / "daily").iterdir()
        if p.name.endswith(".sql.gz")
    )
    assert daily == list(range(4, 11))
    # Other types keep their own windows; manifests go with their files.
    weekly = sorted(naming.parse(p.name).created.day for p in (backup_dir / "weekly").glob("*.gz"))
    assert weekly == [1, 8]
    assert len(list((backup_dir / "monthly").glob("*.sql.gz"))) == 1
    for folder in ("daily", "weekly", "monthly"):
        files = {p.name for p in (backup_dir / folder).iterdir()}
        assert {n for n in files if n.endswith(".manifest.json")} == {
            n + ".manifest.json" for n in files if not n.endswith(".manifest.json")
        }
    # Months later, the newest of each type still stays even though expired.
    at("2026-01-01 05:00:00", "prune")
    for folder in ("daily", "weekly", "monthly"):
        assert len(list((backup_dir / folder).glob("*.sql.gz"))) == 1, folder


def test_files_without_a_manifest_are_never_touched_by_retention(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    (backup_dir / "daily").mkdir(parents=True)
    old = backup_dir / "daily" / f"{app_db.name}-daily-backup-2020-01-01T02-00-00.sql.gz"
    old.write_bytes(b"guide-era backup without a manifest")
    run_cli(["backup"], env, check=True)
    run_cli(["prune"], env, check=True)
    assert old.exists()
    listing = run_cli(["list"], env, check=True).stdout
    assert "no manifest" in listing
