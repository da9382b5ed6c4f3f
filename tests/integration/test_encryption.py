"""Client-side encryption with age: real `age`, real keys, real PostgreSQL, real S3 (moto).

The promises: an encrypted backup is ciphertext on disk and in the bucket,
stock tools (`age -d | gunzip | psql`) restore it, lifeboat restores and
verifies it with the identity file, and without the right key a restore
fails before the database is touched.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, ROOT, fingerprint, make_db, run_cli

from lifeboat import naming

GZIP_MAGIC = b"\x1f\x8b"
HEADER = b"PostgreSQL database dump"


def keygen(path: Path) -> str:
    """A new age identity file (0600); returns its public recipient."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    path.chmod(0o600)
    return subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def keys(tmp_path) -> dict:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    found = {}
    for name in ("good", "other"):
        found[name] = folder / f"{name}.txt"
        found[f"{name}_recipient"] = keygen(found[name])
    return found


def encrypted_env(env: dict, keys: dict, identity: bool = True) -> dict:
    env = dict(env, LIFEBOAT_ENCRYPT_RECIPIENTS=keys["good_recipient"])
    if identity:
        env["LIFEBOAT_ENCRYPT_IDENTITY_FILE"] = str(keys["good"])
    return env


def the_backup(backup_dir: Path, type_: str = "daily") -> Path:
    [dump] = sorted(p for p in (backup_dir / type_).iterdir() if naming.parse(p.name))
    return dump


def scratch_left(pg, name: str) -> list[str]:
    return pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}\\_\\_%'").split()


def test_encrypted_backup_is_ciphertext_and_stock_tools_restore_it(
    app_db, pg, backup_dir, lifeboat_env, keys
):
    env = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url), keys)
    run_cli(["backup"], env, check=True)
    dump = the_backup(backup_dir)
    assert dump.name.endswith(".sql.gz.age")
    data = dump.read_bytes()
    assert not data.startswith(GZIP_MAGIC) and data.startswith(b"age-encryption.org/v1")
    manifest = json.loads(Path(f"{dump}.manifest.json").read_text())
    assert manifest["encryption"] == {"method": "age", "recipients": [keys["good_recipient"]]}
    assert manifest["size"] == len(data)
    assert manifest["rows_exact"] and manifest["tables"]["public.users"] > 0
    assert str(keys["good"]) not in json.dumps(manifest)
    assert "AGE-SECRET-KEY" not in json.dumps(manifest)

    # Without lifeboat: age -d -i key FILE | gunzip -c | psql
    copy = make_db(pg, seed=False)
    pipeline = (
        f"age -d -i {keys['good']} {dump} | gunzip -c | "
        f'psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d "$TARGET"'
    )
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        check=True,
        capture_output=True,
        env=dict(env, TARGET=copy.url),
    )
    assert fingerprint(copy) == fingerprint(app_db)

    # Listing parses the name; verify with the identity checks the contents.
    listing = run_cli(["list"], env, check=True).stdout
    assert dump.name in listing and "complete" in listing
    proc = run_cli(["verify", str(dump)], env, check=True)
    assert "age decryption complete" in proc.stdout
    assert "row counts of 2 tables match the manifest" in proc.stdout


def test_restore_with_identity_and_refusals_without(app_db, pg, backup_dir, lifeboat_env, keys):
    env = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url), keys)
    run_cli(["backup"], env, check=True)
    dump = the_backup(backup_dir)
    before = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    damaged = fingerprint(app_db)

    # No identity file: refused, nothing touched, no scratch, no pre-restore backup.
    no_key = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url), keys, identity=False)
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], no_key)
    assert proc.returncode == 1
    assert "encrypted with age and no identity file" in proc.stderr
    assert "lifeboat_encrypt_identity_file" in proc.stderr
    assert fingerprint(app_db) == damaged and scratch_left(pg, app_db.name) == []
    assert not (backup_dir / "pre-restore").exists()

    # Wrong identity: refused the same way, the key's contents never shown.
    wrong = dict(env, LIFEBOAT_ENCRYPT_IDENTITY_FILE=str(keys["other"]))
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], wrong)
    assert proc.returncode == 1
    assert "cannot decrypt" in proc.stderr and "no identity matched" in proc.stderr
    assert "AGE-SECRET-KEY" not in proc.stdout + proc.stderr
    assert fingerprint(app_db) == damaged and scratch_left(pg, app_db.name) == []
    assert not (backup_dir / "pre-restore").exists()

    # The right one: restored, and the pre-restore backup is encrypted too.
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == before and scratch_left(pg, app_db.name) == []
    pre = the_backup(backup_dir, "pre-restore")
    assert pre.name.endswith(".sql.gz.age")
    assert json.loads(Path(f"{pre}.manifest.json").read_text())["encryption"]["method"] == "age"
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr


def test_verify_with_and_without_identity(app_db, backup_dir, lifeboat_env, keys):
    env = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url), keys)
    run_cli(["backup"], env, check=True)
    dump = the_backup(backup_dir)
    no_key = encrypted_env(lifeboat_env, keys, identity=False)
    proc = run_cli(["verify", str(dump)], no_key, check=True)
    assert "encrypted: contents not checked (no identity file)" in proc.stdout
    assert "size and sha256 match the manifest" in proc.stdout

    wrong = dict(env, LIFEBOAT_ENCRYPT_IDENTITY_FILE=str(keys["other"]))
    proc = run_cli(["verify", str(dump)], wrong)
    assert proc.returncode == 1 and "could not be decrypted" in proc.stderr

    # A flipped byte fails the checksum with or without the key.
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    for variant in (no_key, env):
        proc = run_cli(["verify", str(dump)], variant)
        assert proc.returncode == 1 and "Backup verification failed" in proc.stderr


def test_deep_verify_decrypts_or_refuses(app_db, pg, backup_dir, lifeboat_env, keys):
    env = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url), keys)
    run_cli(["backup"], env, check=True)
    proc = run_cli(["verify", "--latest", "--deep"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 tables and" in proc.stdout and "rows match the manifest" in proc.stdout
    no_key = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url), keys, identity=False)
    proc = run_cli(["verify", "--latest", "--deep"], no_key)
    assert proc.returncode == 1 and "no identity file" in proc.stdout
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%lifeboat_drill%'") == "0"


def test_custom_format_with_recipients_is_refused(app_db, backup_dir, lifeboat_env, keys):
    env = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url), keys)
    proc = run_cli(["backup"], dict(env, LIFEBOAT_FORMAT="custom"))
    assert proc.returncode == 2
    assert "client-side encryption needs format plain" in proc.stderr
    assert not (backup_dir / "daily").exists()


def test_bad_recipient_fails_before_dumping(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_ENCRYPT_RECIPIENTS="age1notakey")
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1 and "age refuses encrypt_recipients" in proc.stdout
    assert not [p for p in (backup_dir / "daily").iterdir() if naming.parse(p.name)]


def test_s3_copy_is_ciphertext_and_restores_with_the_identity(
    app_db, backup_dir, lifeboat_env, keys, s3
):
    env = encrypted_env(dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env), keys)
    run_cli(["backup"], env, check=True)
    dump = the_backup(backup_dir)
    key = f"backups/daily/{dump.name}"
    body = s3.get(key)
    assert body == dump.read_bytes()
    assert not body.startswith(GZIP_MAGIC) and HEADER not in body and b"COPY " not in body
    assert json.loads(s3.get(f"{key}.manifest.json"))["encryption"]["method"] == "age"

    before = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    proc = run_cli(
        ["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm", "--skip-pre-backup"],
        env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == before


def playbook(name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", f"playbooks/{name}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_playbooks_pass_the_encryption_settings(app_db, backup_dir, lifeboat_env, keys):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    where = ("-e", f"lifeboat_backup_dir={backup_dir}")
    recipients = json.dumps({"lifeboat_encrypt_recipients": [keys["good_recipient"]]})
    proc = playbook("backup.yml", env, *where, "-e", recipients)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert the_backup(backup_dir).name.endswith(".sql.gz.age")
    before = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    restore = (*where, "-e", "restore_latest=true", "-e", "confirm=true", "-e", recipients)
    proc = playbook("restore.yml", env, *restore)
    assert proc.returncode != 0 and "no identity file" in proc.stdout
    identity = ("-e", f"lifeboat_encrypt_identity_file={keys['good']}")
    proc = playbook("restore.yml", env, *restore, *identity)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == before
    assert "AGE-SECRET-KEY" not in proc.stdout + proc.stderr
