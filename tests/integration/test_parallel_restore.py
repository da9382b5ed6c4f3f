"""Parallel restore of plain dumps (issue 14): `jobs` connections give the same
database as one psql connection, and a failure in any of them stops all of them,
drops the scratch database and leaves the original as it was.

The realistic dataset (partitions, large objects, a trigger, a materialized
view, RLS, two schema owners) gets what a parallel load must order correctly:
large-ish tables joined by foreign keys (one deferrable, initially deferred),
an index with a comment on it, and a table big enough for a worker's COPY to be
caught and killed while it runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, AppDB, fingerprint, make_realistic_db, run_cli
from realistic_restore import superuser_url

from lifeboat import naming

EXTRA = """
CREATE TABLE public.parent (id int PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE public.child (
    id bigint PRIMARY KEY,
    parent_id int NOT NULL REFERENCES public.parent (id),
    other_id int REFERENCES public.parent (id) DEFERRABLE INITIALLY DEFERRED,
    note text
);
CREATE INDEX child_parent ON public.child (parent_id);
COMMENT ON INDEX public.child_parent IS 'children by parent';
CREATE TABLE public.grandchild (
    id bigint PRIMARY KEY,
    child_id bigint NOT NULL REFERENCES public.child (id) ON DELETE CASCADE,
    payload text
);
CREATE INDEX grandchild_child ON public.grandchild (child_id);
INSERT INTO public.parent SELECT g, 'p' || g FROM generate_series(1, 20000) g;
INSERT INTO public.child
    SELECT g, 1 + g % 20000, 1 + (g * 7) % 20000, md5(g::text) FROM generate_series(1, 60000) g;
INSERT INTO public.grandchild
    SELECT g, 1 + g % 60000, repeat(md5(g::text), 3) FROM generate_series(1, {big}) g;
-- 6 MB in one large object: its lowrite statements are run before the entry ends.
SELECT lo_from_bytea(0, decode(string_agg(md5(g::text), ''), 'hex'))
    FROM generate_series(1, 400000) g;
CREATE MATERIALIZED VIEW public.parent_counts AS
    SELECT parent_id, count(*) AS n FROM public.child GROUP BY parent_id;
CREATE UNIQUE INDEX parent_counts_id ON public.parent_counts (parent_id);
"""


def make_db(pg, big: int = 60000) -> AppDB:
    db = make_realistic_db(pg)
    pg.psql(EXTRA.format(big=big), db=db.name)
    return db


def backup(db: AppDB, env: dict) -> Path:
    env = dict(env, DATABASE_URL=superuser_url(db))
    run_cli(["backup"], env, check=True)
    store = Path(env["LIFEBOAT_BACKUP_DIR"]) / "daily"
    return sorted(p for p in store.iterdir() if naming.parse(p.name))[-1]


def restore(db: AppDB, env: dict, jobs: int, *extra: str):
    env = dict(env, DATABASE_URL=superuser_url(db), LIFEBOAT_PLAIN_JOBS=str(jobs))
    return run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup", *extra], env)


def schema(db: AppDB) -> str:
    """pg_dump --schema-only, without its per-run \\restrict key."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "-d", superuser_url(db)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return re.sub(r"(?m)^\\(un)?restrict \S+$", "", out)


def databases(pg) -> set[str]:
    return set(pg.psql("SELECT datname FROM pg_database").split())


def test_jobs_3_restores_the_same_database_as_jobs_1(pg, lifeboat_env):
    db = make_db(pg)
    original = fingerprint(db, superuser=True)
    backup(db, lifeboat_env)
    results = {}
    for jobs in (1, 3):
        target = f"{db.name}_j{jobs}"
        proc = restore(db, lifeboat_env, jobs, "--target-db", target)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        copy = AppDB(target, db.url_for(target), pg)
        results[jobs] = (schema(copy), fingerprint(copy, superuser=True))
    assert results[1][0] == results[3][0]
    assert results[1][1] == results[3][1]
    # And the data is the original's (the database-level properties may differ: a new name).
    rows = {k: v for k, v in original.items() if k != "database"}
    assert {k: v for k, v in results[3][1].items() if k != "database"} == rows
    assert results[3][1]["public.grandchild"].startswith("60000:")
    # Deferred FK, trigger, matview data and partitions came back as objects, not just rows.
    copy = AppDB(f"{db.name}_j3", db.url_for(f"{db.name}_j3"), pg)
    assert (
        copy.sql(
            "SELECT condeferred FROM pg_constraint WHERE conname = 'child_other_id_fkey'", True
        )
        == "t"
    )
    assert copy.sql("SELECT count(*) FROM public.parent_counts", True) == "20000"
    assert copy.sql("SELECT obj_description('public.child_parent'::regclass)", True) == (
        "children by parent"
    )
    # Planner statistics for every table, partition, partitioned table and matview
    # (ANALYZE spread over the connections, as the counts are).
    never_analyzed = copy.sql(
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_stat_user_tables"
        " WHERE last_analyze IS NULL",
        True,
    )
    assert never_analyzed == "", never_analyzed
    assert int(copy.sql("SELECT count(*) FROM pg_stat_user_tables", True)) >= 8


def rewrite_gzip(dump: Path, change) -> None:
    """Change the SQL; update the manifest's sha256 and size so only the load can object."""
    replace_dump(dump, gzip.compress(change(gzip.decompress(dump.read_bytes()))))


def replace_dump(dump: Path, data: bytes) -> None:
    """New bytes for a backup, with a manifest to match (as whoever can write to the
    store, without a manifest key, could do)."""
    dump.write_bytes(data)
    path = Path(f"{dump}.manifest.json")
    manifest = json.loads(path.read_text())
    manifest["size"] = len(data)
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


def test_a_failing_worker_stops_all_and_the_original_is_untouched(pg, lifeboat_env):
    db = make_db(pg)
    dump = backup(db, lifeboat_env)
    before = fingerprint(db, superuser=True)
    names = databases(pg)

    def duplicate_parent_row(sql: bytes) -> bytes:
        # A second row with id 1: loads fine, then the primary key build fails on a worker.
        head = b"COPY public.parent (id, name) FROM stdin;\n"
        return sql.replace(head, head + b"1\tduplicate\n", 1)

    rewrite_gzip(dump, duplicate_parent_row)
    proc = restore(db, lifeboat_env, 3)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "could not create unique index" in proc.stdout, proc.stdout
    assert "The original database is untouched" in proc.stdout
    assert databases(pg) == names  # the scratch database was dropped
    assert fingerprint(db, superuser=True) == before


def test_a_killed_worker_stops_all_and_the_original_is_untouched(pg, lifeboat_env):
    db = make_db(pg, big=600000)  # a COPY that lasts long enough to be caught
    backup(db, lifeboat_env)
    before = fingerprint(db, superuser=True)
    names = databases(pg)
    killed = []

    def kill_a_copy():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pid = pg.psql(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE 'COPY public.grandchild%' "
                f"AND datname LIKE '{db.name}__lifeboat_restore_%' LIMIT 1"
            )
            if pid and pg.psql(f"SELECT pg_terminate_backend({pid})") == "t":
                killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_copy)
    killer.start()
    proc = restore(db, lifeboat_env, 3)
    killer.join()
    assert killed, "the restore finished before a worker's COPY could be caught"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "terminat" in proc.stdout.lower() or "connection" in proc.stdout.lower(), proc.stdout
    assert databases(pg) == names
    assert fingerprint(db, superuser=True) == before


@pytest.mark.parametrize("jobs", [1, 3])
def test_a_tampered_line_is_refused_before_any_connection_runs_it(pg, lifeboat_env, jobs):
    db = make_db(pg, big=1000)
    dump = backup(db, lifeboat_env)
    before = fingerprint(db, superuser=True)
    trace = f"/tmp/lifeboat_parallel_guard_{db.name}"

    def meta_command(sql: bytes) -> bytes:
        at = sql.index(b"-- Name: child child_parent")
        return sql[:at] + f"\\! touch {trace}\n".encode() + sql[at:]

    rewrite_gzip(dump, meta_command)
    proc = restore(db, lifeboat_env, jobs)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "was refused before psql ran it" in proc.stdout, proc.stdout
    assert not Path(trace).exists()
    assert fingerprint(db, superuser=True) == before


def test_sigterm_mid_parallel_copy_cleans_up(pg, lifeboat_env):
    """SIGTERM while the workers copy: every connection stops, the scratch database goes."""
    db = make_db(pg, big=600000)
    backup(db, lifeboat_env)
    before = fingerprint(db, superuser=True)
    names = databases(pg)
    env = dict(lifeboat_env, DATABASE_URL=superuser_url(db), LIFEBOAT_PLAIN_JOBS="3")
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/lifeboat"), "restore", "--latest", "--confirm", "--skip-pre-backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        copying = ""
        deadline = time.monotonic() + 60
        while not copying and time.monotonic() < deadline and proc.poll() is None:
            copying = pg.psql(
                "SELECT count(*) FILTER (WHERE query LIKE 'COPY public.grandchild%') "
                "FROM pg_stat_activity WHERE state = 'active' "
                f"AND datname LIKE '{db.name}__lifeboat_restore_%' HAVING count(*) > 0"
            )
            copying = "" if copying in ("", "0") else copying
            time.sleep(0.01)
        assert copying, "the restore finished before a worker's COPY could be caught"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in err, err
    assert databases(pg) == names
    left = pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{db.name}\\_\\_%'")
    assert left == "0"
    assert fingerprint(db, superuser=True) == before


@pytest.mark.parametrize("variant", ["inserts", "no entry comments"])
def test_odd_stock_dumps_restore_the_same_in_parallel(pg, lifeboat_env, tmp_path, variant):
    """Stock pg_dump files lifeboat did not write: --inserts (one long data entry per
    table, run in pieces) and a dump stripped of the comments the load cuts at."""
    db = make_db(pg, big=1000)
    args = ["--inserts"] if variant == "inserts" else []
    sql = subprocess.run(
        ["pg_dump", *args, "-d", superuser_url(db)], capture_output=True, check=True
    ).stdout
    if variant != "inserts":
        sql = b"".join(line for line in sql.splitlines(keepends=True) if b"Name: " not in line[:40])
    dump = tmp_path / "stock.sql.gz"
    dump.write_bytes(gzip.compress(sql))
    results = {}
    for jobs in (1, 3):
        target = f"{db.name}_{jobs}"
        env = dict(lifeboat_env, DATABASE_URL=superuser_url(db), LIFEBOAT_PLAIN_JOBS=str(jobs))
        restore_args = ["--file", str(dump), "--target-db", target, "--skip-pre-backup"]
        proc = run_cli(["restore", *restore_args, "--confirm"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        copy = AppDB(target, db.url_for(target), pg)
        results[jobs] = (schema(copy), fingerprint(copy, superuser=True))
    assert results[1] == results[3]
    assert results[3][1]["public.child"].startswith("60000:")
