"""Backup speed, size and memory against the guide's pipeline, in one run.

Baselines, measured here on the same database:
- `pg_dump | gzip -9 > file`   the guide's pipeline
- `pg_dump > file`             the raw limit: no compression at all
Targets (2 cores): <= 0.30x the gzip -9 wall time, <= 1.4x raw pg_dump,
size <= 1.02x gzip -9's, peak RSS of the backup process <= 150 MiB.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from common import ROOT, big_database, measured_backup, report, timed


def main() -> int:
    cluster, url = big_database()
    pg_dump = shutil.which("pg_dump", path="/usr/lib/postgresql/15/bin") or "pg_dump"
    conn = f"-h {cluster.socket_dir} -p {cluster.port} -U postgres benchdb"
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-", dir=ROOT / ".cache"))
    try:
        raw_file, gz_file = work / "raw.sql", work / "guide.sql.gz"
        timed(f"{pg_dump} {conn} > {raw_file}", shell=True)  # warm the caches once
        raw_size = raw_file.stat().st_size
        raw = min(timed(f"{pg_dump} {conn} > {raw_file}", shell=True) for _ in range(2))
        guide = timed(f"set -o pipefail; {pg_dump} {conn} | gzip -9 > {gz_file}", shell=True)
        ours = []
        for _ in range(2):  # each run replaces the previous one's store: size it now
            seconds, dump, rss, _ = measured_backup(url, work / "store")
            ours.append((seconds, dump.stat().st_size, rss))
        seconds = min(r[0] for r in ours)
        size = ours[0][1]
        rss = max(r[2] for r in ours)
        gz_size = gz_file.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"database dump: {raw_size / 2**30:.2f} GiB plain SQL; pg_dump > file {raw:.1f}s, "
        f"pg_dump | gzip -9 {guide:.1f}s, lifeboat backup {seconds:.1f}s"
    )
    ok = report(
        "backup (default: plain SQL, gzip via zlib-ng)",
        [
            (
                "time vs pg_dump | gzip -9",
                f"{seconds / guide:.2f}x",
                "<= 0.30x",
                seconds / guide <= 0.30,
            ),
            (
                "time vs raw pg_dump > file",
                f"{seconds / raw:.2f}x",
                "<= 1.40x",
                seconds / raw <= 1.40,
            ),
            ("size vs gzip -9", f"{size / gz_size:.3f}x", "<= 1.02x", size / gz_size <= 1.02),
            ("peak RSS of lifeboat", f"{rss:.0f} MiB", "<= 150 MiB", rss <= 150),
        ],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
