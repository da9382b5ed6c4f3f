"""A restore killed (SIGKILL) inside its swap heals: status says the state, a backup repairs.

The swap is held open deterministically: another session keeps an
uncommitted COMMENT ON DATABASE, so lifeboat's rename waits for its lock
after it has blocked connections; it is killed while it waits.
"""

from __future__ import annotations

import signal

import psycopg
from conftest import fingerprint, run_cli
from pressure import start_cli, wait_for


def superuser(pg, application_name: str):
    return psycopg.connect(
        host=pg.socket_dir,
        port=pg.port,
        user="postgres",
        dbname="postgres",
        application_name=application_name,
    )


def kill_inside_the_swap(pg, app_db, env, extra=()) -> None:
    holder = superuser(pg, "holds-the-swap")
    holder.execute(f"COMMENT ON DATABASE \"{app_db.name}\" IS 'held'")
    try:
        proc = start_cli(["restore", "--latest", "--confirm", *extra], env)
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'ALTER DATABASE%RENAME%'"
        )
        backend = wait_for(lambda: pg.psql(waiting), timeout=60, what="the swap to wait")
        allow = f"SELECT datallowconn FROM pg_database WHERE datname = '{app_db.name}'"
        assert pg.psql(allow) == "f"  # inside the swap: connections blocked
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        holder.rollback()
        holder.close()
    # The killed run's server session rolls back its rename once it notices.
    wait_for(
        lambda: not pg.psql(f"SELECT 1 FROM pg_stat_activity WHERE pid = {backend}"),
        what="the killed run's session to end",
    )


def test_killed_swap_status_reports_then_backup_repairs(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    before = fingerprint(app_db)
    kill_inside_the_swap(pg, app_db, env)
    allow = f"SELECT datallowconn FROM pg_database WHERE datname = '{app_db.name}'"
    assert pg.psql(allow) == "f"  # what the killed run left

    status = run_cli(["status"], env)
    assert status.returncode == 1
    text = status.stdout + status.stderr
    assert "a restore was interrupted during its swap" in text, text
    assert "refuses connections (ALLOW_CONNECTIONS false)" in text
    assert f'ALTER DATABASE "{app_db.name}" WITH ALLOW_CONNECTIONS true;' in text
    assert pg.psql(allow) == "f"  # status only reports

    backup = run_cli(["backup"], env)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert f"re-allowed connections to {app_db.name}" in backup.stdout + backup.stderr
    assert pg.psql(allow) == "t"
    assert fingerprint(app_db) == before  # the swap never committed: the original stays
    status = run_cli(["status"], env)
    assert "interrupted" not in status.stdout + status.stderr


def test_killed_swap_with_block_writes_is_made_writable_by_a_drill(
    app_db, pg, backup_dir, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    kill_inside_the_swap(pg, app_db, env, extra=("--block-writes",))
    status = run_cli(["status"], env)
    assert "new sessions are read-only (--block-writes)" in status.stdout + status.stderr
    assert f'ALTER DATABASE "{app_db.name}" RESET default_transaction_read_only;' in status.stdout
    drill = run_cli(["verify", "--latest", "--deep"], env)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "made " + app_db.name + " writable again" in drill.stdout
    app_db.sql("INSERT INTO users (email, name) VALUES ('after@example.com', 'after')")
    allow = f"SELECT datallowconn FROM pg_database WHERE datname = '{app_db.name}'"
    assert pg.psql(allow) == "t"
