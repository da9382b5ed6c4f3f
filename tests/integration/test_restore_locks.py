"""Locks: no silent hang on another session's lock, one lifeboat lock per database,
and a read-only store for `restore --skip-pre-backup`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psycopg
import pytest
from conftest import OWNER, fingerprint, make_db, run_cli
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


def stalled_copy(app_db, application: str):
    """A session in COPY ... FROM STDIN whose client sends nothing, as a hung loader's.

    On PostgreSQL 15 and later it holds up every DROP DATABASE on the server: no
    lock, so lock_timeout alone never ends that wait. Returns its pid and how to end it."""
    other = make_db(app_db.cluster, seed=False)
    loader = psycopg.connect(other.url, application_name=application, autocommit=True)
    loader.execute("CREATE TABLE feed (line text)")
    pid = loader.info.backend_pid
    stack = contextlib.ExitStack()
    copy = stack.enter_context(loader.cursor().copy("COPY feed FROM STDIN"))  # rows never come
    state = f"SELECT state || ' ' || wait_event FROM pg_stat_activity WHERE pid = {pid}"
    assert app_db.cluster.psql(state) == "active ClientRead"

    def end():
        copy.write(b"fed\n")
        stack.close()
        loader.close()

    return pid, end


def test_a_stalled_copy_elsewhere_cannot_hang_a_restore_or_a_drill(
    app_db, pg, backup_dir, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_LOCK_TIMEOUT="2")
    run_cli(["backup"], env, check=True)
    app_db.sql("INSERT INTO plots (owner_id, title, area_m2) VALUES (1, 'after the backup', 1)")
    # What an interrupted restore left: dropped first, so it meets the stall too.
    leftover = f"{app_db.name}__lifeboat_restore_20250101000000"
    pg.psql(f'CREATE DATABASE "{leftover}" OWNER {OWNER}')
    pid, end = stalled_copy(app_db, "etl-loader")
    try:
        started = time.monotonic()
        restore = run_cli(
            ["restore", "--latest", "--confirm", "--skip-pre-backup"], env, timeout=120
        )
        restore_took = time.monotonic() - started
        drill = run_cli(["verify", "--latest", "--deep"], env, timeout=120)
        # The loader still waits: every bounded drop above really met it.
        assert pg.psql(f"SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}") == "ClientRead"
    finally:
        end()
    # The restore itself is done and in place; only dropping the replaced copy waited.
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert restore_took < 60, restore_took
    assert app_db.sql("SELECT count(*) FROM plots WHERE title = 'after the backup'") == "0"
    said = restore.stdout + restore.stderr
    assert "the restore is done, but the replaced database is left" in said, said
    assert f"Failed to drop database {app_db.name}__lifeboat_replaced_" in said
    assert f"pid {pid} (user {OWNER}, application 'etl-loader'" in said
    assert "COPY feed FROM STDIN" in said and f"pg_terminate_backend({pid})" in said
    assert f"Failed to drop database {leftover}" in said  # and the restore went on
    # The drill passed; its scratch database, marked invalid by the cut-short drop, stays.
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "scratch database left (see the warning)" in drill.stdout
    assert f"Failed to drop database {app_db.name}__lifeboat_drill_" in drill.stdout
    assert "application 'etl-loader'" in drill.stdout
    left = leftovers(pg, app_db.name).split()
    assert len(left) == 3 and leftover in left, left
    # With the loader gone, the next drill and restore drop what the last ones left.
    again = run_cli(["verify", "--latest", "--deep"], env, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "of an interrupted drill" in again.stdout
    again = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"dropped scratch database {leftover} of an interrupted restore" in again.stdout
    left = leftovers(pg, app_db.name).split()
    assert len(left) == 1 and "__lifeboat_replaced_" in left[0], left  # "drop it by hand"
    pg.psql(f'DROP DATABASE "{left[0]}"')


def prepared(app_db, gid: str, statement: str) -> None:
    """A prepared transaction (two-phase commit) left by a transaction manager: it
    keeps its locks and its database with no session at all."""
    with psycopg.connect(app_db.url) as manager:
        manager.execute(statement)
        manager.execute(f"PREPARE TRANSACTION '{gid}'")


def finish(pg, app_db, gid: str) -> None:
    pg.psql(f"ROLLBACK PREPARED '{gid}'", db=app_db.name)


def test_a_prepared_transactions_lock_is_named(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_LOCK_TIMEOUT="2")
    prepared(app_db, "xa-lock-7", "LOCK TABLE plots IN ACCESS EXCLUSIVE MODE")
    try:
        proc = run_cli(["backup"], env, timeout=60)
    finally:
        finish(pg, app_db, "xa-lock-7")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "plots is held by prepared transaction 'xa-lock-7' (owner app_owner" in proc.stdout
    assert "no session holds it" in proc.stdout
    assert "`ROLLBACK PREPARED 'xa-lock-7';`" in proc.stdout
    assert "pg_terminate_backend" not in proc.stdout  # it has no session to end
    assert "released before lifeboat could name it" not in proc.stdout


def test_a_prepared_transaction_stops_the_restore_before_anything(
    app_db, pg, backup_dir, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    app_db.sql("DELETE FROM plots WHERE id > 1000")
    before = fingerprint(app_db)
    prepared(
        app_db, "xa-order-9", "INSERT INTO plots (owner_id, title, area_m2) VALUES (1, 'x', 1)"
    )
    try:
        started = time.monotonic()
        proc = run_cli(["restore", "--latest", "--confirm"], env, timeout=120)
        took = time.monotonic() - started
        assert fingerprint(app_db) == before
        assert pg.psql(f"SELECT gid FROM pg_prepared_xacts WHERE database = '{app_db.name}'") == (
            "xa-order-9"
        )  # left for its transaction manager
    finally:
        finish(pg, app_db, "xa-order-9")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"database {app_db.name} has 1 prepared transaction(s)" in proc.stdout
    assert "`COMMIT PREPARED 'xa-order-9';` or `ROLLBACK PREPARED 'xa-order-9';`" in proc.stdout
    assert "Nothing was changed" in proc.stdout
    assert took < 30, took  # refused up front, not after the load and the swap's retries
    assert not (backup_dir / "pre-restore").exists() or not any(
        (backup_dir / "pre-restore").iterdir()
    )
    assert leftovers(pg, app_db.name) == ""


def test_a_transaction_prepared_during_the_load_stops_the_swap_before_any_cut(
    app_db, pg, backup_dir, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    # 2 s of CHECKs in the load: time to prepare a transaction meanwhile.
    app_db.sql(
        "CREATE FUNCTION slow_ok(integer) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS"
        " $$ BEGIN PERFORM pg_sleep(0.02); RETURN true; END $$;"
        " CREATE TABLE slow (n integer CHECK (slow_ok(n)));"
        " INSERT INTO slow SELECT generate_series(1, 100)"
    )
    run_cli(["backup"], env, check=True)
    before = fingerprint(app_db)
    restore = start_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    loading = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE "
        f"'{app_db.name}\\_\\_lifeboat\\_restore\\_%' AND query LIKE 'COPY%slow%'"
    )
    try:
        deadline = time.monotonic() + 60
        while pg.psql(loading) == "0":
            assert time.monotonic() < deadline and restore.poll() is None, "no load seen"
            time.sleep(0.05)
        insert = "INSERT INTO plots (owner_id, title, area_m2) VALUES (1, 'x', 1)"
        prepared(app_db, "xa-late-3", insert)
        still_loading = pg.psql(loading)  # prepared while the load ran, before the swap
        out, _ = restore.communicate(timeout=120)
    finally:
        if restore.poll() is None:
            restore.kill()
        with contextlib.suppress(Exception):
            finish(pg, app_db, "xa-late-3")
    assert still_loading == "1"
    assert restore.returncode == 1, out
    assert f"Failed to swap {app_db.name}__lifeboat_restore_" in out
    assert "prepared transaction(s)" in out and "'xa-late-3'" in out
    assert "Nothing was replaced" in out
    assert fingerprint(app_db) == before
    allow = f"SELECT datallowconn FROM pg_database WHERE datname = '{app_db.name}'"
    assert pg.psql(allow) == "t"
    assert leftovers(pg, app_db.name) == ""
