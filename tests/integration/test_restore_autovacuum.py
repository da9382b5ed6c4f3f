"""An autovacuum worker in a database lifeboat replaces or drops fails nothing.

PostgreSQL counts an autovacuum worker as a superuser process: a role that is
not a superuser may not end it ("must be a superuser to terminate superuser
process", which also makes `DROP DATABASE ... WITH (FORCE)` refuse), yet the
server ends it by itself when the database is renamed or dropped plainly. On a
busy server autovacuum is often in the database being restored, and in a
freshly restored scratch database (new rows are what it looks for).
"""

from __future__ import annotations

import contextlib
import time

from conftest import fingerprint, make_db, run_cli

from lifeboat import pg as pgconn
from lifeboat import restore
from lifeboat.conninfo import ConnInfo


@contextlib.contextmanager
def autovacuum_working_in(cluster, db):
    """An autovacuum worker busy in `db` (a slow vacuum of plots) for the whole block."""
    db.sql(
        "ALTER TABLE plots SET (autovacuum_vacuum_cost_delay = 100,"
        " autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0,"
        " autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 1000000000)",
        superuser=True,
    )
    db.sql("UPDATE plots SET title = title || ''")
    cluster.psql("ALTER SYSTEM SET autovacuum_naptime = 1")
    cluster.psql("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 60
        while autovacuum_workers(cluster, db.name) == 0:
            assert time.monotonic() < deadline, "autovacuum never started on the database"
            time.sleep(0.1)
        yield
    finally:
        cluster.psql("ALTER SYSTEM RESET autovacuum_naptime")
        cluster.psql("SELECT pg_reload_conf()")


def autovacuum_workers(cluster, name: str) -> int:
    return int(
        cluster.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            f" AND datname = '{name}'"
        )
    )


def test_restore_over_a_database_autovacuum_is_working_in(pg, lifeboat_env):
    db = make_db(pg)
    before = fingerprint(db)
    env = dict(lifeboat_env, DATABASE_URL=db.url)
    run_cli(["backup"], env, check=True)
    with autovacuum_working_in(pg, db):
        db.sql("DELETE FROM plots WHERE id % 4 = 0")
        assert autovacuum_workers(pg, db.name) == 1  # still vacuuming: the race is entered
        proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(db) == before


def test_the_owner_drops_a_database_autovacuum_is_working_in(pg):
    """What every drop of a scratch or replaced database goes through."""
    db = make_db(pg)
    owner = ConnInfo.parse(db.url)  # not a superuser
    with autovacuum_working_in(pg, db), pgconn.connect(owner, "postgres") as admin:
        assert autovacuum_workers(pg, db.name) == 1  # the race is entered
        restore.drop(admin, db.name)
    assert pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{db.name}'") == "0"


def test_a_drill_drops_a_dead_drills_scratch_autovacuum_is_working_in(pg, lifeboat_env):
    db = make_db(pg)
    env = dict(lifeboat_env, DATABASE_URL=db.url)
    run_cli(["backup"], env, check=True)
    leftover = make_db(pg, f"{db.name}__lifeboat_drill_20200101000000")  # a killed drill's
    with autovacuum_working_in(pg, leftover):
        assert autovacuum_workers(pg, leftover.name) == 1  # the race is entered
        proc = run_cli(["verify", "--latest", "--deep"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"dropped scratch database {leftover.name} of an interrupted drill" in proc.stdout
    assert "could not drop" not in proc.stdout + proc.stderr
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%lifeboat_drill%'") == "0"
