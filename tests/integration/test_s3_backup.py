"""Off-site copies end to end: `lifeboat` against a real S3 protocol endpoint (moto).

Every failure test checks the same promise: the local backup is complete and
valid, the run exits non-zero naming S3 and the cause, nothing half-uploaded
is listed as a backup, and no credential shows up in the output.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, ROOT, AppDB, fingerprint, make_db, run_cli
from s3_fixtures import (
    ACCESS_KEY,
    SECRET_KEY,
    CuttingProxy,
    aws_env,
    free_port,
    moto_with_iam_auth,
)

from lifeboat import naming

MIB = 1 << 20


def local_backups(backup_dir: Path, type_: str = "daily") -> list[Path]:
    folder = backup_dir / type_
    return sorted(p for p in folder.iterdir() if naming.parse(p.name)) if folder.exists() else []


def assert_no_secrets(*blobs: str) -> None:
    for blob in blobs:
        assert SECRET_KEY not in blob and OWNER_PASSWORD not in blob
        assert urllib.parse.quote(SECRET_KEY, safe="") not in blob


def assert_local_backup_good(backup_dir: Path, env: dict) -> Path:
    [dump] = local_backups(backup_dir)
    assert Path(f"{dump}.manifest.json").exists()
    run_cli(["verify", str(dump)], env, check=True)
    return dump


def big_db(pg, megabytes: int):
    """A database whose uncompressed dump is about `megabytes` MiB."""
    db = make_db(pg, seed=False)
    rows = megabytes * MIB // 66
    db.sql(
        "CREATE TABLE blob AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS t "
        f"FROM generate_series(1, {rows}) g"
    )
    return db


def test_backup_is_copied_to_s3_and_listed_side_by_side(app_db, backup_dir, lifeboat_env, s3):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_S3_SSE="AES256", **s3.env)
    proc = run_cli(["backup"], env, check=True)
    dump = assert_local_backup_good(backup_dir, env)
    key = f"backups/daily/{dump.name}"
    assert s3.objects() == [key, f"{key}.manifest.json"]
    assert f"s3://{s3.bucket}/{key}" in proc.stdout

    # The same bytes as the local file, encrypted at rest, the manifest saying so.
    assert s3.get(key) == dump.read_bytes()
    head = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    manifest = json.loads(s3.get(f"{key}.manifest.json"))
    local = json.loads(Path(f"{dump}.manifest.json").read_text())
    assert manifest["sha256"] == local["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert manifest["s3"] == {"url": f"s3://{s3.bucket}/{key}", "sse": "AES256"}

    listing = run_cli(["list"], env, check=True).stdout
    assert f"s3: s3://{s3.bucket}/backups" in listing
    [row] = [line for line in listing.splitlines() if dump.name in line]
    assert row.split()[-3:] == ["complete", "complete", dump.name]
    rows = json.loads(run_cli(["list", "--json"], env, check=True).stdout)
    assert sorted(r["store"] for r in rows) == ["local", "s3"]

    verified = run_cli(["verify", f"s3://{s3.bucket}/{key}"], env, check=True).stdout
    assert verified.startswith(f"OK s3://{s3.bucket}/{key}")
    assert "sha256 match the S3 manifest" in verified and "row counts of 2 tables" in verified
    assert not list((backup_dir / ".verify").iterdir())  # the download is removed
    assert_no_secrets(proc.stdout, proc.stderr, listing, json.dumps(manifest))


def test_large_object_goes_up_in_several_parts(pg, backup_dir, lifeboat_env, s3):
    db = big_db(pg, 12)
    env = dict(
        lifeboat_env,
        DATABASE_URL=db.url,
        LIFEBOAT_COMPRESSION="none",
        LIFEBOAT_S3_PART_SIZE_MB="5",
        **s3.env,
    )
    run_cli(["backup"], env, check=True)
    dump = assert_local_backup_good(backup_dir, env)
    assert dump.stat().st_size > 10 * MIB
    key = f"backups/daily/{dump.name}"
    head = s3.client.head_object(Bucket=s3.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + the rest
    assert hashlib.sha256(s3.get(key)).hexdigest() == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert s3.unfinished_uploads() == []


def test_retention_applies_in_s3_with_the_same_rules(app_db, backup_dir, lifeboat_env, s3):
    name = app_db.name
    old = f"backups/daily/{name}-daily-backup-2020-01-01T02-00-00.sql.gz"
    half = f"backups/daily/{name}-daily-backup-2020-01-02T02-00-00.sql.gz"  # no manifest
    other_type = f"backups/weekly/{name}-weekly-backup-2020-01-01T03-00-00.sql.gz"
    other_db = "backups/daily/otherdb-daily-backup-2020-01-01T02-00-00.sql.gz"
    foreign = "backups/daily/notes-from-ops.txt"
    for key in (old, other_type, other_db):
        s3.put(key, b"old")
        s3.put(f"{key}.manifest.json", b"{}")
    s3.put(half, b"interrupted")
    s3.put(foreign, b"keep me")

    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    proc = run_cli(["backup"], env, check=True)
    [dump] = local_backups(backup_dir)
    keys = s3.objects()
    assert old not in keys and f"{old}.manifest.json" not in keys
    assert f"s3://{s3.bucket}/{old}" in proc.stderr  # logged as deleted
    for kept in (half, other_type, other_db, foreign, f"backups/daily/{dump.name}"):
        assert kept in keys, kept

    # `prune` applies there too, and never the newest complete backup of a type.
    assert "0 backup(s) deleted." in run_cli(["prune"], env, check=True).stdout
    assert other_type in s3.objects()


def test_nothing_is_pruned_when_s3_cannot_be_listed(app_db, backup_dir, lifeboat_env, s3):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    run_cli(["backup"], env, check=True)
    down = dict(
        env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", LIFEBOAT_S3_MAX_ATTEMPTS="1"
    )
    proc = run_cli(["prune"], down)
    assert proc.returncode == 1
    assert "S3 retention skipped" in proc.stderr and "cannot reach the S3 endpoint" in proc.stderr
    listing = run_cli(["list"], down)
    assert listing.returncode == 1 and "complete" in listing.stdout  # local still listed


def test_endpoint_down_keeps_the_local_backup_and_fails_naming_s3(
    app_db, backup_dir, lifeboat_env, s3
):
    env = {
        **lifeboat_env,
        **s3.env,
        "DATABASE_URL": app_db.url,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "LIFEBOAT_S3_MAX_ATTEMPTS": "2",
    }
    started = time.monotonic()
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    dump = assert_local_backup_good(backup_dir, env)
    assert f"local backup OK: {dump}" in proc.stdout
    assert "S3 copy FAILED" in proc.stdout and "cannot reach the S3 endpoint" in proc.stdout
    assert s3.objects() == []
    assert_no_secrets(proc.stdout, proc.stderr)


def test_endpoint_failing_mid_upload_lists_nothing_half_uploaded(pg, backup_dir, lifeboat_env, s3):
    db = big_db(pg, 14)
    port = int(s3.endpoint.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, limit=7 * MIB)
    env = {
        **lifeboat_env,
        **s3.env,
        "DATABASE_URL": db.url,
        "LIFEBOAT_COMPRESSION": "none",
        "LIFEBOAT_S3_PART_SIZE_MB": "5",
        "LIFEBOAT_S3_MAX_ATTEMPTS": "2",
        "AWS_ENDPOINT_URL": proxy.url,
    }
    try:
        proc = run_cli(["backup"], env)
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    assert proc.returncode == 1, proc.stdout
    dump = assert_local_backup_good(backup_dir, env)
    assert "S3 copy FAILED" in proc.stdout and f"local backup OK: {dump}" in proc.stdout
    assert s3.objects() == []  # the multipart upload never completed: nothing is visible

    # Listing through the real endpoint shows the local copy only.
    direct = dict(env, AWS_ENDPOINT_URL=s3.endpoint)
    listing = run_cli(["list", "--json"], direct, check=True).stdout
    assert [r["store"] for r in json.loads(listing)] == ["local"]

    # The next run cleans up the parts the failed run could not abort.
    run_cli(["backup"], direct, check=True)
    assert s3.unfinished_uploads() == []
    assert len([k for k in s3.objects() if k.endswith(".manifest.json")]) == 1
    assert_no_secrets(proc.stdout, proc.stderr)


def test_wrong_credentials_are_a_clear_error(app_db, backup_dir, lifeboat_env):
    with moto_with_iam_auth() as endpoint:
        env = dict(lifeboat_env, DATABASE_URL=app_db.url, **aws_env(endpoint, "lifeboat-auth-test"))
        proc = run_cli(["backup"], env)
    assert proc.returncode == 1
    assert "S3 refused the credentials (InvalidAccessKeyId)" in proc.stdout
    assert "AWS_ACCESS_KEY_ID" in proc.stdout  # the hint names what to check
    assert_local_backup_good(backup_dir, env)
    assert_no_secrets(proc.stdout, proc.stderr)
    assert ACCESS_KEY not in proc.stdout + proc.stderr


def test_missing_bucket_is_a_clear_error(app_db, backup_dir, lifeboat_env, s3):
    env = {
        **lifeboat_env,
        **s3.env,
        "DATABASE_URL": app_db.url,
        "BACKUP_S3_BUCKET": "no-such-bucket",
    }
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1
    assert "s3://no-such-bucket/" in proc.stdout
    assert "the bucket does not exist (NoSuchBucket)" in proc.stdout
    assert "aws s3 mb" in proc.stdout
    assert_local_backup_good(backup_dir, env)


def test_dry_run_names_the_s3_copy_and_uploads_nothing(app_db, backup_dir, lifeboat_env, s3):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    proc = run_cli(["backup", "--dry-run"], env, check=True)
    assert "would write" in proc.stdout
    assert s3.objects() == []


@pytest.mark.parametrize("how", ["from-s3", "latest"])
def test_restore_round_trip_from_s3(how, app_db, pg, backup_dir, lifeboat_env, s3):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    run_cli(["backup", "--type", "weekly"], env, check=True)
    [dump] = local_backups(backup_dir, "weekly")
    url = f"s3://{s3.bucket}/backups/weekly/{dump.name}"
    for path in (dump, Path(f"{dump}.manifest.json")):
        path.unlink()  # the local copy is gone: only S3 has it
    copy = f"{app_db.name}_copy"
    source = ["--from-s3", url] if how == "from-s3" else ["--latest"]
    proc = run_cli(["restore", *source, "--confirm", "--target-db", copy], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert url in proc.stdout
    restored = AppDB(copy, app_db.url_for(copy), pg)
    assert fingerprint(restored) == fingerprint(app_db)
    assert not list((backup_dir / ".restore").glob("*"))  # the download is cleaned up
    assert_no_secrets(proc.stdout, proc.stderr)


def test_tampered_s3_copy_is_refused_before_the_database_is_touched(
    app_db, backup_dir, lifeboat_env, s3
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    run_cli(["backup"], env, check=True)
    [dump] = local_backups(backup_dir)
    key = f"backups/daily/{dump.name}"
    data = bytearray(s3.get(key))
    data[len(data) // 2] ^= 0xFF
    s3.put(key, bytes(data))
    verified = run_cli(["verify", f"s3://{s3.bucket}/{key}"], env)
    assert verified.returncode == 1 and "does not match its manifest" in verified.stderr
    before = fingerprint(app_db)
    app_db.sql("CREATE TABLE marker (id int)")
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], env)
    assert proc.returncode == 1
    [failed] = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert key in failed and "sha256" in failed, failed  # says which file and why
    assert app_db.sql("SELECT count(*) FROM marker") == "0"  # untouched: marker still there
    assert {k: v for k, v in fingerprint(app_db).items() if k != "public.marker"} == before


def test_restore_from_an_incomplete_s3_upload_is_refused(app_db, lifeboat_env, s3):
    key = f"backups/daily/{app_db.name}-daily-backup-2025-01-15T02-00-00.sql.gz"
    s3.put(key, b"half")
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], env)
    assert proc.returncode == 1
    assert "has no manifest" in proc.stdout + proc.stderr
    assert fingerprint(app_db) == before


def test_killed_mid_upload_leaves_nothing_visible_in_s3(pg, backup_dir, lifeboat_env, s3):
    db = big_db(pg, 40)
    env = {
        **lifeboat_env,
        **s3.env,
        "DATABASE_URL": db.url,
        "LIFEBOAT_COMPRESSION": "none",
        "LIFEBOAT_S3_PART_SIZE_MB": "5",
    }
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "lifeboat"), "backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    parts = []
    while proc.poll() is None and not parts and time.monotonic() < deadline:
        for upload in s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []):
            parts = s3.client.list_parts(
                Bucket=s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            ).get("Parts", [])
        time.sleep(0.02)
    assert parts and proc.poll() is None, "the backup finished before a part was uploaded"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert s3.objects() == []  # nothing half-uploaded is visible
    assert s3.unfinished_uploads() == []  # and the multipart upload was aborted
    assert local_backups(backup_dir) == []
    assert not list((backup_dir / "daily").glob("*.partial"))
