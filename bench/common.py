"""Shared benchmark fixtures: one generated database of about 1 GB, reused.

The cluster lives in .cache/bench (ignored) and is kept between runs so the
30 s of data generation is paid once per machine. Every benchmark reports
ratios against a baseline measured in the same process, never absolute
timings as pass/fail.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "module_utils"))

import pgcluster  # noqa: E402

CACHE = ROOT / ".cache" / "bench"
DB = "benchdb"
SCALE = int(os.environ.get("LIFEBOAT_BENCH_SCALE", "60"))  # pgbench scale; 60 ~ 1 GB with extras


def big_database() -> tuple[pgcluster.Cluster, str]:
    """Start (building on first use) the benchmark cluster; return it and a superuser URL."""
    datadir = CACHE / "pgdata"
    marker = CACHE / f"ready-{SCALE}-v2"
    port_file = CACHE / "port"
    if marker.exists() and datadir.exists():
        cluster = pgcluster.Cluster(datadir, int(port_file.read_text()))
        if not cluster.is_running():
            cluster.start()
        return cluster, socket_url(cluster, DB)
    if datadir.exists():
        pgcluster.Cluster(datadir, 0).stop("immediate")
        subprocess.run(["rm", "-rf", str(CACHE)], check=True)
    CACHE.mkdir(parents=True)
    for path in (ROOT / ".cache", CACHE):
        path.chmod(0o755)
    cluster = pgcluster.Cluster(datadir, pgcluster.free_port())
    port_file.write_text(str(cluster.port))
    cluster.init()
    cluster.start()
    cluster.psql(f"CREATE DATABASE {DB}")
    started = time.monotonic()
    print(f"building the benchmark database (pgbench scale {SCALE} + 2M events)...", flush=True)
    cluster._run(
        "pgbench",
        "-i",
        "-q",
        "-s",
        str(SCALE),
        "-h",
        cluster.socket_dir,
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
        DB,
    )
    # pgbench's own rows are mostly blank padding, far easier to compress than
    # application data; this table adds the entropy of real rows (ids, hashes,
    # timestamps, emails, JSON).
    cluster.psql(
        "SELECT setseed(0.42); "
        "CREATE TABLE events AS SELECT g AS id, md5(random()::text) AS digest, "
        "now() - (random() * 1e6) * interval '1 second' AS at, (random() * 1000)::int AS kind, "
        "'user' || (random() * 1e6)::int || '@example.com' AS email, "
        "jsonb_build_object('user', (random() * 5e4)::int, "
        "'path', '/plots/' || (random() * 977)::int, 'score', round(random()::numeric, 4), "
        "'agent', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)', 'curl/8.5.0', "
        "'Mozilla/5.0 (Macintosh)'])[1 + (g % 3)]) AS payload "
        "FROM generate_series(1, 2000000) g; ANALYZE;",
        db=DB,
    )
    print(f"built in {time.monotonic() - started:.0f}s", flush=True)
    marker.touch()
    return cluster, socket_url(cluster, DB)


JSON_DB = "benchjson"
JSON_ROWS = int(os.environ.get("LIFEBOAT_BENCH_JSON_ROWS", "2500000"))  # ~1 GB of plain SQL


def compressible_database() -> tuple[pgcluster.Cluster, str]:
    """A second database in the benchmark cluster that compresses far better than
    benchdb (about 18:1 against 7:1): repetitive JSON documents and template text,
    like an application's event or audit log. Built once, like benchdb."""
    cluster, _ = big_database()
    marker = CACHE / f"ready-json-{JSON_ROWS}"
    if not marker.exists():
        started = time.monotonic()
        print(f"building the compressible database ({JSON_ROWS} JSON rows)...", flush=True)
        cluster.psql(f"DROP DATABASE IF EXISTS {JSON_DB}")
        cluster.psql(f"CREATE DATABASE {JSON_DB}")
        cluster.psql(
            "CREATE TABLE docs AS SELECT g AS id, jsonb_build_object("
            "'type', 'order', 'status', (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4],"
            "'customer', jsonb_build_object('id', g % 5000, 'name', 'Customer ' || (g % 5000),"
            "'country', (ARRAY['DE', 'FR', 'US', 'GB'])[1 + g % 4]),"
            "'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (g % 300),"
            "'qty', 1 + g % 5, 'price', (g % 100) + 0.99))) AS doc,"
            "'Lorem ipsum dolor sit amet, consectetur adipiscing elit. Order ' || (g % 1000)"
            " || ' was processed by the warehouse team.' AS note "
            f"FROM generate_series(1, {JSON_ROWS}) g; "
            "ALTER TABLE docs ADD PRIMARY KEY (id); ANALYZE;",
            db=JSON_DB,
        )
        print(f"built in {time.monotonic() - started:.0f}s", flush=True)
        marker.touch()
    return cluster, socket_url(cluster, JSON_DB)


def socket_url(cluster: pgcluster.Cluster, db: str) -> str:
    return f"postgresql://postgres@/{db}?host={cluster.socket_dir}&port={cluster.port}"


# The command under test; LIFEBOAT_BENCH_CMD measures another build of it.
LIFEBOAT_CMD = os.environ.get("LIFEBOAT_BENCH_CMD", str(ROOT / ".venv/bin/lifeboat")).split()


# Every benchmark runs its baselines as many times as lifeboat and keeps the best of each.
ROUNDS = int(os.environ.get("LIFEBOAT_BENCH_ROUNDS", "2"))


def timed_pg_bin(folder: Path, cpu_log: Path) -> Path:
    """A pg bin directory whose pg_dump runs under /usr/bin/time, appending its CPU
    seconds to `cpu_log`: lifeboat's own CPU is then the total minus pg_dump's."""
    real = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))[-1].parent
    folder.mkdir(parents=True, exist_ok=True)
    for tool in real.iterdir():
        link = folder / tool.name
        if not link.exists():
            link.symlink_to(tool)
    wrapper = folder / "pg_dump"
    wrapper.unlink()
    wrapper.write_text(
        f'#!/bin/sh\nexec /usr/bin/time -a -f "%U %S" -o {cpu_log} {real}/pg_dump "$@"\n'
    )
    wrapper.chmod(0o755)
    return folder


DUMP_SUFFIXES = (".sql.gz", ".dir", ".dir.tar")  # plain; directory; directory as one tar


def measured_backup(url: str, backup_dir: Path, extra_env: dict | None = None):
    """One `lifeboat backup` run: (seconds, dump file, peak RSS MiB, lifeboat's own CPU
    seconds, pg_dump's CPU seconds). Wall time includes the pg_dump wrapper (a fork)."""
    subprocess.run(["rm", "-rf", str(backup_dir)], check=True)
    rss_file = Path(str(backup_dir) + ".rss")
    cpu_log = Path(str(backup_dir) + ".pg_dump-cpu")
    cpu_log.unlink(missing_ok=True)
    bin_dir = timed_pg_bin(Path(str(backup_dir) + ".bin"), cpu_log)
    env = dict(
        os.environ,
        DATABASE_URL=url,
        LIFEBOAT_BACKUP_DIR=str(backup_dir),
        LIFEBOAT_CONFIG="/nonexistent",
        LIFEBOAT_PG_BIN_DIR=str(bin_dir),
        **(extra_env or {}),
    )
    seconds = timed(
        ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *LIFEBOAT_CMD, "backup", "-q"],
        env=env,
    )
    [dump] = [p for p in (backup_dir / "daily").iterdir() if p.name.endswith(DUMP_SUFFIXES)]
    rss_kib, user, system = rss_file.read_text().split()[-3:]
    total = float(user) + float(system)  # lifeboat and every child it waited for
    pg_dump_cpu = sum(float(v) for v in cpu_log.read_text().split())  # --version call too
    return seconds, dump, int(rss_kib) / 1024, total - pg_dump_cpu, pg_dump_cpu


def timed(argv_or_fn, *, shell: bool = False, env=None) -> float:
    """Wall time of a command (list or shell string) or a callable."""
    started = time.perf_counter()
    if callable(argv_or_fn):
        argv_or_fn()
    else:
        subprocess.run(
            argv_or_fn,
            shell=shell,
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            executable="/bin/bash" if shell else None,
        )
    return time.perf_counter() - started


class CPU:
    """CPU seconds spent while the block runs: by this process's children (the
    commands it waited for, their children included) and by the server's
    processes that exited meanwhile (backends, parallel workers: the
    postmaster's reaped children). `cores` is their sum over the wall time."""

    def __init__(self, datadir: Path):
        self._pid = int((datadir / "postmaster.pid").read_text().split()[0])

    def _server(self) -> float:
        with open(f"/proc/{self._pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _client() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self):
        self._start = (time.perf_counter(), self._client(), self._server())
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._start[0]
        time.sleep(1)  # the postmaster reaps its exited backends
        self.client = self._client() - self._start[1]
        self.server = self._server() - self._start[2]
        self.cores = (self.client + self.server) / wall


def best_of(n: int, fn) -> float:
    return min(fn() for _ in range(n))


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled, MiB)."""

    def __enter__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * resource.getpagesize()
            self.peak = max(self.peak, rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mib = self.peak / 2**20


def report(title: str, rows: list[tuple[str, str, str, bool]]) -> bool:
    """Print `metric  value  target  ok`; return whether every target was met."""
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    for metric, value, target, ok in rows:
        print(
            f"  {metric.ljust(width)}  {value:>10}  target {target:<10} {'ok' if ok else 'MISSED'}"
        )
    return all(r[3] for r in rows)
