"""What the psql guard (module_utils/lifeboat/sqlguard.py) costs on a 100 MB dump.

A throwaway cluster gets `pgbench -i -s 10` (about 100 MB of plain dump); then:
- the guard alone over the uncompressed dump, 1 MiB chunks as a restore feeds it,
  beside dump.CopyCounter (the row counter it replaces in restores and verifies);
- the same dump with --inserts (the guard's slowest input: every statement lexed);
- `psql -f` of the dump into an empty database, what the guard runs beside
  (it runs in lifeboat's process while psql and the server work in theirs).

    .venv/bin/python bench/bench_guard.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "module_utils"))
sys.path.insert(0, str(ROOT / "tools"))

import pgcluster  # noqa: E402

from lifeboat.dump import CHUNK, CopyCounter  # noqa: E402
from lifeboat.sqlguard import PsqlGuard  # noqa: E402


def feed(cls, data: bytes) -> float:
    view = memoryview(data)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sink = cls()
        for pos in range(0, len(data), CHUNK):
            sink.feed(bytes(view[pos : pos + CHUNK]))
        if hasattr(sink, "finish"):
            sink.finish()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lifeboat-bench-guard-") as tmp:
        Path(tmp).chmod(0o755)
        cluster = pgcluster.Cluster(Path(tmp) / "pgdata", pgcluster.free_port())
        cluster.init()
        cluster.start()
        try:
            conn = ["-h", cluster.socket_dir, "-p", str(cluster.port), "-U", "postgres"]
            cluster.psql("CREATE DATABASE bench")
            subprocess.run(
                ["pgbench", *conn, "-i", "-q", "-s", "10", "bench"], check=True, capture_output=True
            )
            dumps = {
                "copy": subprocess.run(
                    ["pg_dump", *conn, "bench"], check=True, capture_output=True
                ).stdout,
                "inserts": subprocess.run(
                    ["pg_dump", *conn, "--inserts", "bench"], check=True, capture_output=True
                ).stdout,
            }
            times = {}
            for name, data in dumps.items():
                mib = len(data) / 2**20
                counter, guard = feed(CopyCounter, data), feed(PsqlGuard, data)
                times[name] = guard
                print(
                    f"{name:8} {mib:6.0f} MiB  CopyCounter {counter:6.2f}s "
                    f"({mib / counter:5.0f} MiB/s)  PsqlGuard {guard:6.2f}s "
                    f"({mib / guard:5.0f} MiB/s)"
                )
            cluster.psql("CREATE DATABASE target")
            path = Path(tmp) / "dump.sql"
            path.write_bytes(dumps["copy"])
            start = time.perf_counter()
            subprocess.run(
                [
                    "psql",
                    *conn,
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--single-transaction",
                    "-d",
                    "target",
                    "-f",
                    str(path),
                ],
                check=True,
                capture_output=True,
            )
            load = time.perf_counter() - start
            guard = times["copy"]
            print(
                f"psql load of the copy dump {load:.2f}s; the guard adds at most "
                f"{guard:.2f}s ({100 * guard / load:.0f}%) and runs beside it"
            )
        finally:
            cluster.stop("immediate")


if __name__ == "__main__":
    main()
