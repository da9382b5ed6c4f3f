"""An autovacuum worker in the database at the swap does not fail the restore.

PostgreSQL counts an autovacuum worker as a superuser process: a restoring
role that is not a superuser may not end it ("must be a superuser to terminate
superuser process"), yet the server ends it by itself when the database is
renamed. On a busy server autovacuum is often in the database being restored.
"""

from __future__ import annotations

import time

from conftest import fingerprint, make_db, run_cli


def test_restore_over_a_database_autovacuum_is_working_in(pg, lifeboat_env):
    db = make_db(pg)
    before = fingerprint(db)
    env = dict(lifeboat_env, DATABASE_URL=db.url)
    run_cli(["backup"], env, check=True)
    # A slow autovacuum of plots: every row dead once, a tiny cost budget.
    db.sql(
        "ALTER TABLE plots SET (autovacuum_vacuum_cost_delay = 100,"
        " autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0,"
        " autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 1000000000)",
        superuser=True,
    )
    db.sql("UPDATE plots SET title = title || ''")
    pg.psql("ALTER SYSTEM SET autovacuum_naptime = 1")
    pg.psql("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 60
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            f" AND datname = '{db.name}'"
        )
        while pg.psql(query) == "0":
            assert time.monotonic() < deadline, "autovacuum never started on the database"
            time.sleep(0.1)
        db.sql("DELETE FROM plots WHERE id % 4 = 0")
        assert pg.psql(query) == "1"  # still vacuuming: the race is entered
        proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        pg.psql("ALTER SYSTEM RESET autovacuum_naptime")
        pg.psql("SELECT pg_reload_conf()")
    assert fingerprint(db) == before
