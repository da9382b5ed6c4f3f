"""A drill's RTO is what a real restore of the same backup takes.

The load and the ANALYZE are made slow on cue, deterministically: an
expression index whose function sleeps per row while a role setting is on
(CREATE INDEX calls it per row, ANALYZE per sampled row). So both steps
dominate the time and a figure that left one out would be off by seconds.
"""

from __future__ import annotations

import pytest
from conftest import OWNER, fingerprint

from lifeboat import backup, drill, restore, settings

ROWS = 100
SLEEP = 0.025  # per row and call: about 2.5 s for the index build, 2.5 s for ANALYZE

SLOW = f"""
CREATE FUNCTION slow_key(integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF current_setting('lifeboat_test.slow', true) = 'on' THEN PERFORM pg_sleep({SLEEP}); END IF;
  RETURN $1;
END $$;
CREATE TABLE slow (n integer);
INSERT INTO slow SELECT generate_series(1, {ROWS});
CREATE INDEX slow_key_idx ON slow (slow_key(n));
"""


@pytest.fixture
def slow_role(pg):
    yield lambda: pg.psql(f"ALTER ROLE {OWNER} SET lifeboat_test.slow = 'on'")
    pg.psql(f"ALTER ROLE {OWNER} RESET lifeboat_test.slow")


def test_drill_rto_matches_a_measured_restore(app_db, backup_dir, slow_role):
    app_db.sql(SLOW)
    config = settings.resolve({"database_url": app_db.url, "backup_dir": str(backup_dir)})
    [made] = backup.run(config)
    assert made.ok, made.error
    expected = fingerprint(app_db)
    slow_role()  # from here on, every session of the owner loads and analyzes slowly

    [drilled] = drill.run(config, drill.Request(latest=True, deep=True))
    assert drilled.ok, drilled.error
    # The ANALYZE is inside the figure (timings: verify = counts + ANALYZE).
    assert drilled.timings["verify"] >= ROWS * SLEEP * 0.8, drilled.timings
    assert drilled.timings["restore"] >= ROWS * SLEEP * 0.8, drilled.timings

    app_db.sql("DELETE FROM plots")
    [restored] = restore.run(
        config, restore.Request(latest=True, confirm=True, skip_pre_backup=True)
    )
    assert restored.ok, restored.error
    assert fingerprint(app_db) == expected
    # The restore ran ANALYZE before the swap: statistics are there at once.
    assert app_db.sql("SELECT count(*) FROM pg_stats WHERE tablename = 'plots'") != "0"

    # Same steps, same time. The tolerance allows for other work on a shared machine;
    # leaving the index build or ANALYZE out of either figure moves it by
    # ROWS * SLEEP (2.5 s) or more, so the check still catches that.
    tolerance = max(1.0, 0.25 * restored.duration)
    assert abs(drilled.rto_seconds - restored.duration) <= tolerance, (
        drilled.rto_seconds,
        restored.duration,
        drilled.timings,
    )
