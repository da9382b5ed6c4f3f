"""The playbooks with S3: backup copies off-site, restore_from_s3 brings it back."""

from __future__ import annotations

import subprocess

from conftest import OWNER_PASSWORD, ROOT, AppDB, fingerprint
from s3_fixtures import SECRET_KEY

from lifeboat import naming


def playbook(name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", f"playbooks/{name}.yml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_backup_playbook_uploads_and_restore_playbook_restores_from_s3(
    app_db, pg, backup_dir, lifeboat_env, s3
):
    env = {**lifeboat_env, **s3.env, "DATABASE_URL": app_db.url}
    where = ("-e", f"lifeboat_backup_dir={backup_dir}")

    checked = playbook("backup", env, *where, "--check")
    assert checked.returncode == 0, checked.stdout
    assert s3.objects() == []  # check mode uploads nothing

    proc = playbook("backup", env, *where, "-e", "lifeboat_s3_sse=AES256", "-vvv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dump] = [p for p in (backup_dir / "daily").iterdir() if naming.parse(p.name)]
    url = f"s3://{s3.bucket}/backups/daily/{dump.name}"
    assert url in proc.stdout
    assert s3.objects() == [
        f"backups/daily/{dump.name}",
        f"backups/daily/{dump.name}.manifest.json",
    ]

    copy = f"{app_db.name}_from_s3"
    restored = playbook(
        "restore",
        env,
        *where,
        "-e",
        f"restore_from_s3={url}",
        "-e",
        f"target_database={copy}",
        "-e",
        "confirm=true",
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert fingerprint(AppDB(copy, app_db.url_for(copy), pg)) == fingerprint(app_db)
    for out in (checked, proc, restored):
        assert SECRET_KEY not in out.stdout + out.stderr
        assert OWNER_PASSWORD not in out.stdout + out.stderr


def test_backup_playbook_fails_naming_s3_and_keeps_the_local_copy(
    app_db, backup_dir, lifeboat_env, s3
):
    env = {**lifeboat_env, **s3.env, "DATABASE_URL": app_db.url, "BACKUP_S3_BUCKET": "no-bucket"}
    proc = playbook("backup", env, "-e", f"lifeboat_backup_dir={backup_dir}")
    assert proc.returncode != 0
    assert "S3 copy FAILED" in proc.stdout and "NoSuchBucket" in proc.stdout
    assert "changed: true" in proc.stdout  # honest: the local backup was written
    [dump] = [p for p in (backup_dir / "daily").iterdir() if naming.parse(p.name)]
    assert (backup_dir / "daily" / f"{dump.name}.manifest.json").exists()
    assert SECRET_KEY not in proc.stdout + proc.stderr
