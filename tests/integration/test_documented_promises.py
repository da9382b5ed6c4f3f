"""Promises of README and docs/ that had no test able to fail, against real servers.

Old backups are made by copying a real backup (file and manifest) under a name
dated days back: retention reads a backup's age from its name.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import boto3
from conftest import OWNER_PASSWORD, fingerprint, make_db, run_cli
from s3_fixtures import aws_env, free_port, wait_for_port
from test_backup_playbook import playbook
from test_notify import Hooks, assert_no_secret, notify_settings

from lifeboat import backup, monitor, naming


def stored(folder: Path) -> list[Path]:
    """Backups in a folder, oldest first (by time, then the `-N` of the same second)."""
    if not folder.exists():
        return []
    return sorted(
        (p for p in folder.iterdir() if naming.parse(p.name)), key=lambda p: naming.parse(p.name)
    )


def aged_copy(path: Path, days: float, backup_type: str | None = None) -> Path:
    """A copy of a backup and its manifest, named as if taken `days` ago."""
    parsed = naming.parse(path.name)
    older = naming.build(
        parsed.label, backup_type or parsed.type, parsed.created - timedelta(days=days), parsed.ext
    )
    store = path.parent.parent
    copy = store / older.path
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, copy)
    shutil.copyfile(f"{path}.manifest.json", f"{copy}.manifest.json")
    return copy


def one_backup(backup_dir: Path, env: dict, *args: str) -> Path:
    run_cli(["backup", *args], env, check=True)
    return stored(backup_dir / "daily")[-1]


# --- backup: pg_dump version, retention ----------------------------------------------------


def test_pg_dump_older_than_the_server_is_refused(app_db, backup_dir, lifeboat_env, tmp_path):
    # Debian 12 ships PostgreSQL 15 only: an older pg_dump is the real one behind a
    # wrapper that reports 14 (all lifeboat reads is `pg_dump --version`).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("pg_dump", path="/usr/lib/postgresql/15/bin")
    (bin_dir / "pg_dump").write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "pg_dump (PostgreSQL) 14.11"; exit 0; }\n'
        f'exec {real} "$@"\n'
    )
    (bin_dir / "pg_dump").chmod(0o755)
    for tool in ("psql", "pg_restore", "pg_dumpall"):
        (bin_dir / tool).symlink_to(f"/usr/lib/postgresql/15/bin/{tool}")
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PG_BIN_DIR=str(bin_dir))
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pg_dump 14.11 is older than the server (15." in proc.stdout, proc.stdout
    assert "postgresql-client" in proc.stdout
    assert stored(backup_dir / "daily") == []
    assert not any(backup_dir.rglob("*.partial"))
    state = monitor.read_states(str(backup_dir))[(app_db.name, "daily")]
    assert state["last_error_type"] == "VersionMismatch"


def test_backup_check_shows_what_retention_would_delete(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    newest = one_backup(backup_dir, env)
    old = aged_copy(newest, days=10)
    proc = run_cli(["backup", "--dry-run"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"would delete {old} (retention)" in proc.stdout
    assert str(newest) not in proc.stdout  # inside the window: kept
    # The playbook's check mode (`--check`) reports the same.
    checked = playbook(env, "-e", f"lifeboat_backup_dir={backup_dir}", "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"would delete {old}" in checked.stdout, checked.stdout[-3000:]
    assert f"would delete {newest}" not in checked.stdout
    assert stored(backup_dir / "daily") == [old, newest]  # nothing touched


def test_retention_deletes_nothing_when_the_store_cannot_be_listed(
    app_db, backup_dir, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    old = aged_copy(one_backup(backup_dir, env), days=10)
    # One type folder that cannot be listed (a file where the folder belongs).
    (backup_dir / "weekly").write_text("not a folder")
    proc = run_cli(["backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Retention skipped" in proc.stdout and "weekly" in proc.stdout, proc.stdout
    assert old.exists() and Path(f"{old}.manifest.json").exists()
    assert len(stored(backup_dir / "daily")) == 3  # the old one, the first, the new one


def test_no_retention_after_a_failed_backup(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    old = aged_copy(one_backup(backup_dir, env), days=10)
    before = stored(backup_dir / "daily")
    # Same database name (same label), but nothing listens there: the backup fails.
    broken = app_db.url.replace(f":{pg.port}/", f":{free_port()}/")
    proc = run_cli(["backup"], dict(env, DATABASE_URL=broken))
    assert proc.returncode == 1
    assert "retention" not in proc.stdout.lower()
    assert stored(backup_dir / "daily") == before and old.exists()


# --- S3: failure notification, retention AccessDenied --------------------------------------


def test_failed_s3_copy_notifies_a_failure(app_db, backup_dir, s3):
    hooks = Hooks()
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    try:
        config = notify_settings(app_db.url, backup_dir, hooks=hooks, s3_bucket=s3.bucket)
        config = dataclasses.replace(
            config, s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_max_attempts=1
        )
        [result] = backup.run(config)
    finally:
        hooks.shutdown()
        hooks.server_close()
    assert not result.ok and result.file and Path(result.file).exists()  # local copy kept
    [body] = hooks.bodies("/hook")
    assert body["kind"] == "backup" and body["ok"] is False and body["result"] == "failure"
    assert "S3" in body["error"], body["error"]
    assert_no_secret(json.dumps(hooks.bodies("/")), app_db.url)


def test_s3_retention_access_denied_is_a_warning(app_db, backup_dir, lifeboat_env):
    """A key that may upload but not delete: the backup is good, retention warns."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "lifeboat-no-delete"
    # The first 4 requests (the setup below) are unauthenticated; then IAM is enforced.
    server_env = dict(aws_env(endpoint, bucket), INITIAL_NO_AUTH_ACTION_COUNT="4")
    moto = Path(shutil.which("moto_server", path=str(Path(__file__).parents[2] / ".venv/bin")))
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "x", "aws_secret_access_key": "x"}  # fmt: skip
        boto3.client("s3", **admin).create_bucket(Bucket=bucket)
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="uploader")
        iam.put_user_policy(
            UserName="uploader",
            PolicyName="no-delete",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                    {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"}]}
            ),
        )  # fmt: skip
        key = iam.create_access_key(UserName="uploader")["AccessKey"]
        env = {
            **lifeboat_env,
            **aws_env(endpoint, bucket),
            "DATABASE_URL": app_db.url,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        first = run_cli(["backup"], env)
        assert first.returncode == 0, first.stdout + first.stderr
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
        )  # fmt: skip
        [name] = [
            o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]
            if naming.parse(o["Key"].rsplit("/", 1)[1])
        ]  # fmt: skip
        parsed = naming.parse(name.rsplit("/", 1)[1])
        old = (
            "backups/"
            + naming.build(
                parsed.label, "daily", parsed.created - timedelta(days=10), parsed.ext
            ).path
        )
        for suffix in ("", ".manifest.json"):
            client.copy_object(
                Bucket=bucket, Key=old + suffix, CopySource={"Bucket": bucket, "Key": name + suffix}
            )
        second = run_cli(["backup"], env)
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    finally:
        proc.terminate()
        proc.wait(10)
    assert second.returncode == 0, second.stdout + second.stderr  # the backup itself is good
    assert "S3 retention skipped" in second.stdout and "AccessDenied" in second.stdout, (
        second.stdout
    )
    assert old in keys  # nothing deleted, and said so
    assert key["SecretAccessKey"] not in second.stdout + second.stderr


# --- restore: pre-restore count, stock zstd --------------------------------------------------


def test_pre_restore_keeps_the_last_five(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    run_cli(["restore", "--latest", "--confirm"], env, check=True)
    [first] = stored(backup_dir / "pre-restore")
    older = [aged_copy(first, days=d) for d in (50, 40, 30, 20, 10)]  # by count, not age
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = stored(backup_dir / "pre-restore")
    assert len(kept) == 5 and kept[:4] == [*older[2:], first]  # the two oldest went
    assert not Path(f"{older[0]}.manifest.json").exists()
    # The daily backup it restored from is not a pre-restore one: untouched.
    assert len(stored(backup_dir / "daily")) == 1


def test_stock_sql_zst_restores(app_db, pg, tmp_path, lifeboat_env):
    expected = fingerprint(app_db)
    dump = tmp_path / "stock.sql.zst"
    subprocess.run(
        f"pg_dump --no-password -d '{app_db.url}' | zstd -q -o {dump}",
        shell=True,
        check=True,
        env=dict(lifeboat_env, PGPASSWORD=OWNER_PASSWORD),
    )
    copy = make_db(pg, seed=False)
    env = dict(lifeboat_env, DATABASE_URL=copy.url)
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(copy) == expected
