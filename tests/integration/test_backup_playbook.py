"""`ansible-playbook playbooks/backup.yml` on the local inventory, as a user runs it."""

from __future__ import annotations

import subprocess

from conftest import OWNER_PASSWORD, ROOT

from lifeboat import naming


def playbook(env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "playbooks/backup.yml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_playbook_backs_up_and_prints_a_summary(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = playbook(env, "-e", f"lifeboat_backup_dir={backup_dir}", "-vvv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dump] = [p for p in (backup_dir / "daily").iterdir() if naming.parse(p.name)]
    assert f"{app_db.name} daily: {dump}" in proc.stdout.replace("\n        ", " ")
    encoded = app_db.url.split(":")[2].split("@")[0]
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr
    assert encoded not in proc.stdout + proc.stderr


def test_weekly_type_goes_to_its_folder(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = playbook(env, "-e", f"lifeboat_backup_dir={backup_dir}", "-e", "backup_type=weekly")
    assert proc.returncode == 0, proc.stdout
    assert [
        naming.parse(p.name).type for p in (backup_dir / "weekly").iterdir() if naming.parse(p.name)
    ] == ["weekly"]


def test_unknown_type_fails_before_anything_runs(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = playbook(env, "-e", f"lifeboat_backup_dir={backup_dir}", "-e", "backup_type=hourly")
    assert proc.returncode != 0
    assert "lifeboat_backup_type" in proc.stdout and "daily, weekly, monthly" in proc.stdout
    assert not backup_dir.exists()


def test_check_mode_reports_and_writes_nothing(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = playbook(env, "-e", f"lifeboat_backup_dir={backup_dir}", "--check")
    assert proc.returncode == 0, proc.stdout
    assert "would write" in proc.stdout
    assert not backup_dir.exists()


def test_missing_database_url_says_what_to_set(backup_dir, lifeboat_env):
    proc = playbook(lifeboat_env, "-e", f"lifeboat_backup_dir={backup_dir}")
    assert proc.returncode != 0
    assert "DATABASE_URL" in proc.stdout
