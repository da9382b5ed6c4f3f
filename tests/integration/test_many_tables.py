"""A database of thousands of tables (a schema per tenant, partitions) restores.

Created over many transactions, as in the field, it would not fit one: a
transaction holds a lock on every table it creates or indexes, and the server's
lock table (max_locks_per_transaction x connections; 32 x about 75 slots on the
test cluster, half the default) overflows, where `gunzip | psql`, a statement
per transaction, does not.
"""

from __future__ import annotations

import hashlib

import pytest
from conftest import make_db, run_cli

TABLES = 1200  # with a primary key and an index each: far past the lock table in one go


@pytest.fixture(scope="module")
def many(pg):
    db = make_db(pg, seed=False)
    for first in range(1, TABLES + 1, 300):
        db.sql(
            f"DO $$ BEGIN FOR i IN {first}..{first + 299} LOOP EXECUTE format("
            "'CREATE TABLE tenant_%s (id int PRIMARY KEY, v text);"
            " INSERT INTO tenant_%s SELECT g, md5(g::text) FROM generate_series(1, 3) g;"
            " CREATE INDEX ON tenant_%s (v)', i, i, i); END LOOP; END $$"
        )
    return db


@pytest.mark.parametrize(
    ("fmt", "jobs"), [("plain", "1"), ("plain", "2"), ("custom", "1"), ("custom", "2")]
)
def test_thousands_of_tables_restore(many, backup_dir, lifeboat_env, fmt, jobs):
    env = dict(
        lifeboat_env,
        DATABASE_URL=many.url,
        LIFEBOAT_FORMAT=fmt,
        LIFEBOAT_PLAIN_JOBS=jobs,
        LIFEBOAT_JOBS=jobs,
    )
    run_cli(["backup"], env, check=True)
    many.sql("DROP TABLE tenant_7; DELETE FROM tenant_8")
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # lifeboat's own exact counts of every table, against the dump's and the manifest's
    assert f"{TABLES} tables, {TABLES * 3} rows verified" in proc.stdout
    assert many.sql("SELECT string_agg(v, ',' ORDER BY id) FROM tenant_8") == ",".join(
        hashlib.md5(str(i).encode()).hexdigest() for i in (1, 2, 3)
    )
    indexes = "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'tenant%'"
    assert many.sql(indexes) == str(TABLES * 2)
