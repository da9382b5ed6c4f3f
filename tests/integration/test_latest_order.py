"""`--latest` is the newest: sequence numbers count, future-dated backups never win silently."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from conftest import fingerprint, run_cli

from lifeboat import backup, naming, settings


def config_for(db, backup_dir):
    return settings.resolve({"database_url": db.url, "backup_dir": str(backup_dir)})


def test_latest_picks_the_later_backup_of_the_same_second(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    second = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    config = config_for(app_db, backup_dir)
    app_db.sql("CREATE TABLE marker (what text); INSERT INTO marker VALUES ('first')")
    [first] = backup.run(config, now=second)
    app_db.sql("INSERT INTO marker VALUES ('later')")
    expected = fingerprint(app_db)
    [later] = backup.run(config, now=second)
    assert first.ok and later.ok, (first.error, later.error)
    # Same second: the later one carries the `-1` sequence suffix.
    assert naming.parse(later.file.rsplit("/", 1)[-1]).seq == 1
    assert naming.parse(first.file.rsplit("/", 1)[-1]).seq == 0

    app_db.sql("DELETE FROM marker")
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert later.file in proc.stdout
    assert fingerprint(app_db) == expected


def test_future_dated_backup_flags_status_and_never_wins_silently(app_db, backup_dir, lifeboat_env):
    # Daily backups only: weekly and monthly are not checked here.
    env = dict(
        lifeboat_env,
        DATABASE_URL=app_db.url,
        LIFEBOAT_STATUS_MAX_AGE_HOURS='{"weekly": 0, "monthly": 0}',
    )
    app_db.sql("CREATE TABLE marker (what text); INSERT INTO marker VALUES ('sane')")
    run_cli(["backup"], env, check=True)
    expected = fingerprint(app_db)
    proc = run_cli(["status"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # all OK before the skewed one

    # A host with its clock two days ahead writes into the same store.
    app_db.sql("INSERT INTO marker VALUES ('skewed')")
    ahead = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=2)
    [skewed] = backup.run(config_for(app_db, backup_dir), now=ahead)
    assert skewed.ok, skewed.error
    skewed_name = skewed.file.rsplit("/", 1)[-1]

    proc = run_cli(["status", "--json"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [daily] = json.loads(proc.stdout)["rows"]
    assert daily["state"] == "FUTURE"
    assert daily["future"] == skewed_name
    assert "in the future" in daily["reason"]
    # The age shown is the newest sane backup's, not a negative one.
    assert daily["newest"] != skewed_name and daily["age_seconds"] >= 0
    text = run_cli(["status"], env)
    assert "FUTURE" in text.stdout and "NOT OK" in text.stdout

    app_db.sql("DELETE FROM marker")
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected  # the sane backup, not the skewed one
    assert "future-dated" in proc.stdout and skewed_name in proc.stdout

    # The dry run says the same before anything is touched.
    plan = run_cli(["restore", "--latest", "--dry-run"], env)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "warning: Passed over 1 future-dated backup(s)" in plan.stdout
