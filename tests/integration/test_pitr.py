"""Point-in-time restore of one database with pgBackRest, against a real cluster.

One cluster for the module, archiving into a local pgBackRest repository in a
temp dir (config rendered by the engine, pgBackRest running as `postgres`),
one full base backup. The tests run in file order: the last one damages the
repository on purpose.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "module_utils"))
sys.path.insert(0, str(ROOT / "tests"))

import pgcluster  # noqa: E402
from conftest import OWNER, OWNER_PASSWORD, AppDB, fingerprint, run_cli  # noqa: E402

from lifeboat import pitr, settings  # noqa: E402
from lifeboat.conninfo import ConnInfo  # noqa: E402
from lifeboat.pitr import config as pitr_config  # noqa: E402

STANZA = "pitrtest"
pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/pgbackrest").exists(), reason="pgbackrest is not installed"
)


def _postgres_dir(path: Path) -> Path:
    pw = pwd.getpwnam("postgres")
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _as_postgres(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), capture_output=True, text=True, check=check, cwd="/",
        user="postgres", group="postgres",
    )  # fmt: skip


class World:
    """The cluster, its repository and the environment the CLI runs with."""

    def __init__(self, root: Path):
        self.root = root
        self.cluster = pgcluster.Cluster(root / "pgdata", pgcluster.free_port())
        self.repo = _postgres_dir(root / "repo")
        self.work = root / "work"
        self.conf = root / "pgbackrest.conf"
        self.env = dict(os.environ)
        self.env.pop("DATABASE_URL", None)
        self.env.update(
            LIFEBOAT_CONFIG="/nonexistent/lifeboat.yml",
            LIFEBOAT_BACKUP_DIR=str(root / "backups"),
            LIFEBOAT_PITR="true",
            LIFEBOAT_PITR_STANZA=STANZA,
            LIFEBOAT_PITR_CONFIG=str(self.conf),
            LIFEBOAT_PITR_WORK_DIR=str(self.work),
            LIFEBOAT_PITR_ARCHIVE_TIMEOUT="5",
            PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        )

    def settings(self, url: str):
        keys = {k: v for k, v in self.env.items() if k.startswith("LIFEBOAT_PITR")}
        layer = settings.from_environment(keys)
        return settings.resolve(
            {
                "database_url": url,
                "pitr_pg_data": str(self.cluster.datadir),
                "pitr_pg_port": self.cluster.port,
                "pitr_pg_socket_dir": self.cluster.socket_dir,
                "pitr_repo_path": str(self.repo),
                "pitr_log_path": str(_postgres_dir(self.root / "pgbr-log")),
                "pitr_lock_path": str(_postgres_dir(self.root / "pgbr-lock")),
            },
            layer,
        )

    def db(self, name: str) -> AppDB:
        return AppDB(name, self.cluster.url(OWNER, OWNER_PASSWORD, name), self.cluster)

    def pgbackrest(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
        return _as_postgres(
            "pgbackrest", f"--config={config or self.conf}", f"--stanza={STANZA}", *args
        )

    def cli(self, args: list[str], url: str, **kw) -> subprocess.CompletedProcess:
        return run_cli(args, dict(self.env, DATABASE_URL=url, **kw))

    def now(self) -> str:
        """The server's clock, as --time takes it."""
        return self.cluster.psql(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')"
        )


def start_archiving(cluster, conf, extra: str = "") -> None:
    """Start `cluster` archiving through pgBackRest (a segment every 5 s at most), with the
    application's owner role."""
    with open(cluster.datadir / "postgresql.conf", "a") as fh:
        fh.write(
            "wal_level = replica\narchive_mode = on\narchive_timeout = 5\n"
            f"archive_command = '{pitr_config.archive_command(conf)}'\n{extra}"
        )
    cluster.start()
    lit = OWNER_PASSWORD.replace("'", "''")
    cluster.psql(f"CREATE ROLE {OWNER} LOGIN CREATEDB PASSWORD '{lit}'")


@pytest.fixture(scope="module")
def world(pg_tmp):
    # Its own folder: other modules (test_pitr_notify.py) import this fixture too.
    root = Path(tempfile.mkdtemp(prefix="pitr-", dir=pg_tmp))
    root.chmod(0o755)
    w = World(root)
    w.cluster.init()
    conf = w.settings("postgresql:///unused")
    w.conf.write_text(pitr.render_config(conf))  # the engine's rendering, as provisioned
    w.conf.chmod(0o644)
    start_archiving(w.cluster, conf)
    for name in ("shop", "other"):  # both exist in the base backup (--db-include needs it)
        w.cluster.psql(f"CREATE DATABASE {name} OWNER {OWNER}")
    w.db("shop").sql(
        "CREATE TABLE orders (id int PRIMARY KEY, batch text NOT NULL,"
        " committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
    w.db("shop").sql(
        "INSERT INTO orders (id, batch) SELECT g, 'base' FROM generate_series(1, 50) g"
    )
    w.db("other").sql("CREATE TABLE ticks (n int)")
    w.pgbackrest("stanza-create")
    w.pgbackrest("check")
    w.pgbackrest("--type=full", "backup")
    yield w
    w.cluster.stop("immediate")


def _instances(work: Path) -> list[str]:
    return sorted(os.listdir(work)) if work.exists() else []


def _postmasters_under(path: Path) -> list[int]:
    """PIDs of processes whose command line mentions `path` (a leftover postmaster)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and "postgres" in cmdline:
            found.append(int(entry))
    return found


def test_status_shows_base_backup_wal_and_window(world):
    world.cluster.psql("SELECT pg_switch_wal()")
    time.sleep(1)
    metrics = world.root / "metrics"
    proc = world.cli(
        ["pitr", "status", "--json"], world.db("shop").url, LIFEBOAT_METRICS_DIR=str(metrics)
    )
    found = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prom = (metrics / "lifeboat_pitr.prom").read_text()
    assert f'lifeboat_pitr_ok{{stanza="{STANZA}"}} 1\n' in prom
    assert "lifeboat_pitr_wal_age_seconds{" in prom
    assert "lifeboat_pitr_newest_base_backup_timestamp_seconds{" in prom
    assert found["state"] == "OK"
    assert found["newest_base_backup"]["type"] == "full"
    assert found["last_archived_wal"] and found["wal_age_seconds"] < 120
    assert found["window_from"] and found["window_to"]

    # The status playbook shows the same row (module lifeboat_status, inventory/local).
    play = _playbook(world, world.db("shop"), "status.yml", "-e", "lifeboat_pitr=true",
                     "-e", f"lifeboat_pitr_config={world.conf}",
                     "-e", f"lifeboat_pitr_stanza={STANZA}")  # fmt: skip
    row = [line for line in play.stdout.splitlines() if f"stanza {STANZA}" in line]
    assert row and " pitr " in row[0] and " OK " in row[0], play.stdout[-3000:]


def test_times_outside_the_window_are_refused(world):
    shop = world.db("shop")
    before = fingerprint(shop)
    info = json.loads(world.pgbackrest("--output=json", "info").stdout)
    oldest = info[0]["backup"][0]["timestamp"]["start"]
    early = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(oldest - 3600))
    proc = world.cli(["restore", "--time", early, "--confirm"], shop.url)
    assert proc.returncode == 1
    assert "before the recoverable window" in proc.stdout + proc.stderr
    assert "oldest base backup" in proc.stdout + proc.stderr

    future = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() + 3600))
    proc = world.cli(["restore", "--time", future, "--confirm"], shop.url)
    assert proc.returncode == 1
    assert "in the future" in proc.stdout + proc.stderr

    proc = world.cli(["restore", "--time", "2026-11-30 10:42:00", "--confirm"], shop.url)
    assert proc.returncode == 2 and "no time zone" in proc.stderr
    assert fingerprint(shop) == before
    assert _instances(world.work) == []


def test_dry_run_shows_the_plan(world):
    proc = world.cli(["restore", "--time", world.now(), "--dry-run"], world.db("shop").url)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "base backup: " in out and "F (full" in out
    assert "WAL: from 0000000" in out
    assert "needs about" in out and "free" in out
    assert _instances(world.work) == []


def test_restore_one_database_to_just_before_a_bad_delete(world):
    shop, other = world.db("shop"), world.db("other")
    shop.sql("INSERT INTO orders (id, batch) SELECT g, 'a' FROM generate_series(101, 120) g")
    world.cluster.psql("SELECT pg_switch_wal()")
    shop.sql("INSERT INTO orders (id, batch) SELECT g, 'b' FROM generate_series(201, 220) g")
    time.sleep(1.5)
    shop.sql("INSERT INTO orders (id, batch) SELECT g, 'c' FROM generate_series(301, 310) g")
    c_committed = shop.sql("SELECT min(committed_at) FROM orders WHERE batch = 'c'")
    # A second before batch c: every row committed before is wanted, none after.
    target = world.cluster.psql(
        f"SELECT to_char(('{c_committed}'::timestamptz - interval '1 second') AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD HH24:MI:SS.US+00')"
    )
    expected = shop.sql(
        f"SELECT count(*) FROM orders WHERE committed_at <= '{target}'"
    )  # base + a + b
    assert expected == "90"
    shop.sql("DELETE FROM orders WHERE id > 10")  # the bad statement
    assert shop.sql("SELECT count(*) FROM orders") == "10"

    # Another database keeps a session open and querying throughout.
    import psycopg

    stop, seen, errors = threading.Event(), [], []

    def keep_querying():
        try:
            with psycopg.connect(other.url, autocommit=True) as conn:
                while not stop.is_set():
                    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                    conn.execute("INSERT INTO ticks VALUES (1)")
                    seen.append(pid)
                    time.sleep(0.05)
        except Exception as exc:
            errors.append(exc)

    session = threading.Thread(target=keep_querying)
    session.start()
    try:
        while len(seen) < 3:
            time.sleep(0.05)
        started = len(seen)
        proc = world.cli(["restore", "--time", target, "--confirm"], shop.url)
    finally:
        stop.set()
        session.join()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pgBackRest stanza pitrtest" in proc.stdout
    assert "pre-restore backup" in proc.stdout
    rows = shop.sql("SELECT batch, count(*) FROM orders GROUP BY 1 ORDER BY 1")
    assert rows.splitlines() == ["a|20", "b|20", "base|50"]
    assert shop.sql(f"SELECT count(*) FROM orders WHERE committed_at > '{target}'") == "0"
    # The other database: one session, never interrupted, querying while the restore ran.
    assert not errors and len(set(seen)) == 1 and len(seen) - started > 20
    assert int(other.sql("SELECT count(*) FROM ticks")) == len(seen)
    # The temporary instance is gone: no directory, no postmaster.
    assert _instances(world.work) == []
    assert _postmasters_under(world.work) == []


def test_drill_restores_beside_the_live_database_and_drops_it(world):
    shop = world.db("shop")
    before = fingerprint(shop)
    # To a time after the previous test's swap: "shop" is then a database created
    # after the base backup (the restore's scratch copy, renamed), rebuilt from WAL.
    world.db("other").sql("INSERT INTO ticks VALUES (0)")  # a transaction to recover
    time.sleep(5)
    proc = world.cli(["pitr", "drill", "--minutes", "0.05", "--json"], shop.url)
    found = json.loads(proc.stdout)
    assert proc.returncode == 0 and found["ok"], proc.stdout + proc.stderr
    assert found["tables"] == 1 and found["rows"] == int(shop.sql("SELECT count(*) FROM orders"))
    assert found["rto_seconds"] > 0 and found["recovered_to"] and found["scratch_dropped"]
    assert found["recovery_point_seconds"] is not None
    assert "drill" not in world.cluster.psql("SELECT string_agg(datname, ',') FROM pg_database")
    assert fingerprint(shop) == before
    assert _instances(world.work) == []

    # The same through the playbooks (modules lifeboat_verify and lifeboat_restore).
    pitr_vars = ["-e", f"lifeboat_pitr_config={world.conf}", "-e", f"lifeboat_pitr_stanza={STANZA}",
                 "-e", f"lifeboat_pitr_work_dir={world.work}",
                 "-e", f"lifeboat_backup_dir={world.root / 'backups'}"]  # fmt: skip
    verify = _playbook(world, shop, "verify.yml", "-e", "verify_pitr_minutes=0.05", *pitr_vars)
    assert verify.returncode == 0, verify.stdout[-3000:]
    assert "OK point-in-time drill of shop" in verify.stdout and "(RTO)" in verify.stdout
    # As documented: -e restore_time='YYYY-MM-DD HH:MM:SS+00' (one argument with a space).
    when = world.now()
    plan = _playbook(
        world, shop, "restore.yml", "--check", "-e", f"restore_time={when}", *pitr_vars
    )
    assert plan.returncode == 0, plan.stdout[-3000:]
    assert f"would restore to {when[:19]}" in plan.stdout and "base backup: " in plan.stdout
    assert fingerprint(shop) == before
    assert _instances(world.work) == []


def _playbook(world, db, name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(world.env, DATABASE_URL=db.url, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    return subprocess.run(
        ["ansible-playbook", f"playbooks/{name}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_kill_during_recovery_is_cleaned_up_by_the_next_run(world):
    shop = world.db("shop")
    target = world.now()
    shop.sql("INSERT INTO orders (id, batch) VALUES (900, 'late')")
    # A slow archive-get (pgBackRest's `cmd` option) keeps recovery running long
    # enough to kill lifeboat inside it.
    wrapper = world.root / "slow-pgbackrest"
    wrapper.write_text('#!/bin/sh\nsleep 1\nexec pgbackrest "$@"\n')
    wrapper.chmod(0o755)
    slow = world.root / "slow.conf"
    slow.write_text(world.conf.read_text().replace("[global]\n", f"[global]\ncmd={wrapper}\n"))
    slow.chmod(0o644)
    env = dict(world.env, DATABASE_URL=shop.url, LIFEBOAT_PITR_CONFIG=str(slow))
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/lifeboat"), "restore", "--time", target, "--confirm"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    in_recovery = False
    try:
        while time.monotonic() < deadline and not in_recovery:
            assert proc.poll() is None, proc.stdout.read()
            for name in _instances(world.work):
                if not name.endswith(".json"):
                    continue
                marker = json.loads((world.work / name).read_text())
                sock = Path(marker["root"]) / "sock"
                check = subprocess.run(
                    ["psql", "-X", "-At", "-h", str(sock), "-p", str(marker["port"]), "-U",
                     OWNER, "-d", "shop", "-c", "SELECT pg_is_in_recovery()"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                in_recovery = check.stdout.strip() == "t"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert in_recovery, "never saw the temporary instance in recovery"
    leftover = [n for n in _instances(world.work) if not n.endswith(".json")]
    assert len(leftover) == 1
    assert _postmasters_under(world.work / leftover[0]), "the killed run left no postmaster?"

    future = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() + 3600))
    again = world.cli(["restore", "--time", future, "--confirm"], shop.url)
    assert "removed the temporary instance" in again.stdout + again.stderr
    assert _instances(world.work) == []
    assert _postmasters_under(world.work) == []
    assert shop.sql("SELECT count(*) FROM orders WHERE id = 900") == "1"  # untouched


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_no_disk_space_for_the_temporary_instance_is_refused_first(world):
    shop = world.db("shop")
    before = fingerprint(shop)
    small = world.root / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(small)], check=True)
    try:
        env = {"LIFEBOAT_PITR_WORK_DIR": str(small / "work")}
        plan = world.cli(["restore", "--time", world.now(), "--dry-run"], shop.url, **env)
        assert plan.returncode == 1 and "needs about" in plan.stdout, plan.stdout + plan.stderr
        proc = world.cli(["restore", "--time", world.now(), "--confirm"], shop.url, **env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out
        assert "the temporary instance needs about" in out and "is free" in out
        assert not (small / "work").exists()  # refused before anything was written
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert fingerprint(shop) == before


def test_status_fails_when_archiving_fails_or_goes_stale(world):
    shop = world.db("shop")
    row = _pitr_row(world, shop)
    assert row["state"] == "OK", row
    assert "window" in row["reason"] and row["newest"]

    world.cluster.psql("ALTER SYSTEM SET archive_command = 'false'")
    world.cluster.psql("SELECT pg_reload_conf()")
    try:
        shop.sql("INSERT INTO orders (id, batch) VALUES (950, 'unarchived')")
        world.cluster.psql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while world.cluster.psql("SELECT failed_count FROM pg_stat_archiver") == "0":
            assert time.monotonic() < deadline, "archive_command never failed"
            time.sleep(0.2)
        assert world.cli(["status"], shop.url).returncode == 1
        row = _pitr_row(world, shop)
        assert row["state"] == "FAILED" and "archive_command fails" in row["reason"], row
        # Ten minutes on, with writes waiting: stale as well.
        later = datetime.now(timezone.utc) + timedelta(minutes=11)
        found = pitr.report(world.settings(shop.url), ConnInfo.parse(shop.url), later)
        assert any("no WAL archived for" in p for p in found["problems"]), json.dumps(found)
    finally:
        world.cluster.psql("ALTER SYSTEM RESET archive_command")
        world.cluster.psql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while _pitr_row(world, shop)["state"] != "OK":
        assert time.monotonic() < deadline, "status never recovered after archiving resumed"
        time.sleep(1)


def _pitr_row(world, db) -> dict:
    proc = world.cli(["status", "--json"], db.url)
    assert proc.stdout, proc.stderr
    return next(r for r in json.loads(proc.stdout)["rows"] if r["type"] == "pitr")


def test_missing_wal_segment_is_refused(world):
    shop = world.db("shop")
    world.cluster.psql("SELECT pg_switch_wal()")
    shop.sql("INSERT INTO orders (id, batch) VALUES (1000, 'gap')")
    world.cluster.psql("SELECT pg_switch_wal()")
    time.sleep(1)
    target = world.now()
    before = fingerprint(shop)
    info = json.loads(world.pgbackrest("--output=json", "info").stdout)[0]
    stop_wal = info["backup"][-1]["archive"]["stop"]
    archive = world.repo / "archive" / STANZA
    segments = sorted(p for p in archive.rglob("0000000*") if p.is_file() and "." in p.name)
    after = [p for p in segments if p.name[:24] > stop_wal and len(p.name.split("-")[0]) == 24]
    assert after, "no segment after the base backup to remove"
    after[0].unlink()
    proc = world.cli(["restore", "--time", target, "--confirm"], shop.url)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "archived WAL ends before that time" in out
    assert fingerprint(shop) == before
    assert _instances(world.work) == []
    assert _postmasters_under(world.work) == []
