"""A drill killed mid-restore leaves a scratch database; the next drill drops it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import OWNER, ROOT, fingerprint, run_cli

# A CHECK constraint that sleeps per row while the role setting is on: the
# drill (connecting as that role) restores slowly on cue.
SLOW = """
CREATE FUNCTION slow_ok(integer) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF current_setting('lifeboat_test.slow', true) = 'on' THEN PERFORM pg_sleep(0.03); END IF;
  RETURN true;
END $$;
CREATE TABLE slow (n integer CHECK (slow_ok(n)));
INSERT INTO slow SELECT generate_series(1, 100);
"""


@pytest.fixture(autouse=True)
def fast_again(pg):
    yield
    pg.psql(f"ALTER ROLE {OWNER} RESET lifeboat_test.slow")


def slow(app_db, on: bool) -> None:
    value = "SET lifeboat_test.slow = 'on'" if on else "RESET lifeboat_test.slow"
    app_db.cluster.psql(f"ALTER ROLE {OWNER} {value}")


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_sigkill_mid_restore_then_next_drill_cleans_up(app_db, backup_dir, lifeboat_env):
    # jobs=1: the psql load, whose psql this test catches
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PLAIN_JOBS="1")
    app_db.sql(SLOW)
    run_cli(["backup"], env, check=True)
    slow(app_db, True)
    before = fingerprint(app_db)
    pattern = f"{app_db.name}\\_\\_lifeboat\\_drill\\_%"
    restoring = (
        "SELECT datname FROM pg_stat_activity WHERE datname LIKE "
        f"'{pattern}' AND query LIKE 'COPY%'"
    )

    drill = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "lifeboat"), "verify", "--latest", "--deep"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        scratch = wait_for(lambda: app_db.cluster.psql(restoring))
        os.kill(drill.pid, signal.SIGKILL)
        drill.wait(10)
    finally:
        if drill.poll() is None:
            drill.kill()
            drill.wait()
    assert drill.returncode == -signal.SIGKILL
    # The killed drill's psql died with it (PR_SET_PDEATHSIG), its scratch stays behind.
    assert app_db.cluster.psql(f"SELECT 1 FROM pg_database WHERE datname = '{scratch}'") == "1"

    slow(app_db, False)
    proc = run_cli(["verify", "--latest", "--deep"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"dropped scratch database {scratch} of an interrupted drill" in proc.stdout
    left = app_db.cluster.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{pattern}'")
    assert left == ""
    assert fingerprint(app_db) == before


def test_cleanup_leaves_a_running_drills_scratch_alone(app_db, backup_dir, lifeboat_env):
    """Two drills on one server: the second must not drop the first one's scratch."""
    # jobs=1: the psql load, whose psql this test catches
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PLAIN_JOBS="1")
    app_db.sql(SLOW)
    # Slow to build too: the first drill is paused there. Paused inside COPY instead,
    # its server session would wait for rows and hold up every DROP DATABASE on the
    # server (test_restore_locks.py), the second drill's included.
    app_db.sql("CREATE INDEX slow_flag ON slow ((slow_ok(n)))")
    run_cli(["backup"], env, check=True)
    slow(app_db, True)
    other_dir = backup_dir.parent / "other"
    # Another host's drill (own store, own lock) will run its cleanup on the same server.
    run_cli(["backup"], dict(env, LIFEBOAT_BACKUP_DIR=str(other_dir)), check=True)
    first = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "lifeboat"), "verify", "--latest", "--deep"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: paused and resumed as a whole
    )
    pattern = f"{app_db.name}\\_\\_lifeboat\\_drill\\_%"
    loading = (
        "SELECT datname FROM pg_stat_activity WHERE datname LIKE "
        f"'{pattern}' AND query LIKE 'CREATE INDEX slow_flag%'"
    )
    try:
        scratch = wait_for(lambda: app_db.cluster.psql(f"{loading} AND wait_event = 'PgSleep'"))
        # Frozen mid-restore (drill and psql): it cannot finish before the second
        # drill's cleanup, whatever the machine's speed.
        os.killpg(first.pid, signal.SIGSTOP)
        slow(app_db, False)
        started = int(scratch.rsplit("_", 1)[1])  # scratch names carry the second
        wait_for(lambda: int(time.strftime("%Y%m%d%H%M%S", time.gmtime())) > started)
        second = run_cli(
            ["verify", "--latest", "--deep"], dict(env, LIFEBOAT_BACKUP_DIR=str(other_dir))
        )
        assert second.returncode == 0, second.stdout + second.stderr
        assert "interrupted drill" not in second.stdout
        # The first drill was still mid-restore all along: its scratch and load are there.
        assert first.poll() is None
        assert app_db.cluster.psql(loading) == scratch
        os.killpg(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, out + err
    assert "interrupted drill" not in out
