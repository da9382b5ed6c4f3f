"""Parallel plain restores: a connection that falls behind the stream spills the
rest of its table to disk, so the next table loads on another connection at the
same time (restore/parallel.py, Spill).

A worker's backend is stopped (SIGSTOP) in the middle of its COPY, which makes
the stream get ahead of it for certain; the spill file is seen open (an
unnamed file on the store's disk) before the backend is let go. Then the
database must be the one a single psql gives, and a failure while a table is
spilled must stop everything, drop the scratch database and keep the original.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import AppDB, fingerprint
from pressure import start_cli, wait_for
from realistic_restore import superuser_url
from test_parallel_restore import backup, databases, make_db, schema


def _copy_backend(pg, dbname: str, table: str) -> int:
    found = []

    def running() -> bool:
        pid = pg.psql(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
            f"AND query LIKE 'COPY {table}%' "
            f"AND datname LIKE '{dbname}__lifeboat_restore_%' LIMIT 1"
        )
        found.append(int(pid) if pid else 0)
        return bool(pid)

    wait_for(running, timeout=120, what=f"a worker's COPY of {table}")
    return found[-1]


def _spill_open(pid: int, store: Path) -> bool:
    """An unnamed (O_TMPFILE) file on the store's disk, held open by lifeboat."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(store)) and target.endswith("(deleted)"):
            return True
    return False


def _restore(db: AppDB, env: dict, *extra: str):
    env = dict(env, DATABASE_URL=superuser_url(db), LIFEBOAT_PLAIN_JOBS="2")
    return start_cli(["restore", "--latest", "--confirm", "--skip-pre-backup", *extra], env)


def test_a_worker_behind_the_stream_spills_and_the_database_is_the_same(pg, lifeboat_env):
    db = make_db(pg, big=600000)  # about 70 MB in public.grandchild
    backup(db, lifeboat_env)
    store = Path(lifeboat_env["LIFEBOAT_BACKUP_DIR"])
    target = f"{db.name}_spilled"
    proc = _restore(db, lifeboat_env, "--target-db", target)
    backend = _copy_backend(pg, target, "public.grandchild")
    os.kill(backend, signal.SIGSTOP)
    try:
        wait_for(lambda: _spill_open(proc.pid, store), timeout=60, what="the spill file")
        time.sleep(0.5)  # the stream moves on while the worker is stopped
    finally:
        os.kill(backend, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "loading public.grandchild: its connection is behind the stream" in out + err
    copy = AppDB(target, db.url_for(target), pg)
    rows = {k: v for k, v in fingerprint(db, superuser=True).items() if k != "database"}
    assert {k: v for k, v in fingerprint(copy, superuser=True).items() if k != "database"} == rows
    assert schema(copy) == schema(db)
    assert not any(p.name.startswith("tmp") for p in store.iterdir())


def test_a_failure_while_a_table_is_spilled_stops_all(pg, lifeboat_env):
    db = make_db(pg, big=600000)
    backup(db, lifeboat_env)
    store = Path(lifeboat_env["LIFEBOAT_BACKUP_DIR"])
    before = fingerprint(db, superuser=True)
    names = databases(pg)
    proc = _restore(db, lifeboat_env)
    backend = _copy_backend(pg, db.name, "public.grandchild")
    os.kill(backend, signal.SIGSTOP)
    try:
        wait_for(lambda: _spill_open(proc.pid, store), timeout=60, what="the spill file")
        assert pg.psql(f"SELECT pg_terminate_backend({backend})") == "t"
    finally:
        os.kill(backend, signal.SIGCONT)  # it ends now, with its COPY
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    assert "terminat" in (out + err).lower() or "connection" in (out + err).lower(), out + err
    assert databases(pg) == names
    assert fingerprint(db, superuser=True) == before
