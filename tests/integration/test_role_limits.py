"""A role's limits: its CONNECTION LIMIT and its session timeouts.

A role at its CONNECTION LIMIT: restores and drills use the connections left.
In the field the application's own sessions hold most of its role's slots while
a restore runs (they are ended only at the swap), or the server is near
max_connections. lifeboat then loads, counts and analyzes over fewer
connections, down to one psql, and fails before touching anything only when
not even that connection opens.
"""

from __future__ import annotations

import pytest
from conftest import AppDB, fingerprint, run_cli

ROLE = "capped_owner"
PASSWORD = "capped pass"
SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (
    id int PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total numeric(10, 2) NOT NULL
);
CREATE INDEX orders_customer ON orders (customer_id);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 5000) g;
INSERT INTO orders SELECT g, 1 + g % 5000, g % 997 FROM generate_series(1, 40000) g;
"""


# Past one statement of the census's counts (a hundred tables): two connections wanted.
TENANTS = """
DO $$ BEGIN FOR i IN 1..120 LOOP
  EXECUTE format('CREATE TABLE tenant_%s AS SELECT %s AS id', i, i);
END LOOP; END $$;
"""


@pytest.fixture(scope="module")
def capped(pg):
    url = pg.create_owner(ROLE, PASSWORD, "capped")
    pg.psql(f"SET ROLE {ROLE}; {SCHEMA} {TENANTS}", db="capped")
    yield AppDB("capped", url, pg)
    pg.psql(f"ALTER ROLE {ROLE} CONNECTION LIMIT -1")


def limit(db: AppDB, slots: int) -> None:
    db.cluster.psql(f"ALTER ROLE {ROLE} CONNECTION LIMIT {slots}")


def leftovers(db: AppDB) -> str:
    return db.cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE 'capped\\_\\_%'")


@pytest.mark.parametrize(
    ("fmt", "slots", "used"),
    [
        # admin connection and write guard (pre-restore backup), then psql alone
        ("plain", 3, "loading over 1 connection(s), not 3"),
        # main connection and one worker
        ("plain", 4, "loading over 2 connection(s), not 3"),
        # pg_restore -j1 instead of -j2
        ("custom", 3, "pg_restore over 1 connection(s), not 2"),
    ],
)
def test_restore_and_drill_use_the_connections_left(
    capped, backup_dir, lifeboat_env, fmt, slots, used
):
    env = dict(lifeboat_env, DATABASE_URL=capped.url, LIFEBOAT_FORMAT=fmt, LIFEBOAT_JOBS="2")
    run_cli(["backup"], env, check=True)
    before = fingerprint(capped, superuser=True)
    capped.cluster.psql("DELETE FROM orders WHERE id > 30000", db="capped")
    limit(capped, slots)
    try:
        restore = run_cli(["restore", "--latest", "--confirm"], env, timeout=180)
        drill = run_cli(["verify", "--latest", "--deep"], env, timeout=180)
    finally:
        limit(capped, -1)
    said = restore.stdout + restore.stderr
    assert restore.returncode == 0, said
    # The limit was really met, and named.
    assert used in said, said
    assert f'too many connections for role "{ROLE}"' in said
    # The verifying session counts alone only when it took the last slot.
    assert ("counts and ANALYZE over 1 connection(s), not 2" in said) == (slots == 3)
    assert fingerprint(capped, superuser=True) == before
    assert "122 tables, 45120 rows verified" in restore.stdout
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "122 tables and 45120 rows match the manifest" in drill.stdout
    assert leftovers(capped) == ""


def test_a_directory_backup_dumps_over_the_connections_left(capped, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=capped.url, LIFEBOAT_FORMAT="directory")
    before = fingerprint(capped, superuser=True)
    limit(capped, 2)  # pg_dump -j2 would need 3
    try:
        backup = run_cli(["backup"], dict(env, LIFEBOAT_JOBS="2"), timeout=180)
    finally:
        limit(capped, -1)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert "pg_dump over 2 connection(s), not 3" in backup.stdout + backup.stderr
    capped.cluster.psql("TRUNCATE orders", db="capped")
    restore = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env, timeout=180)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert fingerprint(capped, superuser=True) == before


def test_no_connection_left_fails_before_anything_changes(capped, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=capped.url)
    run_cli(["backup"], env, check=True)
    capped.cluster.psql("INSERT INTO customers VALUES (0, 'kept')", db="capped")
    before = fingerprint(capped, superuser=True)
    limit(capped, 1)  # the admin connection: nothing left to load with
    try:
        proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env, timeout=180)
    finally:
        limit(capped, -1)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f'too many connections for role "{ROLE}"' in proc.stdout
    assert "needs 2 connections at least" in proc.stdout
    assert f"ALTER ROLE {ROLE} CONNECTION LIMIT n;" in proc.stdout
    assert fingerprint(capped, superuser=True) == before
    assert leftovers(capped) == ""


SLOW = """
CREATE FUNCTION slow_ok(integer) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN PERFORM pg_sleep(0.01); RETURN true; END $$;
CREATE TABLE slow (n integer CHECK (slow_ok(n)));
INSERT INTO slow SELECT generate_series(1, 150);
-- Work for both pg_restore workers once the slow rows are in: the one that sat
-- idle meanwhile uses its connection again.
CREATE INDEX slow_n ON slow (n);
CREATE INDEX slow_next ON slow ((n + 1));
"""


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_the_roles_idle_timeouts_do_not_end_lifeboats_sessions(pg, backup_dir, lifeboat_env, fmt):
    """idle_session_timeout and idle_in_transaction_session_timeout on the role end
    sessions that wait: lifeboat's admin and write-guard sessions wait through the
    whole load (here 1.5 s of CHECKs), its main load session in a transaction, and
    a pg_restore -j2 worker between items while the other loads the slow table."""
    role = f"idle_{fmt}"
    url = pg.create_owner(role, PASSWORD, role)
    db = AppDB(role, url, pg)
    pg.psql(f"SET ROLE {role}; {SCHEMA} {SLOW}", db=role)
    env = dict(lifeboat_env, DATABASE_URL=url, LIFEBOAT_FORMAT=fmt, LIFEBOAT_JOBS="2")
    run_cli(["backup"], env, check=True)
    before = fingerprint(db, superuser=True)
    pg.psql("DELETE FROM orders", db=role)
    for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
        pg.psql(f"ALTER ROLE {role} SET {setting} = '300ms'")
    restore = run_cli(["restore", "--latest", "--confirm"], env, timeout=180)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "3 tables, 45150 rows verified" in restore.stdout
    assert fingerprint(db, superuser=True) == before
    drill = run_cli(["verify", "--latest", "--deep"], env, timeout=180)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "45150 rows match the manifest" in drill.stdout
    # The role keeps its settings; they were only kept out of lifeboat's sessions.
    assert "idle_session_timeout=300ms" in pg.psql(
        f"SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting"
        f" WHERE setrole = '{role}'::regrole AND setdatabase = 0"
    )
