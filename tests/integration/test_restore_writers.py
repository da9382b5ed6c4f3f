"""Writes during a restore are never lost silently (docs/restore.md, "Writes during a restore").

A writer commits a row every few milliseconds while a restore runs. The
restore's loader (psql) is stopped with SIGSTOP once the pre-restore backup
is written, which holds the window between the pre-restore snapshot and the
swap open; the tests prove the writer committed (or was refused) inside it.
"""

from __future__ import annotations

import os
import re
import signal

from conftest import run_cli
from pressure import Writer, child_pid, dump_ids, ids_in, start_cli, wait_for


def prepare(app_db, lifeboat_env) -> dict:
    app_db.sql("CREATE TABLE w (id integer PRIMARY KEY)")
    app_db.sql("INSERT INTO w SELECT generate_series(1, 10)")
    # The psql load: the tests hold the restore by stopping its psql.
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PLAIN_JOBS="1")
    run_cli(["backup"], env, check=True)
    return env


def pre_restore_file(backup_dir):
    files = [p for p in (backup_dir / "pre-restore").iterdir() if p.name.endswith(".sql.gz")]
    assert len(files) == 1, files
    return files[0]


def hold_window(proc) -> int:
    """Stop the restore's loader: the pre-restore backup is done, the swap is not."""
    psql = child_pid(proc.pid, "psql")
    os.kill(psql, signal.SIGSTOP)
    return psql


def test_writes_after_the_snapshot_keep_the_replaced_database(app_db, pg, backup_dir, lifeboat_env):
    env = prepare(app_db, lifeboat_env)
    writer = Writer(app_db.url, start=1000)
    writer.start()
    try:
        wait_for(lambda: len(writer.committed) >= 10, what="the writer to start")
        proc = start_cli(["restore", "--latest", "--confirm"], env)
        psql = hold_window(proc)
        pre = pre_restore_file(backup_dir)  # the snapshot was taken before this point
        mark = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= mark + 30, what="writes in the window")
        in_window = writer.committed[mark : mark + 30]
        assert pg.psql(f"SELECT datname FROM pg_database WHERE datname = '{app_db.name}'")
        os.kill(psql, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        writer.stop()
    assert proc.returncode == 0, out + err
    # Not in the pre-restore backup, not in the restored data...
    assert not set(in_window) & dump_ids(pre)
    assert not set(in_window) & ids_in(app_db.url)
    # ...so the replaced database is kept, named in the summary, with a warning.
    found = re.search(r"previous kept as (\S+?__lifeboat_replaced_\d+)", out)
    assert found and "WARNING: written to after the pre-restore snapshot" in out, out + err
    replaced = found.group(1)
    assert "public.w:" in err and "KEPT as" in err and replaced in err
    kept = ids_in(app_db.url, replaced)
    assert set(in_window) <= kept
    # Every row the writer saw committed before the swap is somewhere.
    before_swap = [n for n in writer.committed if n < max(in_window)]
    assert set(before_swap) <= kept
    # The writer's session was ended at the swap, and said so.
    ended = re.search(r"ended (\d+) session\(s\) at the swap", out)
    assert ended and int(ended.group(1)) >= 1, out
    # The kept database is usable as it was: connections allowed.
    assert pg.psql(f"SELECT datallowconn FROM pg_database WHERE datname = '{replaced}'") == "t"


def test_no_writes_no_kept_copy_and_an_open_transaction_is_reported(
    app_db, pg, backup_dir, lifeboat_env
):
    """No false alarm: a reader inside a transaction is ended and reported, nothing is kept."""
    import psycopg

    env = prepare(app_db, lifeboat_env)
    reader = psycopg.connect(app_db.url, application_name="reader")
    reader.execute("SELECT count(*) FROM w")  # leaves a transaction open (no autocommit)
    try:
        proc = run_cli(["restore", "--latest", "--confirm"], env)
    finally:
        reader.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kept as" not in proc.stdout
    assert (
        "ended 1 session(s) at the swap (1 inside a transaction, its uncommitted work rolled back)"
        in proc.stdout
    ), proc.stdout
    assert "ended 1 session(s) on" in proc.stderr  # the log line
    left = pg.psql(
        f"SELECT datname FROM pg_database WHERE datname LIKE '{app_db.name}\\_\\_lifeboat%'"
    )
    assert left == ""


def test_block_writes_refuses_writes_until_the_swap(app_db, pg, backup_dir, lifeboat_env):
    env = prepare(app_db, lifeboat_env)
    writer = Writer(app_db.url, start=1000)
    writer.start()
    try:
        wait_for(lambda: len(writer.committed) >= 10, what="the writer to start")
        proc = start_cli(["restore", "--latest", "--confirm", "--block-writes"], env)
        psql = hold_window(proc)
        pre = pre_restore_file(backup_dir)
        committed, errors = len(writer.committed), len(writer.errors)
        wait_for(lambda: len(writer.errors) >= errors + 10, what="refused writes in the window")
        # Inside the window: refused, nothing committed.
        assert len(writer.committed) == committed
        assert any("read-only transaction" in e for e in writer.errors[errors:]), writer.errors
        os.kill(psql, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        after = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= after + 10, what="writes after the swap")
    finally:
        writer.stop()
    assert "writes refused from the pre-restore snapshot to the swap" in out
    assert "kept as" not in out, out
    # Nothing committed was lost: every row committed before the swap is in the
    # pre-restore backup, and the restored database takes writes again.
    assert set(writer.committed[:committed]) <= dump_ids(pre)
    assert set(writer.committed[after:]) <= ids_in(app_db.url)
    settings = pg.psql(
        "SELECT coalesce(array_to_string(setconfig, ','), '') FROM pg_db_role_setting s "
        f"JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{app_db.name}'"
    )
    assert "default_transaction_read_only" not in settings


def test_block_writes_is_undone_when_the_restore_fails(app_db, pg, backup_dir, lifeboat_env):
    env = prepare(app_db, lifeboat_env)
    proc = start_cli(["restore", "--latest", "--confirm", "--block-writes"], env)
    psql = child_pid(proc.pid, "psql")
    os.kill(psql, signal.SIGKILL)  # the load fails after the database was made read-only
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    app_db.sql("INSERT INTO w VALUES (5000)")  # writable again
    assert app_db.sql("SHOW default_transaction_read_only") == "off"
