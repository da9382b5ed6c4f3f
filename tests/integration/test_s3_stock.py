"""Guide-era backups restore from S3: a stock `pg_dump | gzip` uploaded under a key
lifeboat did not name is accepted like a stock file given with --file:
downloaded, its format found from its bytes, verified fully before anything
is touched."""

from __future__ import annotations

import gzip
import subprocess

from conftest import AppDB, fingerprint, run_cli

GUIDE_KEY = "backups/daily/backup.sql.gz"  # the guide's own example


def stock_dump(app_db, *args: str) -> bytes:
    return subprocess.run(
        ["pg_dump", *args, "-d", app_db.url], capture_output=True, check=True
    ).stdout


def test_guide_style_key_restores_with_from_s3(app_db, pg, backup_dir, lifeboat_env, s3):
    s3.put(GUIDE_KEY, gzip.compress(stock_dump(app_db)))  # what `pg_dump | gzip` uploaded
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    expected = fingerprint(app_db, superuser=True)
    app_db.sql("DELETE FROM plots")
    url = f"s3://{s3.bucket}/{GUIDE_KEY}"

    plan = run_cli(["restore", "--from-s3", url, "--dry-run"], env)
    assert plan.returncode == 0, plan.stdout + plan.stderr

    proc = run_cli(["restore", "--from-s3", url, "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert url in proc.stdout and "2500 rows verified" in proc.stdout
    assert fingerprint(app_db, superuser=True) == expected
    assert not list((backup_dir / ".restore").rglob("restore-*"))  # the download is gone


def test_custom_format_stock_dump_restores_into_a_copy(app_db, pg, lifeboat_env, s3):
    key = "guide/weekly/app.dump"
    s3.put(key, stock_dump(app_db, "-Fc"))
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    copy = f"{app_db.name}_from_s3"
    proc = run_cli(
        ["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--target-db", copy, "--confirm"], env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(AppDB(copy, app_db.url_for(copy), pg)) == fingerprint(app_db)


def test_truncated_stock_dump_is_refused_before_anything_is_touched(
    app_db, backup_dir, lifeboat_env, s3
):
    whole = gzip.compress(stock_dump(app_db))
    s3.put(GUIDE_KEY, whole[: len(whole) // 2])  # an upload cut short
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    app_db.sql("DELETE FROM plots WHERE id % 2 = 0")
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{GUIDE_KEY}", "--confirm"], env)
    assert proc.returncode == 1
    assert "not a usable PostgreSQL dump" in proc.stdout + proc.stderr
    assert fingerprint(app_db) == before
    # Refused before the safety backup was taken.
    assert not list((backup_dir / "pre-restore").glob("*.sql.gz"))


def test_verify_accepts_a_stock_dump_in_s3_and_names_a_missing_key(lifeboat_env, app_db, s3):
    s3.put(GUIDE_KEY, gzip.compress(stock_dump(app_db)))
    env = dict(lifeboat_env, **s3.env)
    proc = run_cli(["verify", f"s3://{s3.bucket}/{GUIDE_KEY}"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "a stock dump" in proc.stdout
    missing = run_cli(["verify", f"s3://{s3.bucket}/backups/daily/nope.sql.gz"], env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_a_lifeboat_name_without_manifest_is_still_refused(app_db, lifeboat_env, s3):
    key = f"backups/daily/{app_db.name}-daily-backup-2025-01-15T02-00-00.sql.gz"
    s3.put(key, gzip.compress(stock_dump(app_db)))
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], env)
    assert proc.returncode != 0 and "has no manifest" in proc.stdout + proc.stderr
