"""Step 5: prove the scratch database holds what the backup holds."""

from __future__ import annotations

import threading
from collections import deque

from .. import (
    pg,
    verify,
)
from ..conninfo import ConnInfo
from ..errors import (
    VerificationFailed,
)
from .load import Loaded
from .source import Source

# What a database-wide ANALYZE covers, less the system catalogs, largest first.
RELATIONS_SQL = """
SELECT c.oid::regclass::text, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 2 DESC, 1
"""
# Tables per statement: a large one alone, small ones together, so a schema of
# thousands of tables is not thousands of round trips (about 1 ms each).
BATCH_TABLES = 100
BATCH_BYTES = 64 << 20


def batches(sized: list[tuple[str, int]]) -> list[tuple[str, ...]]:
    """Group (name, size) pairs, largest first, by BATCH_TABLES and BATCH_BYTES."""
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    weight = 0
    for name, size in sized:
        if current and (len(current) >= BATCH_TABLES or weight + size > BATCH_BYTES):
            groups.append(tuple(current))
            current, weight = [], 0
        current.append(name)
        weight += size
    if current:
        groups.append(tuple(current))
    return groups


class Census:
    """Exact row counts (each table counted once) and planner statistics of the
    restored database, over `jobs` connections: both passes read every table, and
    one session would leave the server's other cores idle after a parallel load.
    `db` (an open connection to `conn`) is the first of them; the others open as
    the role's and the server's connection limits allow."""

    def __init__(self, db, conn: ConnInfo, jobs: int):
        self.db, self.conn, self.jobs = db, conn, max(1, jobs)
        self.known: dict[str, int] = {}

    def counts(self, tables) -> dict[str, int]:
        todo = [t for t in dict.fromkeys(tables) if t not in self.known]
        if todo:
            sized = self.db.execute(  # the largest first: they finish last
                "SELECT t, pg_total_relation_size(t::regclass) FROM unnest(%s::text[]) AS t"
                " ORDER BY 2 DESC, 1",
                (todo,),
            ).fetchall()
            found = self._spread(batches(sized), pg.exact_counts)
            for counts in found.values():
                self.known.update(counts)
        return {t: self.known[t] for t in tables}

    def analyze(self) -> None:
        """ANALYZE every table, partitioned table and materialized view."""
        sized = self.db.execute(RELATIONS_SQL).fetchall()
        # Tables the role does not own are skipped with a warning, as ANALYZE does.
        self._spread(batches(sized), lambda db, group: db.execute(f"ANALYZE {', '.join(group)}"))

    def _spread(self, items: list[str], work) -> dict:
        """work(db, item) for every item, each connection taking the next item when it is
        free; the first failure stops the others after their current item, and is raised."""
        results: dict = {}
        todo = deque(items)
        failed: list[BaseException] = []
        lock = threading.Lock()

        def run(db) -> None:
            while True:
                with lock:
                    if failed or not todo:
                        return
                    item = todo.popleft()
                try:
                    results[item] = work(db, item)
                except BaseException as exc:
                    with lock:
                        failed.append(exc)
                    return

        wanted = min(self.jobs, len(items)) - 1
        others = pg.connect_some(self.conn, wanted, "counts and ANALYZE", have=1) if wanted else []
        try:
            threads = [threading.Thread(target=run, args=(db,)) for db in others]
            for thread in threads:
                thread.start()
            run(self.db)  # this thread works too
            for thread in threads:
                thread.join()
        finally:
            for db in others:
                db.close()
        if failed:
            raise failed[0]
        return results


def extension_table(db, table: str) -> bool:
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass"
        " AND objid = to_regclass(%s) AND deptype = 'e')",
        (table,),
    ).fetchone()
    return bool(row[0])


def verify_restored(
    db, source: Source, loaded: Loaded, census: Census
) -> tuple[int, int, list[str]]:
    """Compare the scratch database with what the dump holds; returns (tables, rows, warnings)."""
    present = pg.table_estimates(db)
    warnings = []
    expected = loaded.rows if loaded.rows is not None else source.rows
    manifest = source.manifest or {}
    if expected is None and manifest.get("rows_exact"):
        expected = manifest.get("tables") or {}
    if expected is not None:
        # Extension config tables (pg_extension_config_dump) hold the extension's own
        # rows plus the dumped ones: they must exist and hold at least the dump's rows.
        config = {t for t in set(expected) - set(present) if extension_table(db, t)}
        missing = sorted(set(expected) - set(present) - config)
        if missing:
            raise VerificationFailed(
                f"Restored database lacks {len(missing)} table(s) of the "
                f"backup: {', '.join(missing[:5])}.",
                "The original database is untouched.",
            )
        counts = census.counts(list(expected))
        wrong = [
            f"{t}: {counts[t]} rows, backup has {n}"
            for t, n in expected.items()
            if (counts[t] < n if t in config else counts[t] != n)
        ]
        if wrong:
            raise VerificationFailed(
                f"Restored row counts differ from the backup: {'; '.join(wrong[:5])}.",
                "The original database is untouched.",
            )
        if (
            manifest.get("rows_exact")
            and loaded.rows is not None
            and loaded.rows != manifest.get("tables")
        ):
            raise VerificationFailed(
                "Row counts in the dump differ from its manifest.", verify.REMEDY
            )
        return len(present), sum(counts.values()), warnings
    # Only archives written before exact counts get here: their manifests hold
    # planner estimates and list partitioned parents too.
    present = pg.table_estimates(db, partitioned=True)
    counts = census.counts(list(present))
    if manifest:
        wanted = manifest.get("tables") or {}
        missing = sorted(set(wanted) - set(present))
        if missing or len(present) != manifest.get("table_count", len(wanted)):
            raise VerificationFailed(
                f"Restored database has {len(present)} tables, the backup's manifest "
                f"{manifest.get('table_count', len(wanted))}"
                + (f" (missing {', '.join(missing[:5])})" if missing else "")
                + ".",
                "The original database is untouched.",
            )
        for table, estimate in wanted.items():
            actual = counts.get(table, 0)
            if estimate > 1000 and not estimate / 10 <= actual <= estimate * 10:
                warnings.append(f"{table}: {actual} rows, the backup estimated {estimate}")
    elif loaded.data_tables and not present:
        raise VerificationFailed(
            "The restore produced no tables although the dump has table data.",
            "The original database is untouched.",
        )
    return len(present), sum(counts.values()), warnings
