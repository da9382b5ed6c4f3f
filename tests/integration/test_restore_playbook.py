"""`ansible-playbook playbooks/restore.yml` on the local inventory, as a user runs it."""

from __future__ import annotations

import subprocess

from conftest import OWNER_PASSWORD, ROOT, fingerprint, run_cli


def playbook(env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "playbooks/restore.yml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_playbook_confirm_check_and_restore(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    expected = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    damaged = fingerprint(app_db)
    where = ("-e", f"lifeboat_backup_dir={backup_dir}", "-e", "restore_latest=true")

    # No confirm: fails at once, says how, changes nothing.
    proc = playbook(env, *where)
    assert proc.returncode != 0
    assert "-e confirm=true" in proc.stdout and "Nothing was changed" in proc.stdout
    assert fingerprint(app_db) == damaged
    assert not (backup_dir / "pre-restore").exists()

    # --check and dry_run print the plan and change nothing.
    for extra in (("--check",), ("-e", "dry_run=true")):
        proc = playbook(env, *where, *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "would restore" in proc.stdout and "would replace" in proc.stdout
        assert fingerprint(app_db) == damaged
        assert not (backup_dir / "pre-restore").exists()

    proc = playbook(env, *where, "-e", "confirm=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "swap window" in proc.stdout and "changed=1" in proc.stdout
    assert fingerprint(app_db) == expected
    assert len(list((backup_dir / "pre-restore").glob("*.sql.gz"))) == 1
    encoded = app_db.url.split(":")[2].split("@")[0]
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr
    assert encoded not in proc.stdout + proc.stderr


def test_playbook_file_into_target_database(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    [dump] = [p for p in (backup_dir / "daily").iterdir() if p.name.endswith(".sql.gz")]
    target = f"{app_db.name}_test"
    proc = playbook(
        env,
        "-e",
        f"lifeboat_backup_dir={backup_dir}",
        "-e",
        f"restore_file={dump}",
        "-e",
        f"target_database={target}",
        "-e",
        "confirm=true",
        "-e",
        "skip_pre_backup=true",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copy = type(app_db)(target, app_db.url_for(target), pg)
    assert fingerprint(copy) == fingerprint(app_db)
    pg.psql(f'DROP DATABASE "{target}"')


def test_playbook_bad_file_fails_clearly(app_db, backup_dir, lifeboat_env, tmp_path):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    bogus = tmp_path / "x.sql.gz"
    bogus.write_text("not a dump")
    before = fingerprint(app_db)
    proc = playbook(
        env,
        "-e",
        f"lifeboat_backup_dir={backup_dir}",
        "-e",
        f"restore_file={bogus}",
        "-e",
        "confirm=true",
    )
    assert proc.returncode != 0
    assert "not a usable PostgreSQL dump" in proc.stdout
    assert fingerprint(app_db) == before
