"""The undo works: retention never deletes a backup a restore (or drill) is reading."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import fingerprint, run_cli

from lifeboat import backup, settings, storefs


def test_restoring_the_newest_pre_restore_backup_keeps_it(app_db, backup_dir, lifeboat_env):
    # Keep one pre-restore backup: the undo's own safety backup would push out the
    # very file being restored.
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_RETENTION='{"pre-restore": 1}')
    app_db.sql("CREATE TABLE marker (what text); INSERT INTO marker VALUES ('good')")
    run_cli(["backup"], env, check=True)
    good = fingerprint(app_db)
    app_db.sql("INSERT INTO marker VALUES ('written after the backup')")
    wanted = fingerprint(app_db)  # what the undo must bring back

    proc = run_cli(["restore", "--latest", "--confirm"], env)  # the restore to undo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == good
    [undo_file] = sorted((backup_dir / "pre-restore").glob("*.sql.gz"))

    proc = run_cli(["restore", "--file", str(undo_file), "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert fingerprint(app_db) == wanted
    assert undo_file.exists(), "retention deleted the backup being restored"
    assert undo_file.with_name(undo_file.name + ".manifest.json").exists()
    assert "a running restore or drill is reading it" in proc.stderr
    # The undo's own safety backup was taken too: two pre-restore backups now.
    assert len(list((backup_dir / "pre-restore").glob("*.sql.gz"))) == 2

    # Unpinned, the same retention deletes it on the next run: the pin did the work.
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not undo_file.exists()


def test_backup_retention_skips_a_file_another_run_is_reading(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_RETENTION='{"daily": 1}')
    config = settings.resolve({"database_url": app_db.url, "backup_dir": str(backup_dir)})
    old_moment = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=3)
    [old] = backup.run(config, now=old_moment)
    assert old.ok, old.error

    reading = storefs.Pin(old.file)  # what a restore or drill holds in another process
    assert reading.fd is not None
    try:
        proc = run_cli(["backup"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "a running restore or drill is reading it" in proc.stderr
        assert old.file in proc.stderr
        assert Path(old.file).read_bytes()[:2] == b"\x1f\x8b"  # still there, manifest too
        assert Path(old.file + ".manifest.json").read_text()
    finally:
        reading.close()

    proc = run_cli(["backup"], env)  # nobody reads it now: retention deletes it
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "retention deleted 1" in proc.stdout
    assert not Path(old.file).exists() and not Path(old.file + ".manifest.json").exists()
