"""Writes between the pre-restore snapshot and the swap: never lost silently.

The database stays in use while a restore loads and verifies its scratch
copy. A row committed after the pre-restore backup's snapshot is in neither
the restored data nor that backup. lifeboat's policy:

- By default it watches (`Watch`): right before the pre-restore dump starts
  it reads the database's write counters (rows inserted, updated and deleted
  per table, from the cumulative statistics, and every sequence's last
  value); at the swap, once every other session has been ended (a session
  flushes its statistics as it ends), it reads them again. Any difference
  counts as writes (it errs towards "written": a session merely using a temp
  table, a stats reset, or a write committed a moment before the snapshot
  also count). Then the replaced database is kept, not dropped, and named in
  the output, the result and the log with a warning.
- With `--block-writes` (`block`), the database refuses writes from the
  pre-restore snapshot until the swap: new sessions default to read-only
  (`ALTER DATABASE ... SET default_transaction_read_only = on`) and the
  current ones are ended first. Reads go on. A client that explicitly asks
  for a read-write transaction could still write; the watch runs in this mode
  too and keeps the replaced database if one did.

A restore without a pre-restore backup (`--skip-pre-backup`) replaces the
database knowingly: nothing is watched there.
"""

from __future__ import annotations

import contextlib
import logging
import time

from .. import pg
from ..conninfo import ConnInfo
from .database import ident, psycopg_lib, sql_lib

log = logging.getLogger("lifeboat")

READ_ONLY = "default_transaction_read_only"
TRUE = ("on", "true", "yes", "1", "t", "y")

# User and system tables (pg_largeobject, DDL's catalog rows), never planner
# statistics that autovacuum's ANALYZE writes, other sessions' temp tables, or
# the cluster-wide catalogs (pg_shdepend, ...: the restore's own CREATE DATABASE).
COUNTERS = """
SELECT format('%I.%I', s.schemaname, s.relname), s.n_tup_ins, s.n_tup_upd, s.n_tup_del
FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid
WHERE c.relpersistence <> 't' AND NOT c.relisshared
  AND c.relname NOT IN ('pg_statistic', 'pg_statistic_ext_data')
"""
SEQUENCES = "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences"


class Watch:
    """The write counters of one database, from a mark to the swap.

    Holds a session on the database from the mark on (the swap spares it);
    the final reading happens through it once every other session is gone.
    """

    def __init__(self, conn: ConnInfo, name: str):
        self.db = pg.connect(conn, name)
        self.pid = self.db.info.backend_pid
        self.name = name
        self.baseline: dict | None = None
        self.unknown = ""  # why the counters cannot be trusted, if they cannot

    def read(self) -> dict:
        self.db.execute("SELECT pg_stat_clear_snapshot()")
        found = {f"table {t}": (i, u, d) for t, i, u, d in self.db.execute(COUNTERS).fetchall()}
        for seq, value in self.db.execute(SEQUENCES).fetchall():
            found[f"sequence {seq}"] = value
        return found

    def mark(self) -> None:
        if self.db.execute("SHOW track_counts").fetchone()[0] != "on":
            self.unknown = "track_counts is off, so writes cannot be counted"
        self.baseline = self.read()

    def changes(self) -> list[str]:
        """What was written since the mark ([] when nothing); call with every other
        session of the database ended."""
        if self.baseline is None:
            return []
        if self.unknown:
            return [f"writes cannot be ruled out: {self.unknown}"]
        try:
            if self.db.info.server_version < 150000:
                time.sleep(1.0)  # the statistics collector of older servers lags
            now = self.read()
        except psycopg_lib().Error as exc:
            return [f"writes cannot be ruled out: {' '.join(str(exc).split())}"]
        found = []
        for name in sorted(set(self.baseline) | set(now)):
            before, after = self.baseline.get(name), now.get(name)
            if before == after:
                continue
            if before is None or after is None:
                found.append(f"{name} {'created' if before is None else 'dropped'}")
            elif name.startswith("table "):
                ins, upd, dele = (a - b for a, b in zip(after, before))
                found.append(f"{name}: {ins} inserted, {upd} updated, {dele} deleted")
            else:
                found.append(f"{name}: last value {before} -> {after}")
        return found

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()


def read_only_setting(db, name: str) -> str | None:
    """The database's own default_transaction_read_only (ALTER DATABASE ... SET), or None."""
    row = db.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = "
        "s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
        (name,),
    ).fetchone()
    for item in (row[0] or []) if row else []:
        key, _, value = item.partition("=")
        if key.lower() == READ_ONLY:
            return value
    return None


def set_read_only(db, name: str, value: str | None) -> None:
    """Set (or, with None, reset) the database's default_transaction_read_only."""
    sql = sql_lib()
    if value is None:
        db.execute(sql.SQL("ALTER DATABASE {} RESET " + READ_ONLY).format(ident(name)))
    else:
        db.execute(
            sql.SQL("ALTER DATABASE {} SET " + READ_ONLY + " = {}").format(
                ident(name), sql.Literal(value)
            )
        )


def unblock(db, name: str, state: dict | None) -> bool:
    """Undo `block` on `name` (which may now be the replaced database); True if done."""
    if not state:
        return False
    if read_only_setting(db, name) != "on":
        return False  # someone changed it since: theirs wins
    set_read_only(db, name, state.get("previous"))
    return True


def describe_block(name: str, state: dict | None) -> str:
    """The statement that undoes `block`, for people."""
    previous = (state or {}).get("previous")
    if previous is None:
        return f'ALTER DATABASE "{name}" RESET {READ_ONLY};'
    return f"ALTER DATABASE \"{name}\" SET {READ_ONLY} = '{previous}';"
