"""Locks: no silent hang on another session's lock, one lifeboat lock per database,
and a read-only store for `restore --skip-pre-backup`."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psycopg
import pytest
from conftest import OWNER, fingerprint, run_cli
from pressure import child_pid, start_cli

from lifeboat import lock
from lifeboat.conninfo import ConnInfo


def leftovers(pg, name: str) -> str:
    return pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}\\_\\_lifeboat%'")


def test_table_lock_holder_is_named_by_backup_and_restore(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_LOCK_TIMEOUT="2")
    run_cli(["backup"], env, check=True)
    before = fingerprint(app_db)
    holder = psycopg.connect(app_db.url, application_name="nightly-migration")
    holder.execute("LOCK TABLE plots IN ACCESS EXCLUSIVE MODE")  # stays in its transaction
    try:
        started = time.monotonic()
        backup = run_cli(["backup"], env, timeout=60)
        backup_took = time.monotonic() - started
        started = time.monotonic()
        restore = run_cli(["restore", "--latest", "--confirm"], env, timeout=60)
        restore_took = time.monotonic() - started
    finally:
        holder.close()
    for proc, took in ((backup, backup_took), (restore, restore_took)):
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert took < 30, took
        assert "waited 2 s for a lock" in proc.stdout, proc.stdout
        assert "application 'nightly-migration'" in proc.stdout
        assert "LOCK TABLE plots IN ACCESS EXCLUSIVE MODE" in proc.stdout
        assert "pg_terminate_backend(" in proc.stdout
    assert "pre-restore backup" in restore.stdout
    assert fingerprint(app_db) == before
    assert leftovers(pg, app_db.name) == ""


def test_swap_lock_wait_is_bounded_and_names_the_holder(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_LOCK_TIMEOUT="2")
    run_cli(["backup"], env, check=True)
    before = fingerprint(app_db)
    # A COMMENT ON DATABASE left uncommitted in another database blocks the rename.
    holder = psycopg.connect(
        host=pg.socket_dir,
        port=pg.port,
        user="postgres",
        dbname="postgres",
        application_name="db-admin-tool",
    )
    holder.execute(f"COMMENT ON DATABASE \"{app_db.name}\" IS 'being migrated'")
    try:
        proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env, timeout=120)
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"database {app_db.name} is held by pid" in proc.stdout
    assert "application 'db-admin-tool'" in proc.stdout and "Nothing was replaced" in proc.stdout
    allow = f"SELECT datallowconn FROM pg_database WHERE datname = '{app_db.name}'"
    assert pg.psql(allow) == "t"
    assert fingerprint(app_db) == before
    assert leftovers(pg, app_db.name) == ""


def test_a_named_label_and_a_bare_url_share_one_lock(
    app_db, pg, backup_dir, lifeboat_env, tmp_path
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)  # a backup under the URL's label, to restore
    app_db.sql(
        "CREATE TABLE slow AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g"
    )
    config = tmp_path / "lifeboat.yml"
    config.write_text(f"databases:\n  - name: shop\n    url: '{app_db.url}'\n")
    config.chmod(0o600)
    named = dict(lifeboat_env)
    named.pop("DATABASE_URL", None)
    backup = start_cli(["backup", "--config", str(config)], named)
    try:
        pg_dump = child_pid(backup.pid, "pg_dump")
        os.kill(pg_dump, signal.SIGSTOP)  # the labelled backup holds its lock, mid-dump
        restore = run_cli(["restore", "--latest", "--confirm"], env, timeout=60)
        os.kill(pg_dump, signal.SIGCONT)
        out, err = backup.communicate(timeout=120)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert restore.returncode == 1 and "in progress" in restore.stdout, restore.stdout
    assert backup.returncode == 0, out + err
    assert "shop daily" in out
    assert leftovers(pg, app_db.name) == ""


@pytest.fixture
def read_only(backup_dir):
    """Make the store read-only (a read-only bind mount: the tests run as root)."""
    mounted = []

    def freeze():
        subprocess.run(["mount", "--bind", str(backup_dir), str(backup_dir)], check=True)
        mounted.append(backup_dir)
        subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(backup_dir), str(backup_dir)], check=True
        )

    yield freeze
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_skip_pre_backup_restores_from_a_read_only_store(
    app_db, backup_dir, lifeboat_env, read_only
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    expected = fingerprint(app_db)
    app_db.sql("DELETE FROM plots WHERE id > 5")
    read_only()
    with pytest.raises(OSError):
        (backup_dir / "probe").write_text("x")
    # A pre-restore backup must be written: refused, clearly, before anything changes.
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 1 and "Read-only file system" in proc.stdout, proc.stdout
    # The per-user lock directory stands in for the store's: runs still exclude each other.
    conn = ConnInfo.from_url(app_db.url)
    with lock.hold_database(str(backup_dir / ".locks"), conn) as where:
        assert where == lock.user_dir()
        assert os.stat(where).st_mode & 0o777 == 0o700
        busy = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert busy.returncode == 1 and "in progress" in busy.stdout, busy.stdout
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected


def test_lock_identity_is_the_server_and_database_not_the_label():
    a = ConnInfo.from_url("postgresql://u@db.example:5432/shop")
    b = ConnInfo.from_url("postgresql://other@db.example/shop?application_name=x")
    c = ConnInfo.from_url("postgresql://u@db.example:5433/shop")
    assert lock.identity(a) == lock.identity(b) == "db.example:5432/shop"
    assert lock.key(a) == lock.key(b) != lock.key(c)
    assert OWNER  # conftest imported: the path setup the integration tests share
