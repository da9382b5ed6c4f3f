"""Relative restore_file / verify_file resolve where the user means them (issue 12.9).

On inventory/local (the control node) a relative path is relative to the
directory ansible-playbook runs in, as the README's
`ansible-playbook playbooks/restore.yml -e restore_file=backups/daily/NAME.sql.gz`
means it; on fleet hosts it is relative to the host's store. Every command runs
ansible-playbook the way a shell does (cwd and $PWD agree).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import ROOT, fingerprint, run_cli

LOCAL = ("-i", str(ROOT / "inventory" / "local"))
RESTORE = str(ROOT / "playbooks" / "restore.yml")


def ansible_playbook(cwd, env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", PWD=str(cwd))
    return subprocess.run(
        ["ansible-playbook", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture
def repo_store():
    """A store in the checkout (.cache is ignored), reached by a path relative to the repo root."""
    path = ROOT / ".cache" / f"test-relative-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def newest(store, kind="daily"):
    [dump] = [p for p in (store / kind).iterdir() if p.name.endswith(".sql.gz")]
    return dump


def test_restore_and_verify_from_the_repo_root_with_a_relative_path(
    app_db, repo_store, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_BACKUP_DIR=str(repo_store))
    run_cli(["backup"], env, check=True)
    relative = str(newest(repo_store).relative_to(ROOT))  # .cache/test-relative-.../daily/NAME
    expected = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")

    store = ("-e", f"lifeboat_backup_dir={repo_store}")
    proc = ansible_playbook(ROOT, env, "playbooks/verify.yml", *store,
                            "-e", f"verify_file={relative}", "-e", "verify_deep=false")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = ansible_playbook(ROOT, env, "playbooks/restore.yml", *store,
                            "-e", f"restore_file={relative}", "-e", "confirm=true")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected


def test_relative_path_follows_the_directory_the_user_runs_from(
    app_db, backup_dir, tmp_path, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    relative = str(newest(backup_dir).relative_to(tmp_path))  # backups/daily/NAME, as in the README
    expected = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")

    proc = ansible_playbook(
        tmp_path, env, *LOCAL, RESTORE,
        "-e", f"lifeboat_backup_dir={backup_dir}",
        "-e", f"restore_file={relative}", "-e", "confirm=true",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected


def test_missing_relative_file_names_the_resolved_path(app_db, backup_dir, tmp_path, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = ansible_playbook(
        tmp_path, env, *LOCAL, RESTORE,
        "-e", f"lifeboat_backup_dir={backup_dir}", "-e", "restore_file=backups/daily/nope.sql.gz",
        "-e", "confirm=true",
    )  # fmt: skip
    assert proc.returncode != 0
    assert str(tmp_path / "backups" / "daily" / "nope.sql.gz") in proc.stdout


def test_fleet_host_resolves_against_its_store(app_db, backup_dir, tmp_path, lifeboat_env):
    """A host of a fleet inventory: `-e restore_file=daily/NAME` is in the host's store."""
    env = dict(lifeboat_env, DATABASE_URL="")
    run_cli(["backup"], dict(lifeboat_env, DATABASE_URL=app_db.url), check=True)
    name = newest(backup_dir).name
    expected = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    inventory = tmp_path / "fleet.json"
    host = {"lifeboat_database_url": app_db.url, "lifeboat_backup_dir": str(backup_dir)}
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(json.dumps({"databases": {"hosts": {"db1": host}, "vars": local}}))
    proc = ansible_playbook(ROOT, env, "-i", str(inventory), "playbooks/restore.yml",
                            "-e", f"restore_file=daily/{name}", "-e", "confirm=true")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected
