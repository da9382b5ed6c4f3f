"""Point-in-time recovery (pgBackRest): the recovery point, and a PITR restore
against a dump restore of the same database.

1. Recovery point. A cluster archiving with the default archive_timeout (60 s)
   and a light load (one small commit a second, the quiet server the timeout
   exists for). At failure moments every 5 s over LIFEBOAT_BENCH_PITR_SECONDS
   (150), the committed data a crash would lose: the moment minus the commit
   time of the newest row whose WAL is in the repository
   (pg_stat_archiver.last_archived_wal). Target: worst case <= 60 s plus the
   archiving latency, reported as <= 65 s.
2. Restore time of one pgbench database (scale LIFEBOAT_BENCH_PITR_SCALE, 10
   ~ 150 MB) beside another: `lifeboat restore --time NOW` against
   `lifeboat restore --latest` of a fresh dump, both --skip-pre-backup, both
   through the same verification and swap. No target: PITR also restores the
   cluster's base backup, replays WAL and dumps; the figure says what that
   costs.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, pgcluster, report, timed

from lifeboat import pitr, settings
from lifeboat.pitr import config as pitr_config

SECONDS = int(os.environ.get("LIFEBOAT_BENCH_PITR_SECONDS", "150"))
SCALE = int(os.environ.get("LIFEBOAT_BENCH_PITR_SCALE", "10"))
ARCHIVE_TIMEOUT = 60
STANZA = "bench"
LIFEBOAT = str(ROOT / ".venv/bin/lifeboat")


def _postgres_dir(path: Path) -> Path:
    pw = pwd.getpwnam("postgres")
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _pgbackrest(conf: Path, *args: str) -> None:
    subprocess.run(
        ["pgbackrest", f"--config={conf}", f"--stanza={STANZA}", *args],
        check=True, capture_output=True, cwd="/", user="postgres", group="postgres",
    )  # fmt: skip


def lsn_of_segment_end(name: str, segment_size: int) -> int:
    """First byte after WAL segment `name` (the archive holds everything before it)."""
    per_log = 0x100000000 // segment_size
    number = int(name[8:16], 16) * per_log + int(name[16:24], 16)
    return (number + 1) * segment_size


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="lifeboat-bench-pitr-"))
    root.chmod(0o755)
    cluster = pgcluster.Cluster(root / "pgdata", pgcluster.free_port())
    conf = root / "pgbackrest.conf"
    env = dict(
        os.environ,
        LIFEBOAT_CONFIG="/nonexistent",
        LIFEBOAT_BACKUP_DIR=str(root / "backups"),
        LIFEBOAT_PITR="true",
        LIFEBOAT_PITR_STANZA=STANZA,
        LIFEBOAT_PITR_CONFIG=str(conf),
        LIFEBOAT_PITR_WORK_DIR=str(root / "work"),
        LIFEBOAT_PITR_ARCHIVE_TIMEOUT=str(ARCHIVE_TIMEOUT),
        DATABASE_URL=f"host={cluster.socket_dir} port={cluster.port} dbname=app user=postgres",
    )
    try:
        cluster.init()
        s = settings.resolve(
            {
                "database_url": "postgresql:///unused",
                "pitr_stanza": STANZA,
                "pitr_pg_data": str(cluster.datadir),
                "pitr_pg_port": cluster.port,
                "pitr_pg_socket_dir": cluster.socket_dir,
                "pitr_repo_path": str(_postgres_dir(root / "repo")),
                "pitr_log_path": str(_postgres_dir(root / "log")),
                "pitr_lock_path": str(_postgres_dir(root / "lock")),
                "pitr_config": str(conf),
            }
        )
        conf.write_text(pitr.render_config(s))
        conf.chmod(0o644)
        with open(cluster.datadir / "postgresql.conf", "a") as fh:
            fh.write(
                f"wal_level = replica\narchive_mode = on\narchive_timeout = {ARCHIVE_TIMEOUT}\n"
                f"archive_command = '{pitr_config.archive_command(s)}'\n"
            )
        cluster.start()
        for db in ("app", "other"):
            cluster.psql(f"CREATE DATABASE {db}")
        cluster._run("pgbench", "-i", "-q", "-s", str(SCALE), "-h", cluster.socket_dir, "-p",
                     str(cluster.port), "-U", "postgres", "app")  # fmt: skip
        cluster.psql(
            "CREATE TABLE ticks (id bigserial PRIMARY KEY, committed_at timestamptz NOT NULL,"
            " lsn pg_lsn NOT NULL)",
            db="app",
        )
        _pgbackrest(conf, "stanza-create")
        _pgbackrest(conf, "--type=full", "backup")
        ok = recovery_point(cluster)
        ok = restore_times(cluster, env) and ok
        return 0 if ok else 1
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def recovery_point(cluster: pgcluster.Cluster) -> bool:
    import psycopg

    url = f"host={cluster.socket_dir} port={cluster.port} dbname=app user=postgres"
    size = int(cluster.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
    stop = threading.Event()

    def load():
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                # The commit's own LSN: a crash keeps this row only if it is archived.
                conn.execute("BEGIN")
                conn.execute(
                    "INSERT INTO ticks (committed_at, lsn) VALUES (clock_timestamp(),"
                    " pg_current_wal_insert_lsn())"
                )
                conn.execute("COMMIT")
                time.sleep(1)

    writer = threading.Thread(target=load)
    writer.start()
    losses = []
    try:
        time.sleep(3)
        # One switch so the measured span starts with ticks in the archive; from
        # then on only archive_timeout (or full segments) moves it.
        cluster.psql("SELECT pg_switch_wal()")
        time.sleep(3)
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                time.sleep(5)
                archived, now = conn.execute(
                    "SELECT last_archived_wal, clock_timestamp() FROM pg_stat_archiver"
                ).fetchone()
                end = lsn_of_segment_end(archived, size)
                newest = conn.execute(
                    "SELECT max(committed_at) FROM ticks WHERE lsn < %s::pg_lsn",
                    (f"{end >> 32:X}/{end & 0xFFFFFFFF:X}",),
                ).fetchone()[0]
                if newest is not None:
                    losses.append((now - newest).total_seconds())
    finally:
        stop.set()
        writer.join()
    worst, mean = max(losses), sum(losses) / len(losses)
    return report(
        f"Recovery point with archive_timeout = {ARCHIVE_TIMEOUT} s, one commit a second "
        f"({len(losses)} failure moments over {SECONDS} s)",
        [
            ("committed data lost, worst", f"{worst:.1f} s", "<= 65 s", worst <= 65),
            ("committed data lost, mean", f"{mean:.1f} s", "(info)", True),
        ],
    )


def restore_times(cluster: pgcluster.Cluster, env: dict) -> bool:
    size = cluster.psql("SELECT pg_size_pretty(pg_database_size('app'))")
    subprocess.run([LIFEBOAT, "backup"], env=env, check=True, capture_output=True)
    dump = timed([LIFEBOAT, "restore", "--latest", "--skip-pre-backup", "--confirm"], env=env)
    when = cluster.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')"
    )
    argv = [LIFEBOAT, "--json", "restore", "--time", when, "--skip-pre-backup", "--confirm"]
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    point_in_time = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr)
        return False
    rows = json.loads(proc.stdout)[0]["rows"]
    return report(
        f"Restore of one database (pgbench scale {SCALE}, {size}, {rows} rows verified)",
        [
            ("dump restore (--latest)", f"{dump:.1f} s", "(baseline)", True),
            ("point-in-time restore (--time)", f"{point_in_time:.1f} s", "(info)", True),
            ("ratio", f"{point_in_time / dump:.2f}x", "(info)", True),
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
