"""A database with a connection limit below the restore's connections restores.

The scratch database is created like the original, and a role that is not a
superuser is held to its connection limit: a limit of 2 would refuse the
parallel load's third connection (a main one and two workers). The limit is set
on the scratch once lifeboat's own connections to it are closed, before the
swap, so the restored database has it and the restore never trips on it. The
original's settings are copied at creation, so lifeboat's own sessions there
must not inherit a statement_timeout either.
"""

from __future__ import annotations

import json

import pytest
from conftest import OWNER, fingerprint, make_db, run_cli


def test_restore_and_drill_of_a_database_limited_to_two_connections(pg, lifeboat_env):
    db = make_db(pg)
    pg.psql(f"ALTER DATABASE {db.name} CONNECTION LIMIT 2")
    env = dict(lifeboat_env, DATABASE_URL=db.url, LIFEBOAT_PLAIN_JOBS="2")
    run_cli(["backup"], env, check=True)
    before = fingerprint(db)
    db.sql("DELETE FROM plots")

    proc = run_cli(["restore", "--latest", "--confirm", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["ok"] and result["rows"] == 2500
    assert fingerprint(db) == before
    limit = pg.psql(f"SELECT datconnlimit FROM pg_database WHERE datname = '{db.name}'")
    assert limit == "2"  # the restored database keeps the original's limit

    drilled = run_cli(["verify", "--latest", "--deep"], env)
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr


def test_restore_of_a_database_whose_settings_would_cut_the_counts_short(pg, lifeboat_env):
    """The owner's statement_timeout in the database (ALTER ROLE ... IN DATABASE ... SET,
    copied to the scratch database before the load, as ALTER DATABASE ... SET is) is
    for the application: lifeboat's own sessions (the counts, ANALYZE) must not inherit it."""
    db = make_db(pg)
    db.sql(  # 400,000 rows: a count takes far longer than the timeout below
        "INSERT INTO plots (owner_id, title, area_m2) SELECT 1 + g % 500, 'p' || g, 1"
        " FROM generate_series(1, 400000) g"
    )
    pg.psql(f"ALTER ROLE {OWNER} IN DATABASE {db.name} SET statement_timeout = '3ms'")
    env = dict(lifeboat_env, DATABASE_URL=db.url)
    run_cli(["backup"], env, check=True)
    before = fingerprint(db, superuser=True)
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(db, superuser=True) == before
    setting = pg.psql(
        "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s"
        f" JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{db.name}'"
        f" AND s.setrole = '{OWNER}'::regrole"
    )
    assert setting == "statement_timeout=3ms"  # and the restored database keeps it


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_a_database_read_only_by_default_restores_and_stays_so(pg, lifeboat_env, fmt):
    """`ALTER DATABASE ... SET default_transaction_read_only = on` (a database ops
    have frozen) is the application's setting: the load, which creates tables, runs
    as in a fresh database, and the restored database gets the setting back before
    the swap, as the drill's scratch (which carries no settings) already loaded."""
    db = make_db(pg)
    env = dict(lifeboat_env, DATABASE_URL=db.url, LIFEBOAT_FORMAT=fmt)
    run_cli(["backup"], env, check=True)
    before = fingerprint(db)
    db.sql("DELETE FROM plots")
    pg.psql(f"ALTER DATABASE {db.name} SET default_transaction_read_only = on")
    proc = run_cli(["restore", "--latest", "--confirm", "--block-writes"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(db) == before
    setting = pg.psql(
        "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s"
        f" JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{db.name}'"
        " AND s.setrole = 0"
    )
    assert setting == "default_transaction_read_only=on"
    assert db.sql("SHOW default_transaction_read_only") == "on"
