"""Parallel dumps off-site (issue 14): `pg_dump -Fd -j N` copied to S3 (moto) and
encrypted with age, as one tar stream, restored from S3 exactly.

The promises: the object in S3 is the local tar byte for byte and has the
manifest's sha256; stock tools (`tar`, `age`, `pg_restore`) read it; a restore
from S3 brings the realistic database back exactly; a changed object, or a tar
whose members reach outside its folder, is refused before the database is
touched and writes nothing outside lifeboat's work space.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import fingerprint, make_db, make_realistic_db, run_cli
from realistic_restore import superuser_url
from test_encryption import keygen

from lifeboat import naming

AGE_MAGIC = b"age-encryption.org/v1"


def the_backup(folder: Path) -> Path:
    [found] = sorted(p for p in folder.iterdir() if naming.parse(p.name))
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def directory_env(lifeboat_env: dict, s3, url: str, **extra) -> dict:
    return dict(
        lifeboat_env, DATABASE_URL=url, LIFEBOAT_FORMAT="directory", LIFEBOAT_JOBS="2",
        **s3.env, **extra,
    )  # fmt: skip


def scratch_and_replaced(pg, name: str) -> list[str]:
    return pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}\\_\\_%'").split()


def test_directory_dump_goes_to_s3_as_one_tar_and_restores_exactly(
    pg, backup_dir, lifeboat_env, s3
):
    db = make_realistic_db(pg)
    env = directory_env(lifeboat_env, s3, superuser_url(db))
    before = fingerprint(db, superuser=True)
    backed = run_cli(["backup"], env, check=True)

    # Locally: the same tar as in S3 (one pipeline fed both), its manifest saying so.
    tar = the_backup(backup_dir / "daily")
    assert tar.name.endswith(".dir.tar") and tar.is_file()
    assert not [p for p in (backup_dir / "daily").iterdir() if p.name.endswith(".partial")]
    data = tar.read_bytes()
    manifest = json.loads(Path(f"{tar}.manifest.json").read_text())
    assert manifest["format"] == "directory" and manifest["container"] == "tar"
    assert manifest["size"] == len(data) and manifest["sha256"] == sha256(data)
    assert manifest["rows_exact"] and manifest["tables"]["sales.customer"] > 0
    key = f"backups/daily/{tar.name}"
    assert s3.objects() == [key, f"{key}.manifest.json"]
    assert sha256(s3.get(key)) == manifest["sha256"]
    remote = json.loads(s3.get(f"{key}.manifest.json"))
    assert (
        remote["sha256"] == manifest["sha256"] and remote["s3"]["url"] == f"s3://{s3.bucket}/{key}"
    )
    assert f"s3://{s3.bucket}/{key}" in backed.stdout

    # Stock tools: a POSIX tar of pg_dump's folder, plain 0600 files, toc.dat among them.
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
    assert {m.name for m in members} == set(manifest["files"]) and "toc.dat" in manifest["files"]
    assert all(m.isreg() and m.mode == 0o600 and "/" not in m.name for m in members)

    # Listed in both stores, verified from S3 by reading every data block.
    rows = json.loads(run_cli(["list", "--json"], env, check=True).stdout)
    assert sorted((r["store"], r["state"], r["size"]) for r in rows) == [
        ("local", "complete", len(data)),
        ("s3", "complete", len(data)),
    ]
    verified = run_cli(["verify", f"s3://{s3.bucket}/{key}"], env, check=True).stdout
    assert "tar: size and sha256 match the manifest" in verified
    assert "pg_restore read every data block" in verified
    assert run_cli(["verify", str(tar)], env, check=True).returncode == 0
    assert not list((backup_dir / ".verify").iterdir())

    # The local copy is gone: the database comes back from S3 alone, exactly.
    tar.unlink()
    Path(f"{tar}.manifest.json").unlink()
    db.sql("DELETE FROM sales.feedback WHERE id % 3 = 0; DROP TABLE reporting.snapshot", True)
    assert fingerprint(db, superuser=True) != before
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(db, superuser=True) == before
    assert not list((backup_dir / ".restore").glob("*/*"))  # the unpacked folder is removed
    # The pre-restore copy stays local and, unencrypted, a folder pg_restore reads as is.
    pre = the_backup(backup_dir / "pre-restore")
    assert pre.name.endswith(".dir") and pre.is_dir()


def test_retention_and_prune_handle_tar_backups_in_both_stores(
    app_db, backup_dir, lifeboat_env, s3
):
    env = directory_env(lifeboat_env, s3, app_db.url)
    run_cli(["backup"], env, check=True)
    tar = the_backup(backup_dir / "daily")
    old = tar.name.replace(tar.name.split("-backup-")[1], "2020-01-01T02-00-00.dir.tar")
    for suffix in ("", ".manifest.json"):
        data = Path(f"{tar}{suffix}").read_bytes()
        (backup_dir / "daily" / f"{old}{suffix}").write_bytes(data)
        s3.put(f"backups/daily/{old}{suffix}", data)
    proc = run_cli(["prune"], env, check=True)
    assert "2 backup(s) deleted." in proc.stdout, proc.stdout
    assert not (backup_dir / "daily" / old).exists() and tar.exists()
    assert s3.objects() == [f"backups/daily/{tar.name}", f"backups/daily/{tar.name}.manifest.json"]


def test_a_killed_runs_dump_folder_is_removed_by_the_next_run(app_db, backup_dir, lifeboat_env, s3):
    env = directory_env(lifeboat_env, s3, app_db.url)
    leftover = backup_dir / "daily" / f"{app_db.name}-daily-backup-2020-01-01T02-00-00.dir.tar"
    folder = Path(f"{leftover}.pg_dump.partial")
    folder.mkdir(parents=True)
    (folder / "toc.dat").write_bytes(b"half a dump")
    proc = run_cli(["backup"], env, check=True)
    assert not folder.exists() and "removed leftover" in proc.stderr
    assert the_backup(backup_dir / "daily").name.endswith(".dir.tar")


def test_drill_dry_run_and_local_restore_read_the_local_tar(app_db, backup_dir, lifeboat_env, s3):
    env = directory_env(lifeboat_env, s3, app_db.url)
    run_cli(["backup"], env, check=True)
    tar = the_backup(backup_dir / "daily")
    drill = run_cli(["verify", "--latest", "--deep"], env)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "directory contents match the manifest's sha256" in drill.stdout
    app_db.sql("DELETE FROM plots")
    changed = fingerprint(app_db)
    plan = run_cli(["restore", "--latest", "--dry-run"], env, check=True).stdout
    assert "would restore" in plan and "tar: size and sha256 match the manifest" in plan
    assert fingerprint(app_db) == changed
    proc = run_cli(["restore", "--file", str(tar), "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(app_db.sql("SELECT count(*) FROM plots")) > 0
    assert tar.exists() and not list((backup_dir / ".restore").glob("*/*"))
    assert not [p for p in backup_dir.rglob("*") if p.name.startswith("unpack-")]


def test_encrypted_directory_dump_round_trip_through_s3(pg, backup_dir, lifeboat_env, s3, tmp_path):
    db = make_realistic_db(pg)
    (tmp_path / "keys").mkdir(mode=0o700)
    key_file = tmp_path / "keys" / "key.txt"
    recipient = keygen(key_file)
    env = directory_env(
        lifeboat_env,
        s3,
        superuser_url(db),
        LIFEBOAT_ENCRYPT_RECIPIENTS=recipient,
        LIFEBOAT_ENCRYPT_IDENTITY_FILE=str(key_file),
    )
    before = fingerprint(db, superuser=True)
    run_cli(["backup", "--type", "weekly"], env, check=True)
    tar = the_backup(backup_dir / "weekly")
    assert tar.name.endswith(".dir.tar.age")
    key = f"backups/weekly/{tar.name}"
    data = s3.get(key)
    assert data == tar.read_bytes() and data.startswith(AGE_MAGIC)  # ciphertext only
    manifest = json.loads(s3.get(f"{key}.manifest.json"))
    assert manifest["encryption"] == {"method": "age", "recipients": [recipient]}
    assert manifest["sha256"] == sha256(data) and manifest["container"] == "tar"

    # Stock tools: age -d | tar -x, then pg_restore reads the folder.
    listing = subprocess.run(
        f"age -d -i {key_file} {tar} | tar -t", shell=True, check=True, capture_output=True,
        text=True,
    ).stdout.split()  # fmt: skip
    assert sorted(listing) == sorted(manifest["files"])

    tar.unlink()
    Path(f"{tar}.manifest.json").unlink()
    db.sql("TRUNCATE sales.feedback, reporting.snapshot", True)
    proc = run_cli(["restore", "--latest", "--confirm"], env)  # only S3 has one
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"s3://{s3.bucket}/{key}" in proc.stdout
    assert fingerprint(db, superuser=True) == before
    # Its pre-restore copy is encrypted too, so it is a tar as well.
    assert the_backup(backup_dir / "pre-restore").name.endswith(".dir.tar.age")

    # Without the key nothing is touched.
    no_key = dict(env)
    no_key.pop("LIFEBOAT_ENCRYPT_IDENTITY_FILE")
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], no_key)
    assert proc.returncode == 1 and "no identity file" in proc.stdout + proc.stderr
    assert fingerprint(db, superuser=True) == before


def test_tampered_tar_in_s3_is_refused_before_the_database_is_touched(
    pg, backup_dir, lifeboat_env, s3
):
    db = make_db(pg)
    env = directory_env(lifeboat_env, s3, db.url)
    run_cli(["backup"], env, check=True)
    key = f"backups/daily/{the_backup(backup_dir / 'daily').name}"
    data = bytearray(s3.get(key))
    data[len(data) // 2] ^= 0xFF  # inside some table's data file
    s3.put(key, bytes(data))
    db.sql("CREATE TABLE marker (id int)")
    before = fingerprint(db)
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], env)
    assert proc.returncode == 1
    [failed] = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert key in failed and "does not match its manifest" in failed and "sha256 differs" in failed
    assert fingerprint(db) == before  # the marker too: the database is as it was
    assert scratch_and_replaced(pg, db.name) == []
    assert not (backup_dir / "pre-restore").exists() or not list(
        (backup_dir / "pre-restore").iterdir()
    )  # refused before even the safety copy
    assert not list((backup_dir / ".restore").glob("*/*"))


def hostile_tar(kind: str, toc: bytes) -> bytes:
    """pg_dump's toc.dat plus one member a restore must refuse."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("toc.dat")
        info.size = len(toc)
        archive.addfile(info, io.BytesIO(toc))
        evil = tarfile.TarInfo(
            {"dotdot": "../escaped.txt", "absolute": "/tmp/lifeboat-escaped"}.get(kind, "3001.dat")
        )
        if kind == "symlink":
            evil.type, evil.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            evil.type, evil.devmajor, evil.devminor = tarfile.CHRTYPE, 1, 3
        payload = b"owned\n" if kind in ("dotdot", "absolute") else b""
        evil.size = len(payload)
        archive.addfile(evil, io.BytesIO(payload))
    return out.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_tar_with_a_hostile_member_is_refused(kind, pg, backup_dir, lifeboat_env, s3):
    db = make_db(pg)
    env = directory_env(lifeboat_env, s3, db.url)
    run_cli(["backup"], env, check=True)
    tar = the_backup(backup_dir / "daily")
    with tarfile.open(tar) as real:
        toc = real.extractfile("toc.dat").read()
    # Object and manifest both replaced (no manifest key configured): the checksum
    # matches, so only the member check stands between the tar and the disk.
    evil = hostile_tar(kind, toc)
    manifest = json.loads(Path(f"{tar}.manifest.json").read_text())
    manifest.update(size=len(evil), sha256=sha256(evil))
    key = f"backups/daily/{tar.name}"
    s3.put(key, evil)
    s3.put(f"{key}.manifest.json", json.dumps(manifest).encode())
    before = fingerprint(db)
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], env)
    assert proc.returncode == 1
    [failed] = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert "tar member" in failed and "is refused" in failed, failed
    assert fingerprint(db) == before and scratch_and_replaced(pg, db.name) == []
    assert not (backup_dir / ".restore" / "escaped.txt").exists()
    assert not Path("/tmp/lifeboat-escaped").exists()
    assert not list((backup_dir / ".restore").glob("*/*"))
    verified = run_cli(["verify", f"s3://{s3.bucket}/{key}"], env)
    assert verified.returncode == 1 and "is refused" in verified.stdout + verified.stderr
