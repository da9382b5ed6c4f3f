"""A restore to a time must not depend on what other databases did after the
base backup.

pgBackRest's --db-include restores the databases left out as zeroed files.
Replaying WAL that updates their existing pages (without a full-page image:
the test clusters run with full_page_writes = off, which makes it certain)
then meets "uninitialized" pages, and PostgreSQL stops recovery with
"PANIC: WAL contains references to invalid pages". The temporary instance
runs with ignore_invalid_pages, and lifeboat refuses the restore only when an
invalid page belongs to the database being restored (or a shared catalog).
"""

from __future__ import annotations

import sys
from pathlib import Path

import test_pitr
from conftest import fingerprint
from test_pitr import STANZA

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "module_utils"))

from lifeboat.pitr.instance import invalid_pages_of  # noqa: E402

world = test_pitr.world


def test_updates_in_a_database_left_out_do_not_stop_recovery(world):
    shop, other = world.db("shop"), world.db("other")
    other.sql("INSERT INTO ticks SELECT g FROM generate_series(1, 5000) g")
    world.pgbackrest("--type=full", "backup")  # other's pages are in this base backup
    # After it: changes to those pages (heap updates, a vacuum), then shop's rows.
    other.sql("UPDATE ticks SET n = n + 1")
    world.cluster.psql("VACUUM ticks", db="other")
    shop.sql("INSERT INTO orders (id, batch) SELECT g, 'late' FROM generate_series(501, 530) g")
    want = fingerprint(shop)
    target = world.now()
    shop.sql("DELETE FROM orders")  # the bad statement

    proc = world.cli(["restore", "--time", target, "--confirm"], shop.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pgBackRest stanza {STANZA}" in proc.stdout
    assert fingerprint(shop) == want
    # The left-out database was never touched by any of it.
    assert other.sql("SELECT count(*), min(n) FROM ticks") == "5000|2"


def test_invalid_pages_of_the_restored_database_are_its_own():
    text = "\n".join(
        [
            "WARNING:  page 4 of relation base/16397/760179 is uninitialized",
            "WARNING:  page 0 of relation base/16384/2619_vm does not exist",
            "WARNING:  page 7 of relation pg_tblspc/16500/PG_15_202209061/16384/24576 was "
            "uninitialized",
            "WARNING:  page 2 of relation global/1262 did not exist",
            "WARNING:  WAL contains references to invalid pages",
        ]
    )
    assert invalid_pages_of(text, 16397) == ["base/16397/760179", "global/1262"]
    assert invalid_pages_of(text, 16384) == [
        "base/16384/2619_vm",
        "global/1262",
        "pg_tblspc/16500/PG_15_202209061/16384/24576",
    ]
    assert invalid_pages_of("LOG:  redo done at 0/3000100", 16384) == []
